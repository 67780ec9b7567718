/**
 * A host app's view: the package imported by its public name, layers composed as the README shows.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, type Layer, Option } from "effect"
import * as Root from "effect-task-queue"
import * as MemoryQueue from "effect-task-queue/layers/MemoryQueue"
import { QueueManager } from "effect-task-queue/QueueManager"

const program = Effect.gen(function* () {
  const queue = yield* QueueManager
  yield* queue.push("task_123", { audio_files: ["meeting.wav"], meeting_type: "weekly_sync" }, 5)
  const delivery = yield* queue.pull("1 second")
  const message = Option.getOrThrow(delivery).message
  yield* Option.getOrThrow(delivery).ack
  return { taskId: message.taskId, attempt: message.attempt, length: yield* queue.length }
})

describe("host app", () => {
  it.effect("provides QueueManager from a backend module's layer", () =>
    Effect.gen(function* () {
      expect(yield* program.pipe(Effect.provide(MemoryQueue.layer({ leaseDuration: "5 seconds" })))).toEqual({
        taskId: "task_123",
        attempt: 1,
        length: 0
      })
    })
  )

  it.effect("provides QueueManager through the backend selector and the root entry point", () =>
    Effect.gen(function* () {
      const layer: Layer.Layer<QueueManager, Root.QueueError> = QueueManager.layer({ backend: "memory" })
      expect(Root.QueueManager.QueueManager).toBe(QueueManager)
      expect((yield* program.pipe(Effect.provide(layer))).taskId).toBe("task_123")
    })
  )
})

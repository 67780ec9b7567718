/**
 * A host app's view: the package imported by its public name, layers composed as the README shows.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Option, Schedule, Schema } from "effect"
import * as Root from "effect-task-queue"
import * as MemoryQueue from "effect-task-queue/layers/MemoryQueue"
import { Pipeline, UnrecoverableError } from "effect-task-queue/Pipeline"
import { QueueManager } from "effect-task-queue/QueueManager"
import { TaskStore } from "effect-task-queue/TaskStore"
import { TaskWorker } from "effect-task-queue/TaskWorker"

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

describe("host app worker", () => {
  it.scopedLive("composes a worker as the README shows and runs a typed pipeline to COMPLETED", () =>
    Effect.gen(function* () {
      const Resize = Schema.Struct({ width: Schema.Int.pipe(Schema.positive()) })
      const resize = Pipeline.make({
        name: "resize",
        schema: Resize,
        run: ({ width }, message) =>
          width > 4096
            ? Effect.fail(new UnrecoverableError({ message: "cannot upscale" }))
            : Effect.succeed({ width, attempt: message.attempt })
      })
      const WorkerLive = Layer.scopedDiscard(TaskWorker.start).pipe(
        Layer.provide(TaskWorker.layer({ concurrency: 2, maxAttempts: 5 })),
        Layer.provideMerge(
          Layer.mergeAll(
            QueueManager.layer({ backend: "memory", queueName: "images" }),
            TaskStore.layer({ backend: "memory" }),
            Pipeline.layer(resize)
          )
        )
      )
      const context = yield* Layer.build(WorkerLive)
      const queue = Context.get(context, QueueManager)
      const store = Context.get(context, TaskStore)
      yield* queue.push("small", { width: 100 })
      yield* queue.push("huge", { width: 10_000 })
      yield* queue.push("bad", { width: "wide" })
      const settled = (id: string) =>
        store
          .get(id)
          .pipe(
            Effect.map(Option.filter((r) => r.status === "COMPLETED" || r.status === "FAILED")),
            Effect.flatten,
            Effect.retry(Schedule.spaced("10 millis")),
            Effect.timeout("5 seconds")
          )
      expect(yield* settled("small")).toMatchObject({
        status: "COMPLETED",
        result: { width: 100, attempt: 1 }
      })
      expect(yield* settled("huge")).toMatchObject({
        status: "FAILED",
        error: "UnrecoverableError: cannot upscale"
      })
      expect((yield* settled("bad")).error).toMatch(/^invalid task data/)
      expect((yield* queue.deadLetters()).map((d) => d.taskId).sort()).toEqual(["bad", "huge"])
    })
  )
})

/**
 * The priority demo: pushes a handful of meeting tasks with mixed priorities onto a queue (the
 * embedded one unless QUEUE_BACKEND says otherwise) and shows them pulled most urgent first,
 * in push order inside a priority.
 *
 *   npx tsx programs/demo.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Option } from "effect"
import { QueueManager } from "../src/QueueManager.js"

const tasks = [
  {
    taskId: "weekly-sync-1",
    priority: 5,
    data: { audio_files: ["weekly-1.wav"], meeting_type: "weekly_sync" }
  },
  { taskId: "standup-1", priority: 2, data: { audio_files: ["standup-1.wav"], meeting_type: "standup" } },
  {
    taskId: "incident-review",
    priority: 10,
    data: { audio_files: ["incident.wav"], meeting_type: "incident" }
  },
  {
    taskId: "weekly-sync-2",
    priority: 5,
    data: { audio_files: ["weekly-2.wav"], meeting_type: "weekly_sync" }
  },
  { taskId: "board-meeting", priority: 8, data: { audio_files: ["board.wav"], meeting_type: "board" } },
  { taskId: "standup-2", priority: 2, data: { audio_files: ["standup-2.wav"], meeting_type: "standup" } }
]

/** Pushes the demo tasks, then pulls and acks until the queue is empty. */
export const demo = Effect.gen(function* () {
  const queue = yield* QueueManager
  yield* Console.log(`queue "${queue.queueName}" on the ${queue.backend} backend`)
  for (const task of tasks) {
    const accepted = yield* queue.push(task.taskId, task.data, task.priority)
    yield* Console.log(
      `pushed  ${task.taskId.padEnd(16)} priority ${String(task.priority).padStart(2)}  ${accepted}`
    )
  }
  yield* Console.log(`length: ${yield* queue.length}`)
  for (;;) {
    const delivery = yield* queue.pull("100 millis")
    if (Option.isNone(delivery)) break
    const { message } = delivery.value
    yield* Console.log(
      `pulled  ${message.taskId.padEnd(16)} priority ${String(message.priority).padStart(2)}  attempt ${message.attempt}`
    )
    yield* delivery.value.ack
  }
  yield* Console.log(`length: ${yield* queue.length}`)
})

if (import.meta.url === `file://${process.argv[1]}`) {
  demo.pipe(Effect.provide(QueueManager.layerConfig), NodeRuntime.runMain)
}

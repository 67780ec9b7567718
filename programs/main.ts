/**
 * `npm start`: the producer API and one worker in one process, running the sample meeting
 * pipeline on the embedded memory backend, so nothing needs installing or starting first.
 *
 *   npm start                                  # API on http://127.0.0.1:3000, docs at /docs
 *   PORT=8080 QUEUE_BACKEND=redis npm start    # the same on Redis (queue and task records)
 *
 * Environment: PORT [3000; 0 picks a free port] and HOST [127.0.0.1] for the API; the queue,
 * store and worker variables of programs/worker.ts (QUEUE_BACKEND, QUEUE_NAME, REDIS_URL,
 * RABBITMQ_URL, TASK_STORE, CONCURRENCY, MAX_ATTEMPTS, MAX_SHUTDOWN_WAIT, ...). SIGTERM or
 * SIGINT closes the API, lets the worker finish its running tasks (up to MAX_SHUTDOWN_WAIT) and
 * exits with 0.
 *
 * @since 0.1.0
 */
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Layer } from "effect"
import { QueueManager } from "../src/QueueManager.js"
import { TaskStore } from "../src/TaskStore.js"
import { TaskWorker } from "../src/TaskWorker.js"
import * as MeetingPipeline from "./meeting-pipeline.js"
import { ServerLive } from "./server.js"

/** One worker running the meeting pipeline, configured as programs/worker.ts is. */
const WorkerLive = Layer.scopedDiscard(TaskWorker.start).pipe(
  Layer.provide(TaskWorker.layerConfig),
  Layer.provide(MeetingPipeline.layer),
  Layer.provide(NodeFileSystem.layer)
)

/** The API and the worker on one queue and one task store. */
const MainLive = Layer.mergeAll(ServerLive, WorkerLive).pipe(
  Layer.provide(Layer.merge(QueueManager.layerConfig, TaskStore.layerConfig))
)

Layer.launch(MainLive).pipe(NodeRuntime.runMain)

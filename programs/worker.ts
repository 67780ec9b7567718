/**
 * A worker process running the meeting pipeline, configured from the environment. SIGTERM or
 * SIGINT shuts it down gracefully (running tasks get up to MAX_SHUTDOWN_WAIT) and it exits with 0.
 * Several processes on one queue share its work.
 *
 *   QUEUE_BACKEND=redis QUEUE_NAME=meetings CONCURRENCY=4 npx tsx programs/worker.ts
 *
 * Environment (defaults in brackets):
 * - queue: QUEUE_BACKEND [memory] | redis | rabbitmq, QUEUE_NAME [tasks], REDIS_URL, RABBITMQ_URL,
 *   LEASE_DURATION [30 seconds];
 * - records: TASK_STORE [redis when QUEUE_BACKEND=redis, else memory], TASK_RETENTION [7 days];
 * - worker: CONCURRENCY [1], PREFETCH [adaptive], MAX_SHUTDOWN_WAIT [300 s], MAX_ATTEMPTS [3], TASK_TIMEOUT [none],
 *   PULL_TIMEOUT [1 s], LEASE_RENEWAL [LEASE_DURATION / 3, else 10 s] (durations as "30 seconds"
 *   or a number of seconds);
 * - logs: logfmt on stdout and, when LOG_FILE is set, appended to that file; LOG_LEVEL [Info].
 *
 * @since 0.1.0
 */
import type { PlatformError } from "@effect/platform/Error"
import type * as FileSystem from "@effect/platform/FileSystem"
import * as PlatformLogger from "@effect/platform/PlatformLogger"
import * as NodeFileSystem from "@effect/platform-node/NodeFileSystem"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Config, type ConfigError, Effect, Layer, Logger, LogLevel, Option } from "effect"
import type { QueueError } from "../src/Errors.js"
import type { Pipeline } from "../src/Pipeline.js"
import { QueueManager } from "../src/QueueManager.js"
import { TaskStore } from "../src/TaskStore.js"
import { TaskWorker } from "../src/TaskWorker.js"
import * as MeetingPipeline from "./meeting-pipeline.js"

/**
 * Logs as logfmt to stdout and, when LOG_FILE is set, appended to that file too (flushed every
 * 100 ms and on shutdown); LOG_LEVEL sets the minimum level; every line carries the process id.
 */
export const LoggerLive = Layer.unwrapScoped(
  Effect.gen(function* () {
    const logFile = yield* Config.option(Config.string("LOG_FILE"))
    const level = yield* Config.logLevel("LOG_LEVEL").pipe(Config.withDefault(LogLevel.Info))
    const stdout = Logger.withConsoleLog(Logger.logfmtLogger)
    const logger = Option.isNone(logFile)
      ? stdout
      : Logger.zip(
          stdout,
          yield* PlatformLogger.toFile(Logger.logfmtLogger, logFile.value, { batchWindow: "100 millis" })
        )
    return Layer.mergeAll(
      Logger.replace(
        Logger.defaultLogger,
        Logger.map(logger, () => undefined)
      ),
      Logger.minimumLogLevel(level),
      Layer.scopedDiscard(Effect.annotateLogsScoped({ pid: process.pid }))
    )
  })
).pipe(Layer.provide(NodeFileSystem.layer))

/**
 * A worker process's layer around any pipeline: queue, store and worker from the environment,
 * logs as above. `Layer.launch` it under `NodeRuntime.runMain`.
 */
export const workerLayer = <E, R>(
  pipeline: Layer.Layer<Pipeline, E, R>
): Layer.Layer<
  never,
  E | QueueError | ConfigError.ConfigError | PlatformError,
  Exclude<R, FileSystem.FileSystem>
> =>
  Layer.scopedDiscard(TaskWorker.start).pipe(
    Layer.provide(TaskWorker.layerConfig),
    Layer.provide(Layer.mergeAll(QueueManager.layerConfig, TaskStore.layerConfig, pipeline)),
    Layer.provide(NodeFileSystem.layer),
    Layer.provide(LoggerLive)
  )

/** Runs a worker process with this pipeline until SIGTERM / SIGINT. */
export const runWorker = <E>(pipeline: Layer.Layer<Pipeline, E, FileSystem.FileSystem>): void =>
  Layer.launch(workerLayer(pipeline)).pipe(NodeRuntime.runMain({ disablePrettyLogger: true }))

if (import.meta.url === `file://${process.argv[1]}`) {
  runWorker(MeetingPipeline.layer)
}

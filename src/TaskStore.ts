/**
 * The `TaskStore` service: the record of each task (status, priority, attempts, timestamps,
 * result or error), kept beside the queue. It is where idempotent submission is enforced for
 * every backend (`create` rejects a known id) and where a task's outcome is read.
 *
 * Transitions made by a worker carry the lease token of the delivery they belong to: once
 * another delivery of the same task has started, a late `finish` from the old holder changes
 * nothing (its result is discarded), so exactly one outcome is recorded.
 *
 * @since 0.1.0
 */
import { Config, type ConfigError, Context, Duration, Effect, Layer, type Option, Redacted } from "effect"
import { type DuplicateTask, QueueError } from "./Errors.js"
import * as QM from "./QueueManager.js"
import type { JsonValue, TaskRecord } from "./Task.js"

/** How a delivery of a task ended, as recorded. */
export type Outcome =
  | { readonly status: "COMPLETED"; readonly result: JsonValue }
  | { readonly status: "RETRYING" | "FAILED"; readonly error: string }

/**
 * What `start` found. `Started`: the record now belongs to this delivery (PROCESSING) and the task
 * may run. `Finished`: an earlier delivery already recorded the task's outcome (COMPLETED or
 * FAILED) but stopped before settling its message, e.g. it crashed between recording and
 * acknowledging; nothing changed, and this delivery is only settled as recorded (acked when
 * COMPLETED, dead-lettered when FAILED), never run again.
 */
export type StartResult =
  | { readonly _tag: "Started" }
  | { readonly _tag: "Finished"; readonly record: TaskRecord }

/** The `Started` result of `start`. */
export const started: StartResult = { _tag: "Started" }

/** The delivery a transition belongs to. */
export interface LeaseInfo {
  readonly token: string
  readonly attempt: number
  readonly priority: number
}

/** One delivery's start, for {@link TaskStoreService.startMany}. */
export interface StartInfo {
  readonly taskId: string
  readonly lease: LeaseInfo
}

/** One delivery's outcome, for {@link TaskStoreService.finishMany}. */
export interface FinishInfo {
  readonly taskId: string
  readonly token: string
  readonly outcome: Outcome
}

/**
 * A store's records as a queue backend on the same server can write them inside its own claims
 * and acks (the Redis queue and the Redis store on one Redis and queue name): the worker then
 * records a start with its claim and an outcome with its ack, one call each instead of two.
 */
export interface SharedRecords {
  /** The server, database and queue name of the records (no credentials): equal values, same records. */
  readonly location: string
  /** How long finished records are kept, in milliseconds. */
  readonly retentionMillis: number
}

/** The operations of a task store. */
export interface TaskStoreService {
  /** Set when a queue backend can write this store's records in its own calls (see {@link SharedRecords}). */
  readonly shared?: SharedRecords | undefined
  /** Records a new task as PENDING; fails with `DuplicateTask` when the id is known. */
  readonly create: (taskId: string, priority: number) => Effect.Effect<TaskRecord, DuplicateTask | QueueError>
  /** The record of a task, if known (finished records vanish after the retention). */
  readonly get: (taskId: string) => Effect.Effect<Option.Option<TaskRecord>, QueueError>
  /**
   * A delivery of the task started: PROCESSING, with `attempts = lease.attempt`. Creates the
   * record when the task was pushed straight onto the queue without one. A finished (COMPLETED or
   * FAILED) record is left as it is and returned as `Finished`: the task id is its idempotency key
   * while the record is kept, so a finished task runs again only after `reset`.
   */
  readonly start: (taskId: string, lease: LeaseInfo) => Effect.Effect<StartResult, QueueError>
  /** `start` for several deliveries in one call (a worker's claimed batch); one answer each, in order. */
  readonly startMany: (
    starts: ReadonlyArray<StartInfo>
  ) => Effect.Effect<ReadonlyArray<StartResult>, QueueError>
  /**
   * Records how the delivery holding `token` ended; `false` (and nothing changed) when another
   * delivery has started since, or the record is gone.
   */
  readonly finish: (taskId: string, token: string, outcome: Outcome) => Effect.Effect<boolean, QueueError>
  /**
   * The delivery holding `token` gives the task back without running it (a prefetched task at
   * shutdown): PENDING again, its attempt not counted; `false` (and nothing changed) when another
   * delivery has started since, or the record is gone.
   */
  readonly release: (taskId: string, token: string) => Effect.Effect<boolean, QueueError>
  /** `finish` for several deliveries in one call (a worker's outcomes of one event-loop turn); one answer each, in order. */
  readonly finishMany: (
    outcomes: ReadonlyArray<FinishInfo>
  ) => Effect.Effect<ReadonlyArray<boolean>, QueueError>
  /**
   * The task is being put back in the queue by hand (a retried dead letter): PENDING again, with
   * its outcome cleared; `false` when unknown. Call it before re-queueing the task, or its next
   * delivery finds the old outcome (see `start`) and is settled without running.
   */
  readonly reset: (taskId: string) => Effect.Effect<boolean, QueueError>
}

/** The store backends. */
export type StoreBackend = "memory" | "redis"

/** Options of {@link TaskStore.layer}. */
export interface TaskStoreOptions {
  readonly backend: StoreBackend
  /** Keys are scoped by queue name on Redis; default `"tasks"`. */
  readonly queueName?: string | undefined
  readonly redisUrl?: string | Redacted.Redacted | undefined
  /** How long COMPLETED and FAILED records are kept; default 7 days. */
  readonly retention?: Duration.DurationInput | undefined
}

/** The default retention of finished records. */
export const defaultRetention = Duration.days(7)

/** The `Config` behind {@link TaskStore.layerConfig}: `TASK_STORE` (default redis when `QUEUE_BACKEND=redis`, else memory), `TASK_RETENTION`. */
export const storeConfig: Config.Config<TaskStoreOptions> = Config.all({
  queue: QM.queueConfig,
  store: Config.option(Config.literal("memory", "redis")("TASK_STORE")),
  retention: Config.duration("TASK_RETENTION").pipe(Config.withDefault(defaultRetention))
}).pipe(
  Config.map(({ queue, retention, store }) => ({
    backend: store._tag === "Some" ? store.value : queue.backend === "redis" ? "redis" : "memory",
    queueName: queue.queueName,
    redisUrl: queue.redisUrl,
    retention
  }))
)

/** The task store service. Provide it with `TaskStore.layer({ backend })` or `TaskStore.layerConfig`. */
export class TaskStore extends Context.Tag("effect-task-queue/TaskStore")<TaskStore, TaskStoreService>() {
  /** The store on the chosen backend; only that backend's module is loaded. */
  static layer = (options: TaskStoreOptions): Layer.Layer<TaskStore, QueueError> => {
    const common = {
      queueName: options.queueName ?? QM.defaults.queueName,
      retention: options.retention ?? defaultRetention
    }
    const load = <A>(module: () => Promise<A>) =>
      Effect.tryPromise({
        try: module,
        catch: (cause) => new QueueError({ message: `cannot load the ${options.backend} task store`, cause })
      })
    switch (options.backend) {
      case "memory":
        return Layer.unwrapEffect(
          Effect.map(
            load(() => import("../layers/MemoryTaskStore.js")),
            (m) => m.layer(common)
          )
        )
      case "redis":
        return Layer.unwrapEffect(
          Effect.map(
            load(() => import("../layers/RedisTaskStore.js")),
            (m) => m.layer({ ...common, redisUrl: options.redisUrl ?? Redacted.make(QM.defaults.redisUrl) })
          )
        )
    }
  }

  /** The store configured from the environment (see {@link storeConfig}). */
  static layerConfig: Layer.Layer<TaskStore, QueueError | ConfigError.ConfigError> = Layer.unwrapEffect(
    Effect.map(storeConfig, TaskStore.layer)
  )
}

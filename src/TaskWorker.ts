/**
 * The `TaskWorker` service: a loop that pulls tasks, runs the `Pipeline` on each, records the
 * outcome in the `TaskStore`, retries failures with backoff, dead-letters what keeps failing, and
 * shuts down gracefully when the scope it was started in closes.
 *
 * ```ts
 * const WorkerLive = Layer.scopedDiscard(TaskWorker.start).pipe(
 *   Layer.provide(TaskWorker.layer({ concurrency: 8 })),
 *   Layer.provide([QueueManager.layerConfig, TaskStore.layerConfig, Pipeline.layer(myPipeline)])
 * )
 * NodeRuntime.runMain(Layer.launch(WorkerLive)) // SIGTERM / SIGINT: graceful shutdown
 * ```
 *
 * How a delivery ends, in this order, so that no task is lost and exactly one outcome is recorded:
 * the outcome is recorded first with `TaskStore.finish` (fenced by the lease token: `false` means
 * another delivery has started since, and this result is discarded without touching the queue),
 * then the message is settled (`ack`, `nack` with a delay, or dead-lettered). A worker that dies
 * between the two leaves the message leased; it comes back, and its next delivery finds the
 * finished record (`TaskStore.start` returns `Finished`) and is settled as recorded without
 * running again.
 *
 * @since 0.1.0
 */
import {
  Array as Arr,
  Cause,
  Clock,
  Config,
  type ConfigError,
  Context,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberSet,
  Layer,
  Metric,
  MetricLabel,
  Option,
  Schedule,
  ScheduleDecision,
  ScheduleIntervals,
  type Scope
} from "effect"
import type { LeaseLost, QueueError } from "./Errors.js"
import {
  describeFailure,
  Pipeline,
  type PipelineService,
  TaskFailed,
  type UnprovidedRun
} from "./Pipeline.js"
import { type Delivery, QueueManager, type QueueManagerService } from "./QueueManager.js"
import type { JsonValue, TaskMessage, TaskRecord } from "./Task.js"
import { type Outcome, TaskStore, type TaskStoreService } from "./TaskStore.js"
import * as WorkerMetrics from "./WorkerMetrics.js"

/**
 * The delay before a failed task's next attempt: a function of the failed attempt number (1 for
 * the first), or a `Schedule` fed the failed attempt numbers: its n-th delay follows the n-th
 * failed attempt, and once it ends the task is not retried any more (as with `Effect.retry`),
 * even before `maxAttempts`.
 */
export type Backoff = Schedule.Schedule<unknown, number> | ((attempt: number) => Duration.DurationInput)

/** Options of {@link TaskWorker.layer}. */
export interface TaskWorkerOptions {
  /** How many tasks run at once; default 1. */
  readonly concurrency?: number | undefined
  /** How long one pull waits for a task; default 1 second. */
  readonly pullTimeout?: Duration.DurationInput | undefined
  /** On shutdown, how long running tasks may still take before they are interrupted; default 300 seconds. */
  readonly maxShutdownWait?: Duration.DurationInput | undefined
  /**
   * How many times a task runs before it is recorded FAILED and dead-lettered; default 3. A
   * delivery past this (the earlier ones ended without an outcome: their worker died) is recorded
   * FAILED and dead-lettered without running.
   */
  readonly maxAttempts?: number | undefined
  /** The delay before each retry; default {@link defaultBackoff} (1 s, 2 s, 4 s, ... capped at 1 minute). */
  readonly backoff?: Backoff | undefined
  /** A run taking longer fails (and is retried like any failure); default none. */
  readonly taskTimeout?: Duration.DurationInput | undefined
  /**
   * How often the lease of each running task is extended (by the queue's lease duration); default
   * 10 seconds. Keep it at most a third of the queue's `leaseDuration` (default 30 seconds), or a
   * long task is handed to another worker while it still runs.
   */
  readonly leaseRenewal?: Duration.DurationInput | undefined
}

/** The default backoff: 1 s after the first failed attempt, doubling, capped at 1 minute. */
export const defaultBackoff: Schedule.Schedule<Duration.Duration> = Schedule.delays(
  Schedule.exponential("1 second").pipe(Schedule.union(Schedule.spaced("1 minute")))
)

/** The defaults of {@link TaskWorkerOptions}. */
export const defaults = {
  concurrency: 1,
  pullTimeout: Duration.seconds(1),
  maxShutdownWait: Duration.seconds(300),
  maxAttempts: 3,
  leaseRenewal: Duration.seconds(10)
} as const

/** The operations of a worker. */
export interface TaskWorkerService {
  /**
   * Starts the worker in the caller's scope and returns at once. Closing the scope is the graceful
   * shutdown: pulling stops, running tasks get up to `maxShutdownWait` to finish, the rest are
   * interrupted, recorded FAILED ("shutdown timeout") and dead-lettered.
   */
  readonly start: Effect.Effect<void, never, Scope.Scope>
  /** Starts the worker and runs until interrupted, then shuts it down gracefully: for programs. */
  readonly run: Effect.Effect<never>
}

/** The reason recorded for a task whose deliveries all ended without an outcome, up to `maxAttempts`. */
export const stalled = (attempts: number) =>
  `gave up after ${attempts} attempts that ended without an outcome (the worker died or lost the lease)`

/** The reason recorded for tasks still running when the shutdown deadline passes. */
export const shutdownTimeout = "shutdown timeout"

/** Pull failures (backend outages) are retried after these delays: 100 ms doubling, capped at 5 s. */
const outageBackoff = Schedule.exponential("100 millis").pipe(Schedule.union(Schedule.spaced("5 seconds")))

/** A delivery given back because the store failed waits at least this long (when the backoff has ended). */
const minimumRelease = Duration.seconds(1)

/** After a first `QueueError`, store and queue calls are tried four more times (at once, then after 50, 100, 200 ms). */
const settleRetry = Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(3)))

const isQueueError = (error: { readonly _tag: string }) => error._tag === "QueueError"

/** `self`, tried again on `QueueError`; the retry machinery is only built once a call has failed. */
const retryQueueError = <A, E extends { readonly _tag: string }>(self: Effect.Effect<A, E>) =>
  Effect.catchIf(self, isQueueError, () => Effect.retry(self, { schedule: settleRetry, while: isQueueError }))

/** How a run ended, as the worker acts on it. */
type Verdict =
  | { readonly _tag: "Completed"; readonly result: JsonValue }
  | { readonly _tag: "Retry"; readonly error: string }
  | { readonly _tag: "Failed"; readonly error: string }

/** A delivery whose pipeline is running: its lease is renewed while it is in the running set. */
interface Running {
  readonly delivery: Delivery
}

const validate = (options: TaskWorkerOptions) => {
  const concurrency = options.concurrency ?? defaults.concurrency
  const maxAttempts = options.maxAttempts ?? defaults.maxAttempts
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    return Effect.dieMessage(`TaskWorker: concurrency must be a positive integer, got ${concurrency}`)
  }
  if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
    return Effect.dieMessage(`TaskWorker: maxAttempts must be a positive integer, got ${maxAttempts}`)
  }
  const leaseRenewal = Duration.decode(options.leaseRenewal ?? defaults.leaseRenewal)
  if (!Duration.greaterThan(leaseRenewal, Duration.zero)) {
    return Effect.dieMessage(
      `TaskWorker: leaseRenewal must be positive, got ${Duration.format(leaseRenewal)}`
    )
  }
  return Effect.succeed({
    concurrency,
    maxAttempts,
    pullTimeout: Duration.decode(options.pullTimeout ?? defaults.pullTimeout),
    maxShutdownWait: Duration.decode(options.maxShutdownWait ?? defaults.maxShutdownWait),
    leaseRenewal,
    taskTimeout: Option.map(Option.fromNullable(options.taskTimeout), Duration.decode),
    backoff: options.backoff ?? defaultBackoff
  })
}

/**
 * The delay before the retry that follows failed attempt `attempt`; `None` when a `Schedule`
 * backoff has ended (no more retries). A schedule is stepped from its start, so no state is kept
 * between tasks.
 */
const backoffDelay = (backoff: Backoff, attempt: number): Effect.Effect<Option.Option<Duration.Duration>> => {
  if (typeof backoff === "function") return Effect.sync(() => Option.some(Duration.decode(backoff(attempt))))
  return Effect.gen(function* () {
    let now = yield* Clock.currentTimeMillis
    let state = backoff.initial
    let delay = Duration.zero
    for (let input = 1; input <= attempt; input++) {
      const [next, , decision] = yield* backoff.step(now, input, state)
      if (ScheduleDecision.isDone(decision)) return Option.none()
      const start = ScheduleIntervals.start(decision.intervals)
      delay = Duration.millis(Math.max(0, start - now))
      now = start
      state = next
    }
    return Option.some(delay)
  })
}

const startWorker = (
  queue: QueueManagerService,
  store: TaskStoreService,
  pipeline: PipelineService,
  options: Effect.Effect.Success<ReturnType<typeof validate>>
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function* () {
    const { backoff, concurrency, leaseRenewal, maxAttempts, maxShutdownWait, pullTimeout } = options
    // `Metric.tagged`, with one label array for every update: the metric registry caches its
    // hook by that array, where `Metric.tagged` builds (and hashes) a new key on each update.
    const labels = [MetricLabel.make("queue", queue.queueName)]
    const withLabels = (extra: ReadonlyArray<MetricLabel.MetricLabel>) =>
      extra.length === 0 ? labels : Arr.union(labels, extra)
    const tag = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>): Metric.Metric<Type, In, Out> =>
      Metric.make(
        metric.keyType,
        (input, extra) => metric.unsafeUpdate(input, withLabels(extra)),
        (extra) => metric.unsafeValue(withLabels(extra)),
        (input, extra) => metric.unsafeModify(input, withLabels(extra))
      )
    const started = tag(WorkerMetrics.tasksStarted)
    const completed = tag(WorkerMetrics.tasksCompleted)
    const retried = tag(WorkerMetrics.tasksRetried)
    const failed = tag(WorkerMetrics.tasksFailed)
    const discarded = tag(WorkerMetrics.tasksDiscarded)
    const pullErrors = tag(WorkerMetrics.pullErrors)
    const duration = tag(WorkerMetrics.taskDuration)

    // The pipeline's requirements are provided once, to the runtime every task fiber is forked
    // from, rather than on every run. A pipeline service without them needs nothing: an empty context.
    const { context, run }: UnprovidedRun = pipeline.unprovided ?? {
      context: Context.empty() as Context.Context<unknown>,
      run: pipeline.run
    }
    const runPipeline = Option.match(options.taskTimeout, {
      onNone: () => run,
      onSome: (timeout) => {
        const onTimeout = () =>
          new TaskFailed({
            message: `the task timed out after ${Duration.format(timeout)}`,
            permanent: false
          })
        return (message: TaskMessage) => Effect.timeoutFail(run(message), { duration: timeout, onTimeout })
      }
    })

    const tasks = yield* FiberSet.make<void, never>()
    const running = new Set<Running>()
    let free = concurrency
    const slotFreed = yield* Effect.makeLatch(true)
    /** Set when the shutdown deadline passed: interrupted runs are then recorded "shutdown timeout". */
    let deadlinePassed = false

    const freeSlot = Effect.sync(() => {
      free++
      slotFreed.unsafeOpen()
    })

    const discard = () =>
      Effect.zipRight(
        Metric.increment(discarded),
        Effect.logWarning("another delivery of the task has started: this result is discarded")
      )

    /** Gives a delivery back for a later attempt; what it could not record is recorded by that attempt. */
    const release = (delivery: Delivery, reason: string) =>
      Effect.gen(function* () {
        const delay = Option.getOrElse(
          yield* backoffDelay(backoff, delivery.message.attempt),
          () => minimumRelease
        )
        yield* Effect.logError(`${reason}: the task is given back to the queue`).pipe(
          Effect.annotateLogs("retryInMs", Duration.toMillis(delay))
        )
        yield* retryQueueError(delivery.nack({ delay })).pipe(
          Effect.catchAll((error) =>
            Effect.logWarning("could not give the task back; its lease will expire", error)
          )
        )
      })

    /** Records `outcome` for the delivery; `true` when recorded, `false` when another delivery started. */
    const record = (delivery: Delivery, outcome: Outcome) =>
      retryQueueError(store.finish(delivery.message.taskId, delivery.token, outcome)).pipe(Effect.either)

    /** Settles the message after its outcome was recorded; a lost lease or an outage leaves it to lease expiry. */
    const settleMessage = (effect: Effect.Effect<void, QueueError | LeaseLost>) =>
      retryQueueError(effect).pipe(
        Effect.catchAll((error) =>
          error._tag === "LeaseLost"
            ? Effect.logWarning(
                "the lease expired before the message was settled: the recorded outcome stands, and the next delivery is settled without running"
              )
            : Effect.logError(
                "could not settle the message: it comes back when its lease expires, and is then settled as recorded",
                error
              )
        )
      )

    const settle = (delivery: Delivery, ran: Verdict, durationMillis: number) =>
      Effect.gen(function* () {
        const message = delivery.message
        const retryIn = ran._tag === "Retry" ? yield* backoffDelay(backoff, message.attempt) : Option.none()
        const verdict: Verdict =
          ran._tag === "Retry" && Option.isNone(retryIn) ? { _tag: "Failed", error: ran.error } : ran
        const outcome: Outcome =
          verdict._tag === "Completed"
            ? { status: "COMPLETED", result: verdict.result }
            : { status: verdict._tag === "Retry" ? "RETRYING" : "FAILED", error: verdict.error }
        const recorded = yield* record(delivery, outcome)
        if (Either.isLeft(recorded)) return yield* release(delivery, "could not record the task's outcome")
        if (!recorded.right) return yield* discard()
        const timing = { durationMs: durationMillis }
        switch (verdict._tag) {
          case "Completed": {
            yield* settleMessage(delivery.ack)
            yield* Metric.increment(completed)
            return yield* Effect.logInfo("task completed").pipe(Effect.annotateLogs(timing))
          }
          case "Retry": {
            const delay = Option.getOrElse(retryIn, () => Duration.zero)
            yield* settleMessage(delivery.nack({ delay }))
            yield* Metric.increment(retried)
            return yield* Effect.logWarning("task failed; it will be retried").pipe(
              Effect.annotateLogs({ ...timing, error: verdict.error, retryInMs: Duration.toMillis(delay) })
            )
          }
          case "Failed": {
            yield* settleMessage(delivery.nack({ requeue: false, error: verdict.error }))
            yield* Metric.increment(failed)
            return yield* Effect.logError("task failed; dead-lettered").pipe(
              Effect.annotateLogs({ ...timing, error: verdict.error })
            )
          }
        }
      })

    /** A delivery whose outcome an earlier delivery already recorded: settle it as recorded. */
    const settleFinished = (delivery: Delivery, finished: TaskRecord) =>
      finished.status === "COMPLETED"
        ? Effect.zipRight(
            settleMessage(delivery.ack),
            Effect.logInfo("task already completed by an earlier delivery: acknowledged without running")
          )
        : Effect.zipRight(
            settleMessage(delivery.nack({ requeue: false, error: finished.error ?? "failed" })),
            Effect.logWarning("task already failed in an earlier delivery: dead-lettered without running")
          )

    const verdictOf = (exit: Exit.Exit<JsonValue, TaskFailed>, attempt: number): Verdict => {
      if (Exit.isSuccess(exit)) return { _tag: "Completed", result: exit.value }
      const cause = exit.cause
      if (deadlinePassed && Cause.isInterruptedOnly(cause)) return { _tag: "Failed", error: shutdownTimeout }
      const failure = Cause.failureOption(cause)
      const error = Option.isSome(failure)
        ? failure.value.message
        : Cause.isInterruptedOnly(cause)
          ? "the task was interrupted"
          : `defect: ${describeFailure(Cause.squash(cause))}`
      const permanent = Option.isSome(failure) && failure.value.permanent
      return permanent || attempt >= maxAttempts ? { _tag: "Failed", error } : { _tag: "Retry", error }
    }

    /** Runs one delivery to its end; never fails, and frees its slot when done. */
    const handle = (delivery: Delivery): Effect.Effect<void, never, unknown> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function* () {
          const message = delivery.message
          const lease = { token: delivery.token, attempt: message.attempt, priority: message.priority }
          const begun = yield* retryQueueError(store.start(message.taskId, lease)).pipe(Effect.either)
          if (Either.isLeft(begun)) return yield* release(delivery, "could not record the task's start")
          if (begun.right._tag === "Finished") return yield* settleFinished(delivery, begun.right.record)
          if (message.attempt > maxAttempts) {
            // Every earlier delivery ended without an outcome (its worker died or lost the lease):
            // a task that keeps killing its workers is not handed to another one forever.
            return yield* settle(delivery, { _tag: "Failed", error: stalled(message.attempt - 1) }, 0)
          }
          const entry: Running = { delivery }
          running.add(entry)
          yield* Metric.increment(started)
          yield* Effect.logDebug("task started")
          const startedAt = yield* Clock.currentTimeMillis
          const exit = yield* Effect.exit(
            restore(
              runPipeline(message).pipe(
                Effect.withSpan("TaskWorker.run", {
                  attributes: { "task.id": message.taskId, "task.attempt": message.attempt },
                  captureStackTrace: false
                })
              )
            )
          )
          running.delete(entry)
          const durationMillis = (yield* Clock.currentTimeMillis) - startedAt
          yield* Metric.update(duration, durationMillis)
          if (Exit.isFailure(exit) && Cause.isDie(exit.cause)) {
            yield* Effect.logWarning("the pipeline died", exit.cause)
          }
          yield* settle(delivery, verdictOf(exit, message.attempt), durationMillis)
        })
      ).pipe(
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause) && deadlinePassed
            ? Effect.void
            : Effect.logError(
                "unexpected failure while handling a task: unless it was settled, it comes back when its lease expires",
                cause
              )
        ),
        Effect.ensuring(freeSlot),
        Effect.annotateLogs({ taskId: delivery.message.taskId, attempt: delivery.message.attempt })
      )

    /** Extends the leases of running tasks; a lost lease stops its renewal (its result will be discarded). */
    const renewLeases = Effect.suspend(() =>
      Effect.forEach(
        Array.from(running),
        (entry) =>
          entry.delivery.extend().pipe(
            Effect.catchAll((error) => {
              if (!running.has(entry)) return Effect.void
              const annotations = {
                taskId: entry.delivery.message.taskId,
                attempt: entry.delivery.message.attempt
              }
              if (error._tag === "QueueError") {
                return Effect.logWarning("could not extend a lease; trying again", error).pipe(
                  Effect.annotateLogs(annotations)
                )
              }
              running.delete(entry)
              return Effect.logWarning(
                "lost the lease of a running task: another worker may take it over"
              ).pipe(Effect.annotateLogs(annotations))
            })
          ),
        { concurrency: "unbounded", discard: true }
      )
    )

    const fork = yield* FiberSet.runtime(tasks)<unknown>().pipe(Effect.provide(context), Effect.interruptible)

    const pullLoop = Effect.gen(function* () {
      const outage = yield* Schedule.driver(outageBackoff)
      for (;;) {
        while (free === 0) {
          slotFreed.unsafeClose()
          yield* slotFreed.await
        }
        const want = free
        free = 0
        const exit = yield* Effect.uninterruptibleMask((restore) =>
          Effect.tap(Effect.exit(restore(queue.pullBatch(want, pullTimeout))), (exit) => {
            if (Exit.isFailure(exit)) {
              free += want
              return
            }
            free += want - exit.value.length
            for (const delivery of exit.value) fork(handle(delivery))
          })
        )
        if (Exit.isSuccess(exit)) {
          yield* outage.reset
          continue
        }
        if (Cause.isInterruptedOnly(exit.cause)) continue
        yield* Metric.increment(pullErrors)
        yield* Effect.logError("pull failed; backing off", exit.cause)
        yield* Effect.orDie(outage.next(undefined))
      }
    })

    const keeper = yield* Effect.sleep(leaseRenewal).pipe(
      Effect.zipRight(renewLeases),
      Effect.catchAllCause((cause) => Effect.logWarning("lease renewal failed", cause)),
      Effect.forever,
      Effect.interruptible,
      Effect.forkScoped
    )
    const fetcher = yield* pullLoop.pipe(Effect.interruptible, Effect.forkScoped)

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* Fiber.interrupt(fetcher)
        const inFlight = yield* FiberSet.size(tasks)
        if (inFlight > 0) {
          yield* Effect.logInfo(
            `shutting down: waiting up to ${Duration.format(maxShutdownWait)} for ${inFlight} running task(s)`
          )
          const drained = yield* FiberSet.awaitEmpty(tasks).pipe(
            Effect.interruptible,
            Effect.timeout(maxShutdownWait),
            Effect.option
          )
          if (Option.isNone(drained)) {
            deadlinePassed = true
            const left = Array.from(tasks)
            yield* Effect.logWarning(`shutdown deadline passed: interrupting ${left.length} running task(s)`)
            yield* Fiber.interruptAll(left)
          }
        }
        yield* Fiber.interrupt(keeper)
        yield* Effect.logInfo("worker stopped")
      })
    )
    yield* Effect.logInfo("worker started").pipe(
      Effect.annotateLogs({
        backend: queue.backend,
        concurrency,
        maxAttempts,
        leaseRenewalMs: Duration.toMillis(leaseRenewal)
      })
    )
  }).pipe(Effect.annotateLogs({ module: "TaskWorker", queue: queue.queueName }))

/** Builds a worker on the `QueueManager`, `TaskStore` and `Pipeline` in context; nothing runs until `start`. */
export const make = (
  options: TaskWorkerOptions = {}
): Effect.Effect<TaskWorkerService, never, QueueManager | TaskStore | Pipeline> =>
  Effect.gen(function* () {
    const resolved = yield* validate(options)
    const queue = yield* QueueManager
    const store = yield* TaskStore
    const pipeline = yield* Pipeline
    const start = startWorker(queue, store, pipeline, resolved)
    return { start, run: Effect.scoped(Effect.zipRight(start, Effect.never)) }
  })

/** A duration from the environment: a Duration string ("30 seconds", "500 millis") or a number of seconds. */
const durationFromEnv = (name: string) =>
  Config.duration(name).pipe(Config.orElse(() => Config.map(Config.number(name), Duration.seconds)))

/**
 * The `Config` behind {@link TaskWorker.layerConfig}: `CONCURRENCY` (1), `PULL_TIMEOUT` (1 s),
 * `MAX_SHUTDOWN_WAIT` (300 s), `MAX_ATTEMPTS` (3), `TASK_TIMEOUT` (none), `LEASE_RENEWAL` (a third
 * of `LEASE_DURATION` when that is set, else 10 s). Durations take "30 seconds" or a number of seconds.
 */
export const workerConfig: Config.Config<TaskWorkerOptions> = Config.all({
  concurrency: Config.integer("CONCURRENCY").pipe(
    Config.withDefault(defaults.concurrency),
    Config.validate({ message: "CONCURRENCY must be at least 1", validation: (n) => n >= 1 })
  ),
  pullTimeout: durationFromEnv("PULL_TIMEOUT").pipe(Config.withDefault(defaults.pullTimeout)),
  maxShutdownWait: durationFromEnv("MAX_SHUTDOWN_WAIT").pipe(Config.withDefault(defaults.maxShutdownWait)),
  maxAttempts: Config.integer("MAX_ATTEMPTS").pipe(
    Config.withDefault(defaults.maxAttempts),
    Config.validate({ message: "MAX_ATTEMPTS must be at least 1", validation: (n) => n >= 1 })
  ),
  taskTimeout: Config.option(durationFromEnv("TASK_TIMEOUT")),
  leaseRenewal: Config.option(durationFromEnv("LEASE_RENEWAL")),
  leaseDuration: Config.option(durationFromEnv("LEASE_DURATION"))
}).pipe(
  Config.map(
    ({ leaseDuration, leaseRenewal, taskTimeout, ...rest }): TaskWorkerOptions => ({
      ...rest,
      taskTimeout: Option.getOrUndefined(taskTimeout),
      leaseRenewal: Option.getOrElse(
        Option.orElse(leaseRenewal, () =>
          Option.map(leaseDuration, (lease) => Duration.unsafeDivide(lease, 3))
        ),
        () => defaults.leaseRenewal
      )
    })
  )
)

/** The worker service. Provide it with `TaskWorker.layer(options)`; start it with `TaskWorker.start` or `TaskWorker.run`. */
export class TaskWorker extends Context.Tag("effect-task-queue/TaskWorker")<TaskWorker, TaskWorkerService>() {
  /** A worker with these options on the `QueueManager`, `TaskStore` and `Pipeline` in context. */
  static layer = (
    options: TaskWorkerOptions = {}
  ): Layer.Layer<TaskWorker, never, QueueManager | TaskStore | Pipeline> =>
    Layer.effect(TaskWorker, make(options))

  /** A worker configured from the environment (see {@link workerConfig}). */
  static layerConfig: Layer.Layer<TaskWorker, ConfigError.ConfigError, QueueManager | TaskStore | Pipeline> =
    Layer.unwrapEffect(Effect.map(workerConfig, TaskWorker.layer))

  /** Starts the worker in the caller's scope; closing the scope shuts it down gracefully. */
  static start: Effect.Effect<void, never, TaskWorker | Scope.Scope> = Effect.flatMap(
    TaskWorker,
    (w) => w.start
  )

  /** Runs the worker until interrupted, then shuts it down gracefully. */
  static run: Effect.Effect<never, never, TaskWorker> = Effect.flatMap(TaskWorker, (w) => w.run)
}

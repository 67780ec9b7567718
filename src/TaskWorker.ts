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
  DefaultServices,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberRef,
  FiberSet,
  type HashMap,
  Layer,
  LogLevel,
  Metric,
  MetricLabel,
  Option,
  Schedule,
  ScheduleDecision,
  ScheduleIntervals,
  type Scope,
  Tracer
} from "effect"
import type { LeaseLost, QueueError } from "./Errors.js"
import { taskAnnotations } from "./internal/taskAnnotations.js"
import {
  describeFailure,
  Pipeline,
  type PipelineService,
  TaskFailed,
  type UnprovidedRun
} from "./Pipeline.js"
import { type Delivery, QueueManager, type QueueManagerService } from "./QueueManager.js"
import type { JsonValue, TaskMessage, TaskRecord } from "./Task.js"
import { type Outcome, type StartResult, TaskStore, type TaskStoreService } from "./TaskStore.js"
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
  /**
   * How many tasks the worker claims beyond those it runs, so the next ones start without a round
   * trip to the queue; 0 for none. Default: adaptive, as many as the slots would start within
   * {@link prefetchHorizon} at the recent average run time, from 1 to {@link maxAdaptivePrefetch}
   * (`concurrency` before the first runs end): short tasks get a deep prefetch, minute-long ones
   * one. Prefetched tasks are leased to this worker (another worker cannot take them), so a task
   * pushed later with a higher priority can start after up to `prefetch` lower ones; on shutdown
   * they are given back unrun, their attempt not counted.
   */
  readonly prefetch?: number | undefined
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

/** Effect's default tracer: its spans are never exported. */
const nativeTracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/** The adaptive prefetch holds what the slots would start within this many milliseconds. */
export const prefetchHorizon = 100

/** The deepest adaptive prefetch. */
export const maxAdaptivePrefetch = 256

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

/** A run that completed, waiting for the settler. */
interface Completion {
  readonly delivery: Delivery
  readonly result: JsonValue
  readonly durationMillis: number
}

/** How a batch of completed runs was settled: one answer each, in order. */
interface BatchSettled {
  /** The run's outcome is recorded as the task's (else another delivery has started since). */
  readonly recorded: ReadonlyArray<boolean>
  /** Its message is acked (else its lease expired first, or the acks failed). */
  readonly acked: ReadonlyArray<boolean>
  /** Why the acks failed: the outcomes are recorded, and the messages come back when their leases expire. */
  readonly ackError?: QueueError | undefined
}

/** The most completed runs recorded and acked in one call each. */
const maxSettleBatch = 256

const validate = (options: TaskWorkerOptions) => {
  const concurrency = options.concurrency ?? defaults.concurrency
  const maxAttempts = options.maxAttempts ?? defaults.maxAttempts
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    return Effect.dieMessage(`TaskWorker: concurrency must be a positive integer, got ${concurrency}`)
  }
  const prefetch = options.prefetch
  if (prefetch !== undefined && (!Number.isInteger(prefetch) || prefetch < 0)) {
    return Effect.dieMessage(`TaskWorker: prefetch must be a non-negative integer, got ${prefetch}`)
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
    prefetch,
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
    const { backoff, concurrency, leaseRenewal, maxAttempts, maxShutdownWait, prefetch, pullTimeout } =
      options
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

    // Starts and outcomes go with the claims and acks when the queue can write the store's records.
    const recording = store.shared === undefined ? undefined : queue.recording?.(store.shared)
    const tasks = yield* FiberSet.make<void, never>()
    const clock = yield* Effect.clock
    // A span per run only when a tracer that exports spans is installed: Effect's default tracer
    // keeps its spans to itself, and a span costs more than the rest of a short task's bookkeeping.
    const tracing = (yield* Effect.tracer) !== nativeTracer
    // Worker logs below the level in force when the worker starts are not even built.
    const minimumLevel = yield* FiberRef.get(FiberRef.currentMinimumLogLevel)
    const infoEnabled = LogLevel.greaterThanEqual(LogLevel.Info, minimumLevel)
    const debugEnabled = LogLevel.greaterThanEqual(LogLevel.Debug, minimumLevel)
    /** The recent average run time (ms, exponentially weighted), for the adaptive prefetch; none before a run ends. */
    let averageRunMillis: number | undefined
    const currentPrefetch = (): number => {
      if (prefetch !== undefined) return prefetch
      if (averageRunMillis === undefined) return Math.min(concurrency, maxAdaptivePrefetch)
      const startable = (concurrency * prefetchHorizon) / Math.max(averageRunMillis, 0.01)
      return Math.max(1, Math.min(maxAdaptivePrefetch, Math.floor(startable)))
    }
    /** Deliveries claimed and not yet done running (waiting for a slot, or running): at most `concurrency` + the prefetch. */
    let outstanding = 0
    /**
     * Deliveries claimed and not yet settled. A finished run frees its slot before its outcome is
     * recorded and its message settled, so the next task runs while that happens; this bounds how
     * many can be waiting to be settled at once.
     */
    let held = 0
    const changed = yield* Effect.makeLatch(true)
    /**
     * Deliveries recorded as started and waiting for a slot, in claim order, and the idle slots
     * waiting for one: `concurrency` slot fibers run one task after another, so a task costs no
     * fiber of its own (nor a copy of the pipeline's context).
     */
    const ready: Array<Delivery> = []
    const idleSlots: Array<(exit: Exit.Exit<Delivery | undefined>) => void> = []
    /** Set when the shutdown begins: idle slots stop; waiting deliveries are given back without running. */
    let stopping = false
    const offerReady = (delivery: Delivery) => {
      const slot = idleSlots.shift()
      if (slot === undefined) ready.push(delivery)
      else slot(Exit.succeed(delivery))
    }
    const nextReady: Effect.Effect<Delivery | undefined> = Effect.async<Delivery | undefined>((resume) => {
      const delivery = ready.shift()
      if (delivery !== undefined) return resume(Exit.succeed(delivery))
      if (stopping) return resume(Exit.succeed(undefined))
      idleSlots.push(resume)
      changed.unsafeOpen()
      return Effect.sync(() => {
        const at = idleSlots.indexOf(resume)
        if (at >= 0) idleSlots.splice(at, 1)
      })
    })
    /** Claimed deliveries not yet done running (their leases are renewed), and those whose lease was lost. */
    const leased = new Set<Delivery>()
    const leaseLost = new WeakSet<Delivery>()
    /** The delivery will not run (any more): it leaves `outstanding`. */
    const doneRunning = (delivery: Delivery) => {
      if (!leased.delete(delivery)) return
      outstanding--
      changed.unsafeOpen()
    }
    /** Set when the shutdown deadline passed: interrupted runs are then recorded "shutdown timeout". */
    let deadlinePassed = false

    const discard = () => {
      discarded.unsafeUpdate(1, [])
      return Effect.logWarning("another delivery of the task has started: this result is discarded")
    }

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
      Effect.either(retryQueueError(store.finish(delivery.message.taskId, delivery.token, outcome)))

    const leaseExpiredWarning = Effect.logWarning(
      "the lease expired before the message was settled: the recorded outcome stands, and the next delivery is settled without running"
    )

    /** Settles the message after its outcome was recorded; a lost lease or an outage leaves it to lease expiry. */
    const settleMessage = (effect: Effect.Effect<void, QueueError | LeaseLost>) =>
      Effect.catchAll(retryQueueError(effect), (error) =>
        error._tag === "LeaseLost"
          ? leaseExpiredWarning
          : Effect.logError(
              "could not settle the message: it comes back when its lease expires, and is then settled as recorded",
              error
            )
      )

    /**
     * Completed runs, recorded and acked by the settler in batches (one `finishMany` and one
     * `ackAll` for all the runs that ended since its last batch) instead of two calls each. A
     * completed run leaves `held` once its batch is settled.
     */
    const completions: Array<Completion> = []
    /** Completions queued or being settled; the shutdown waits for none. */
    let unsettled = 0
    const completionsWaiting = yield* Effect.makeLatch(false)
    const allSettled = yield* Effect.makeLatch(true)

    const complete = (completion: Completion) => {
      completions.push(completion)
      if (unsettled++ === 0) allSettled.unsafeClose()
      completionsWaiting.unsafeOpen()
    }

    /** A log line about one completion (the settler's fiber is not the task's: annotated here). */
    const logFor = (completion: Completion, log: Effect.Effect<void>) =>
      Effect.annotateLogs(log, {
        taskId: completion.delivery.message.taskId,
        attempt: completion.delivery.message.attempt
      })

    /**
     * How each completed run of a batch was settled: `recorded` (its outcome is the task's) and
     * `acked` (its message is gone), one each, in order; `undefined` when nothing could be
     * recorded. With `recording`, one call does both; else `finishMany`, then `ackAll` of those recorded.
     */
    const recordAndAck = (batch: ReadonlyArray<Completion>): Effect.Effect<BatchSettled | undefined> => {
      if (recording !== undefined) {
        return Effect.map(
          Effect.either(
            retryQueueError(
              recording.settleAll(
                batch.map(({ delivery, result }) => ({ delivery, outcome: { status: "COMPLETED", result } }))
              )
            )
          ),
          (settled) =>
            Either.isLeft(settled)
              ? undefined
              : {
                  recorded: settled.right.map((end) => end !== "discarded"),
                  acked: settled.right.map((end) => end === "settled")
                }
        )
      }
      return Effect.flatMap(
        Effect.either(
          retryQueueError(
            store.finishMany(
              batch.map(({ delivery, result }) => ({
                taskId: delivery.message.taskId,
                token: delivery.token,
                outcome: { status: "COMPLETED", result }
              }))
            )
          )
        ),
        (finished) => {
          if (Either.isLeft(finished)) return Effect.succeed(undefined)
          const recorded = finished.right
          const toAck = batch.filter((_, i) => recorded[i])
          if (toAck.length === 0) return Effect.succeed({ recorded, acked: recorded })
          return Effect.map(
            Effect.either(retryQueueError(queue.ackAll(toAck.map((c) => c.delivery)))),
            (acks): BatchSettled => {
              if (Either.isLeft(acks))
                return { recorded, acked: recorded.map(() => false), ackError: acks.left }
              let next = 0
              return { recorded, acked: recorded.map((was) => was && acks.right[next++]!) }
            }
          )
        }
      )
    }

    /** Records a batch of completed runs, then acks those recorded; never fails. */
    const settleCompletions = (batch: ReadonlyArray<Completion>) =>
      Effect.gen(function* () {
        const settled = yield* recordAndAck(batch)
        if (settled === undefined) {
          return yield* Effect.forEach(
            batch,
            (completion) =>
              logFor(completion, release(completion.delivery, "could not record the task's outcome")),
            { concurrency: "unbounded", discard: true }
          )
        }
        const recordedOnes: Array<Completion> = []
        for (let i = 0; i < batch.length; i++) {
          if (!settled.recorded[i]) yield* logFor(batch[i]!, discard())
          else {
            recordedOnes.push(batch[i]!)
            if (!settled.acked[i] && settled.ackError === undefined)
              yield* logFor(batch[i]!, leaseExpiredWarning)
          }
        }
        if (settled.ackError !== undefined) {
          yield* Effect.logError(
            `could not settle ${recordedOnes.length} message(s): they come back when their leases expire, and are then settled as recorded`,
            settled.ackError
          )
        }
        completed.unsafeUpdate(recordedOnes.length, [])
        if (infoEnabled) {
          for (const completion of recordedOnes) {
            yield* logFor(
              completion,
              Effect.annotateLogs(Effect.logInfo("task completed"), "durationMs", completion.durationMillis)
            )
          }
        }
      }).pipe(
        Effect.catchAllCause((cause) =>
          Effect.logError(
            "unexpected failure while settling completed tasks: they come back when their leases expire",
            cause
          )
        ),
        Effect.ensuring(
          Effect.sync(() => {
            held -= batch.length
            unsettled -= batch.length
            if (unsettled === 0) allSettled.unsafeOpen()
            changed.unsafeOpen()
          })
        ),
        Effect.uninterruptible
      )

    const settler = Effect.gen(function* () {
      for (;;) {
        while (completions.length === 0) {
          completionsWaiting.unsafeClose()
          yield* completionsWaiting.await
        }
        // The fetcher, woken by the same runs, goes first: its claim reaches Redis before this
        // settle, so the next batch comes back while Redis still runs the settle.
        yield* Effect.yieldNow()
        yield* settleCompletions(completions.splice(0, maxSettleBatch))
      }
    })

    /** Every other end of a run (a retry, a failure), annotated with the task. */
    const settleFailed = (
      delivery: Delivery,
      ran: Exclude<Verdict, { readonly _tag: "Completed" }>,
      durationMillis: number
    ) =>
      Effect.gen(function* () {
        const message = delivery.message
        const retryIn = ran._tag === "Retry" ? yield* backoffDelay(backoff, message.attempt) : Option.none()
        const verdict =
          ran._tag === "Retry" && Option.isNone(retryIn) ? { _tag: "Failed", error: ran.error } : ran
        const recorded = yield* record(delivery, {
          status: verdict._tag === "Retry" ? "RETRYING" : "FAILED",
          error: verdict.error
        })
        if (Either.isLeft(recorded)) return yield* release(delivery, "could not record the task's outcome")
        if (!recorded.right) return yield* discard()
        const timing = { durationMs: durationMillis }
        if (verdict._tag === "Retry") {
          const delay = Option.getOrElse(retryIn, () => Duration.zero)
          yield* settleMessage(delivery.nack({ delay }))
          retried.unsafeUpdate(1, [])
          return yield* Effect.logWarning("task failed; it will be retried").pipe(
            Effect.annotateLogs({ ...timing, error: verdict.error, retryInMs: Duration.toMillis(delay) })
          )
        }
        yield* settleMessage(delivery.nack({ requeue: false, error: verdict.error }))
        failed.unsafeUpdate(1, [])
        return yield* Effect.logError("task failed; dead-lettered").pipe(
          Effect.annotateLogs({ ...timing, error: verdict.error })
        )
      })

    const settle = (
      delivery: Delivery,
      verdict: Exclude<Verdict, { readonly _tag: "Completed" }>,
      durationMillis: number
    ) => settleFailed(delivery, verdict, durationMillis)

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

    /** How a run that did not complete ended, as the worker acts on it. */
    const verdictOf = (
      cause: Cause.Cause<TaskFailed>,
      attempt: number
    ): Exclude<Verdict, { readonly _tag: "Completed" }> => {
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

    /**
     * Gives back a delivery that never ran (shutdown came first): to the queue, then its record
     * back to PENDING (fenced by the token, should another worker have started it meanwhile); its
     * attempt is not counted.
     */
    const giveBack = (delivery: Delivery) =>
      delivery.release.pipe(
        Effect.zipRight(store.release(delivery.message.taskId, delivery.token)),
        Effect.zipRight(Effect.logDebug("prefetched task given back unrun")),
        Effect.catchAll((error) =>
          Effect.logWarning(
            "could not give back a prefetched task; it comes back when its lease expires",
            error
          )
        )
      )

    /** The last word on a delivery's handling: an interruption at the deadline is expected, anything else is logged. */
    const unexpected = (cause: Cause.Cause<unknown>) =>
      Cause.isInterruptedOnly(cause) && deadlinePassed
        ? Effect.void
        : Effect.logError(
            "unexpected failure while handling a task: unless it was settled, it comes back when its lease expires",
            cause
          )

    /** Ends a delivery that does not run here (`effect` settles or gives it back); never fails. */
    const early = (delivery: Delivery, effect: Effect.Effect<void>) =>
      effect.pipe(
        Effect.catchAllCause(unexpected),
        Effect.annotateLogs({ taskId: delivery.message.taskId, attempt: delivery.message.attempt }),
        Effect.ensuring(
          Effect.sync(() => {
            doneRunning(delivery)
            held--
            changed.unsafeOpen()
          })
        )
      )

    /** A run ended after `durationMillis`: it leaves `outstanding` and feeds the duration metric and the adaptive prefetch. */
    const ran = (delivery: Delivery, startedAt: number): number => {
      doneRunning(delivery)
      const durationMillis = clock.unsafeCurrentTimeMillis() - startedAt
      duration.unsafeUpdate(durationMillis, [])
      averageRunMillis =
        averageRunMillis === undefined ? durationMillis : 0.8 * averageRunMillis + 0.2 * durationMillis
      return durationMillis
    }

    /** Settles a run that did not complete; never fails, and the delivery leaves `held` after. */
    const settleEnded = (delivery: Delivery, cause: Cause.Cause<TaskFailed>, durationMillis: number) => {
      const settled = settle(delivery, verdictOf(cause, delivery.message.attempt), durationMillis)
      return Effect.catchAllCause(
        Cause.isDie(cause)
          ? Effect.zipRight(Effect.logWarning("the pipeline died", cause), settled)
          : settled,
        unexpected
      ).pipe(
        Effect.ensuring(
          Effect.sync(() => {
            held--
            changed.unsafeOpen()
          })
        )
      )
    }

    /**
     * Runs one delivery's pipeline on a slot fiber (the slot is uninterruptible, the run
     * interruptible through `restore`), then hands a completed run to the settler or settles any
     * other end itself; never fails. The slot's log annotations name the task meanwhile. A run is
     * one step of the runtime besides the pipeline's own: everything around it is plain code.
     */
    const runOne = (
      delivery: Delivery,
      restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
      baseAnnotations: HashMap.HashMap<string, unknown>
    ): Effect.Effect<void, never, unknown> => {
      const message = delivery.message
      started.unsafeUpdate(1, [])
      const traced = tracing
        ? Effect.withSpan(runPipeline(message), "TaskWorker.run", {
            attributes: { "task.id": message.taskId, "task.attempt": message.attempt },
            captureStackTrace: false
          })
        : runPipeline(message)
      const logged = restore(debugEnabled ? Effect.zipRight(Effect.logDebug("task started"), traced) : traced)
      let startedAt = 0
      return Effect.matchCauseEffect(
        Effect.flatMap(
          FiberRef.set(
            FiberRef.currentLogAnnotations,
            taskAnnotations(baseAnnotations, message.taskId, message.attempt)
          ),
          () => {
            startedAt = clock.unsafeCurrentTimeMillis()
            return logged
          }
        ),
        {
          onSuccess: (result) => {
            complete({ delivery, result, durationMillis: ran(delivery, startedAt) })
            return Effect.void
          },
          onFailure: (cause) => settleEnded(delivery, cause, ran(delivery, startedAt))
        }
      )
    }

    /**
     * A slot: runs ready deliveries one after another until the shutdown. It is uninterruptible
     * but where it waits for a delivery and where a pipeline runs: the bookkeeping around a run
     * needs no mask of its own.
     */
    const slot = Effect.uninterruptibleMask((restore) => {
      const waitReady = restore(nextReady)
      return Effect.flatMap(FiberRef.get(FiberRef.currentLogAnnotations), (baseAnnotations) =>
        Effect.gen(function* () {
          for (;;) {
            const delivery = ready.shift() ?? (yield* waitReady)
            if (delivery === undefined) return
            yield* runOne(delivery, restore, baseAnnotations)
          }
        })
      )
    })

    /**
     * Queues each delivery of a claimed batch whose start is recorded for a slot, or settles it at
     * once: already finished by an earlier delivery, or past `maxAttempts` with every earlier
     * holder dead (a task that keeps killing its workers is not handed to another one forever), or
     * given back when the shutdown has begun. Returns the settlements to run.
     */
    const dispatch = (batch: ReadonlyArray<Delivery>, starts: ReadonlyArray<StartResult>) => {
      const others: Array<Effect.Effect<void>> = []
      for (let i = 0; i < batch.length; i++) {
        const delivery = batch[i]!
        const result = starts[i]!
        if (result._tag === "Finished") others.push(early(delivery, settleFinished(delivery, result.record)))
        else if (delivery.message.attempt > maxAttempts) {
          const error = stalled(delivery.message.attempt - 1)
          others.push(early(delivery, settle(delivery, { _tag: "Failed", error }, 0)))
        } else if (stopping) others.push(early(delivery, giveBack(delivery)))
        else offerReady(delivery)
      }
      return others
    }

    /** Runs the settlements `dispatch` returned, if any, on a fiber of their own. */
    const forkAll = (others: ReadonlyArray<Effect.Effect<void>>) => {
      if (others.length > 0) fork(Effect.all(others, { concurrency: "unbounded", discard: true }))
    }

    /**
     * Records the start of a claimed batch in one call (`startMany`), then dispatches it. A batch
     * whose start cannot be recorded is given back.
     */
    const startAll = (batch: ReadonlyArray<Delivery>) => {
      let dispatched = 0
      return Effect.flatMap(
        Effect.either(
          retryQueueError(
            store.startMany(
              batch.map(({ message, token }) => ({
                taskId: message.taskId,
                lease: { token, attempt: message.attempt, priority: message.priority }
              }))
            )
          )
        ),
        (begun) => {
          dispatched = batch.length
          if (Either.isLeft(begun)) {
            return Effect.forEach(
              batch,
              (delivery) => early(delivery, release(delivery, "could not record the task's start")),
              { concurrency: "unbounded", discard: true }
            )
          }
          return Effect.sync(() => forkAll(dispatch(batch, begun.right)))
        }
      ).pipe(
        Effect.catchAllCause((cause) =>
          Effect.logError(
            "unexpected failure while recording the start of tasks: they come back when their leases expire",
            cause
          )
        ),
        Effect.ensuring(
          Effect.sync(() => {
            // Deliveries never dispatched (an interrupted or failed store call) wait for lease expiry.
            for (let i = dispatched; i < batch.length; i++) {
              doneRunning(batch[i]!)
              held--
            }
            changed.unsafeOpen()
          })
        ),
        Effect.uninterruptible
      )
    }

    /** Extends the leases of running and prefetched tasks; a lost lease stops its renewal (its result will be discarded). */
    const renewLeases = Effect.suspend(() =>
      Effect.forEach(
        Array.from(leased).filter((delivery) => !leaseLost.has(delivery)),
        (delivery) =>
          delivery.extend().pipe(
            Effect.catchAll((error) => {
              if (!leased.has(delivery)) return Effect.void
              if (error._tag === "QueueError") {
                return Effect.logWarning("could not extend a lease; trying again", error)
              }
              leaseLost.add(delivery)
              return Effect.logWarning("lost the lease of a running task: another worker may take it over")
            }),
            Effect.annotateLogs({ taskId: delivery.message.taskId, attempt: delivery.message.attempt })
          ),
        { concurrency: "unbounded", discard: true }
      )
    )

    const fork = yield* FiberSet.runtime(tasks)<unknown>().pipe(Effect.provide(context), Effect.interruptible)

    for (let i = 0; i < concurrency; i++) fork(slot)

    /** Claims up to `max` deliveries; with `recording`, the same call records their starts. */
    const claim = (
      max: number
    ): Effect.Effect<
      {
        readonly deliveries: ReadonlyArray<Delivery>
        readonly starts?: ReadonlyArray<StartResult> | undefined
      },
      QueueError
    > =>
      recording === undefined
        ? Effect.map(queue.pullBatch(max, pullTimeout), (deliveries) => ({ deliveries }))
        : Effect.map(recording.pullBatch(max, pullTimeout), (claimed) => ({
            deliveries: claimed.map((c) => c.delivery),
            starts: claimed.map((c) => c.start)
          }))

    const pullLoop = Effect.gen(function* () {
      const outage = yield* Schedule.driver(outageBackoff)
      for (;;) {
        // Claims go in batches: once half the capacity is free, or as soon as a slot has nothing to run.
        let capacity = concurrency + currentPrefetch()
        while (
          held >= 2 * capacity ||
          (capacity - outstanding < Math.ceil(capacity / 2) &&
            (idleSlots.length === 0 || outstanding >= capacity))
        ) {
          changed.unsafeClose()
          yield* changed.await
          capacity = concurrency + currentPrefetch()
        }
        // At most half the capacity per claim (but every slot's worth): the next claim goes out as
        // soon as a batch is dispatched, and Redis answers it while the slots run that batch.
        const batch = Math.max(concurrency, Math.ceil(capacity / 2))
        const want = Math.min(capacity - outstanding, 2 * capacity - held, batch)
        outstanding += want
        held += want
        const exit = yield* Effect.uninterruptibleMask((restore) =>
          Effect.tap(Effect.exit(restore(claim(want))), (exit) => {
            const got = Exit.isSuccess(exit) ? exit.value.deliveries.length : 0
            outstanding -= want - got
            held -= want - got
            if (Exit.isSuccess(exit) && got > 0) {
              const { deliveries, starts } = exit.value
              for (const delivery of deliveries) leased.add(delivery)
              // Starts recorded by the claim itself are dispatched here, without a fiber of their own.
              if (starts === undefined) fork(startAll(deliveries))
              else forkAll(dispatch(deliveries, starts))
            }
          })
        )
        if (Exit.isSuccess(exit)) {
          yield* outage.reset
          continue
        }
        if (Cause.isInterruptedOnly(exit.cause)) continue
        pullErrors.unsafeUpdate(1, [])
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
    const settling = yield* settler.pipe(Effect.interruptible, Effect.forkScoped)

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        yield* Fiber.interrupt(fetcher)
        // Idle slots stop; prefetched tasks that have not started go back to the queue at once.
        stopping = true
        for (const idle of idleSlots.splice(0)) idle(Exit.succeed(undefined))
        for (const delivery of ready.splice(0)) fork(early(delivery, giveBack(delivery)))
        const inFlight = leased.size
        if (inFlight > 0) {
          yield* Effect.logInfo(
            `shutting down: waiting up to ${Duration.format(maxShutdownWait)} for ${inFlight} running task(s)`
          )
        }
        const drained = yield* FiberSet.awaitEmpty(tasks).pipe(
          Effect.interruptible,
          Effect.timeout(maxShutdownWait),
          Effect.option
        )
        if (Option.isNone(drained)) {
          deadlinePassed = true
          yield* Effect.logWarning(`shutdown deadline passed: interrupting ${leased.size} running task(s)`)
          yield* Fiber.interruptAll(Array.from(tasks))
        }
        // Completed runs are recorded and acked before the worker stops.
        yield* allSettled.await
        yield* Fiber.interrupt(settling)
        yield* Fiber.interrupt(keeper)
        yield* Effect.logInfo("worker stopped")
      })
    )
    yield* Effect.logInfo("worker started").pipe(
      Effect.annotateLogs({
        backend: queue.backend,
        concurrency,
        prefetch: prefetch ?? "adaptive",
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
 * The `Config` behind {@link TaskWorker.layerConfig}: `CONCURRENCY` (1), `PREFETCH` (adaptive), `PULL_TIMEOUT` (1 s),
 * `MAX_SHUTDOWN_WAIT` (300 s), `MAX_ATTEMPTS` (3), `TASK_TIMEOUT` (none), `LEASE_RENEWAL` (a third
 * of `LEASE_DURATION` when that is set, else 10 s). Durations take "30 seconds" or a number of seconds.
 */
export const workerConfig: Config.Config<TaskWorkerOptions> = Config.all({
  concurrency: Config.integer("CONCURRENCY").pipe(
    Config.withDefault(defaults.concurrency),
    Config.validate({ message: "CONCURRENCY must be at least 1", validation: (n) => n >= 1 })
  ),
  prefetch: Config.option(
    Config.integer("PREFETCH").pipe(
      Config.validate({ message: "PREFETCH must be at least 0", validation: (n) => n >= 0 })
    )
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
    ({ leaseDuration, leaseRenewal, prefetch, taskTimeout, ...rest }): TaskWorkerOptions => ({
      ...rest,
      prefetch: Option.getOrUndefined(prefetch),
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

/**
 * The `QueueManager` service: push tasks with a priority, pull the most urgent one as a leased
 * `Delivery`, inspect and clear the queue, list and re-queue dead letters.
 *
 * @since 0.1.0
 */
import {
  Clock,
  Config,
  type ConfigError,
  Context,
  DefaultServices,
  Duration,
  Effect,
  Either,
  type Fiber,
  identity,
  Layer,
  Option,
  ParseResult,
  Redacted,
  Schema,
  Tracer
} from "effect"
import { InvalidTask, type LeaseLost, QueueError } from "./Errors.js"
import type { QueueBackend, QueueStats, RawAck, RawLease, RawStartedLease, RawTask } from "./QueueBackend.js"
import {
  defaultPriority,
  isJsonValue,
  isTaskId,
  type JsonValue,
  maxDataBytes,
  maxPriority,
  minPriority,
  Priority,
  shallowJsonLength,
  TaskId,
  type TaskMessage,
  unsafeTaskMessage,
  WireBody
} from "./Task.js"
import type { SharedRecords, StartResult } from "./TaskStore.js"

/** How a holder gives a task back: requeue (optionally after a delay) or dead-letter with a reason. */
export interface NackOptions {
  /** Back to the queue (default) or, with `false`, to the dead letters. */
  readonly requeue?: boolean | undefined
  /** Wait this long before the task is pending again (requeue only). */
  readonly delay?: Duration.DurationInput | undefined
  /** The reason, kept with a dead letter. */
  readonly error?: string | undefined
}

/** A pulled task, leased to its puller until `ack`, `nack` or lease expiry. */
export interface Delivery {
  readonly message: TaskMessage
  /** The lease token; a later holder of the same task has another. */
  readonly token: string
  /** The task is done: it leaves the queue. */
  readonly ack: Effect.Effect<void, QueueError | LeaseLost>
  /** Give the task back: requeue it (attempt + 1 on its next delivery) or dead-letter it. */
  readonly nack: (options?: NackOptions) => Effect.Effect<void, QueueError | LeaseLost>
  /** Keep the lease for `duration` (default: the queue's lease duration) from now. */
  readonly extend: (duration?: Duration.DurationInput) => Effect.Effect<void, QueueError | LeaseLost>
  /**
   * Give back a task this holder did not run (a worker's prefetched task at shutdown): back to
   * pending, this delivery not counted as an attempt.
   */
  readonly release: Effect.Effect<void, QueueError | LeaseLost>
}

/** A task to push in a batch. */
export interface NewTask {
  readonly taskId: string
  readonly data: unknown
  readonly priority?: number | undefined
}

/** A dead-lettered task with the error that killed it. */
export interface DeadLetter {
  readonly taskId: string
  /** The task as it was queued; `None` when its body was malformed. */
  readonly message: Option.Option<TaskMessage>
  readonly attempts: number
  readonly error: string
  /** When it was dead-lettered, epoch milliseconds. */
  readonly deadAt: number
}

/** The backends a queue can run on. */
export type Backend = "memory" | "redis" | "rabbitmq"

/** Options of {@link QueueManager.layer}: the seed's `QueueManager(backend=..., ...)`. */
export interface QueueOptions {
  readonly backend: Backend
  /** Default `"tasks"`. */
  readonly queueName?: string | undefined
  /** Default `redis://127.0.0.1:6379`. */
  readonly redisUrl?: string | Redacted.Redacted | undefined
  /** Default `amqp://guest:guest@127.0.0.1:5672`. */
  readonly rabbitmqUrl?: string | Redacted.Redacted | undefined
  /** How long a pulled, unacknowledged task stays invisible; default 30 seconds. */
  readonly leaseDuration?: Duration.DurationInput | undefined
}

/** The defaults of {@link QueueOptions}. */
export const defaults = {
  queueName: "tasks",
  redisUrl: "redis://127.0.0.1:6379",
  rabbitmqUrl: "amqp://guest:guest@127.0.0.1:5672",
  leaseDuration: Duration.seconds(30)
} as const

/** A delivery whose start the queue recorded with its claim (see {@link RecordingQueue}). */
export interface StartedDelivery {
  readonly delivery: Delivery
  /** What `TaskStore.startMany` would have answered for it. */
  readonly start: StartResult
}

/** How a delivery ends, for {@link RecordingQueue.settleAll}: completed (acked) or failed for good (dead-lettered). */
export interface Ending {
  readonly delivery: Delivery
  readonly outcome:
    | { readonly status: "COMPLETED"; readonly result: JsonValue }
    | { readonly status: "FAILED"; readonly error: string }
}

/**
 * How {@link RecordingQueue.settleAll} ended for one delivery. `settled`: the outcome is recorded
 * and the message acked (or dead-lettered). `discarded`: another delivery of the task has started
 * since; nothing changed. `expired`: the outcome is recorded but the lease had expired; the
 * message comes back and its next delivery is settled as recorded without running.
 */
export type Settled = "settled" | "discarded" | "expired"

/**
 * The queue's claims and settlements with a task store's writes folded into the same calls: one
 * call where a worker otherwise makes two (a claim, then `TaskStore.startMany`; `TaskStore.finishMany`,
 * then `ackAll`). From {@link QueueManagerService.recording}, for a store whose records the
 * backend can write: the Redis queue, for the Redis store on the same server and queue name.
 */
export interface RecordingQueue {
  /** `pullBatch`, each delivery's start recorded as `TaskStore.startMany` records it. */
  readonly pullBatch: (
    max: number,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<ReadonlyArray<StartedDelivery>, QueueError>
  /**
   * Records each ending as `TaskStore.finishMany` does (fenced by the delivery's token), then acks
   * (COMPLETED) or dead-letters (FAILED) the messages of those recorded; one answer each, in order.
   */
  readonly settleAll: (endings: ReadonlyArray<Ending>) => Effect.Effect<ReadonlyArray<Settled>, QueueError>
}

/** The operations of a queue. */
export interface QueueManagerService {
  readonly queueName: string
  readonly backend: Backend
  /** `true` when the backend durably accepted the task; `false` when that id is already pending or in flight. */
  readonly push: (
    taskId: string,
    data: unknown,
    priority?: number
  ) => Effect.Effect<boolean, QueueError | InvalidTask>
  /** Pushes many tasks in one round trip; one invalid task rejects the whole batch. */
  readonly pushBatch: (
    tasks: Iterable<NewTask>
  ) => Effect.Effect<ReadonlyArray<boolean>, QueueError | InvalidTask>
  /** The most urgent pending task, waiting up to `timeout` (default 1 second) for one. */
  readonly pull: (timeout?: Duration.DurationInput) => Effect.Effect<Option.Option<Delivery>, QueueError>
  /** Up to `max` tasks in one round trip, waiting up to `timeout` for the first. */
  readonly pullBatch: (
    max: number,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<ReadonlyArray<Delivery>, QueueError>
  /**
   * Acks several deliveries in one round trip (a worker's completed tasks); one answer each, in
   * order: `true` when acked, `false` when the lease no longer held (where `ack` fails with `LeaseLost`).
   */
  readonly ackAll: (deliveries: ReadonlyArray<Delivery>) => Effect.Effect<ReadonlyArray<boolean>, QueueError>
  /**
   * The claims and settlements of this queue that also write the records of `records` (a
   * `TaskStore`'s {@link SharedRecords}), or `undefined` when the backend cannot write them: a
   * worker uses it when it can, and makes the store's calls itself otherwise. Optional.
   */
  readonly recording?: ((records: SharedRecords) => RecordingQueue | undefined) | undefined
  /** Tasks waiting to run: pending plus delayed. */
  readonly length: Effect.Effect<number, QueueError>
  /** Removes the waiting (pending and delayed) tasks; returns how many. In-flight and dead ones stay. */
  readonly clear: Effect.Effect<number, QueueError>
  readonly stats: Effect.Effect<QueueStats, QueueError>
  /** The oldest dead letters, at most `limit` (default 100). */
  readonly deadLetters: (limit?: number) => Effect.Effect<ReadonlyArray<DeadLetter>, QueueError>
  /** Puts a dead letter back in the queue with its attempts reset; `false` when there is none with that id. */
  readonly retryDead: (taskId: string) => Effect.Effect<boolean, QueueError>
}

const decodeTaskId = Schema.decodeUnknownEither(TaskId)
const decodePriority = Schema.decodeUnknownEither(Priority)
const encodeBody = Schema.encodeEither(Schema.parseJson(WireBody))
const decodeBody = Schema.decodeEither(Schema.parseJson(WireBody))

/** One readable line per issue, e.g. `priority: priority must be an integer from 0 to 10`. */
const describeIssues = (error: ParseResult.ParseError, field?: string) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => {
      const path = [...(field === undefined ? [] : [field]), ...issue.path.map(String)].join(".")
      return path === "" ? issue.message : `${path}: ${issue.message}`
    })
    .join("; ")

const invalid = (error: ParseResult.ParseError, field: string | undefined, taskId?: string) =>
  new InvalidTask({ message: describeIssues(error, field), ...(taskId === undefined ? {} : { taskId }) })

/** Validates and encodes one task; the single place every backend's input is checked. */
export const encodeTask = (task: NewTask, now: number): Either.Either<RawTask, InvalidTask> => {
  const fast = fastEncodeTask(task, now)
  return fast === undefined ? schemaEncodeTask(task, now) : Either.right(fast)
}

/**
 * A valid task encoded with the checks of {@link schemaEncodeTask} done by hand (the same body:
 * `WireBody`'s keys in its order); `undefined` when any check fails, and the schema then says why.
 */
const fastEncodeTask = (task: NewTask, now: number): RawTask | undefined => {
  const { taskId, data } = task
  const priority = task.priority ?? defaultPriority
  if (
    !isTaskId(taskId) ||
    typeof priority !== "number" ||
    !Number.isInteger(priority) ||
    priority < minPriority ||
    priority > maxPriority ||
    !isJsonValue(data)
  ) {
    return undefined
  }
  const body = JSON.stringify({ task_id: taskId, data, priority, enqueued_at: now })
  // A UTF-16 unit is one to three UTF-8 bytes: count bytes only when the length cannot decide.
  if (body.length * 3 > maxDataBytes && Buffer.byteLength(body) > maxDataBytes) return undefined
  return { id: taskId, priority: priority as Priority, body }
}

const schemaEncodeTask = (task: NewTask, now: number): Either.Either<RawTask, InvalidTask> =>
  Either.gen(function* () {
    const taskId = yield* Either.mapLeft(decodeTaskId(task.taskId), (e) => invalid(e, "task_id"))
    const priority = yield* Either.mapLeft(decodePriority(task.priority ?? defaultPriority), (e) =>
      invalid(e, "priority", taskId)
    )
    const body = yield* Either.mapLeft(
      encodeBody({ taskId, data: task.data as never, priority, enqueuedAt: now }),
      (e) => invalid(e, undefined, taskId)
    )
    // A UTF-16 unit is one to three UTF-8 bytes: count bytes only when the length cannot decide.
    if (
      body.length > maxDataBytes ||
      (body.length * 3 > maxDataBytes && Buffer.byteLength(body) > maxDataBytes)
    ) {
      return yield* Either.left(
        new InvalidTask({
          taskId,
          message: `task data is over the ${maxDataBytes}-byte limit once encoded as JSON`
        })
      )
    }
    return { id: taskId, priority, body }
  })

/**
 * The well-formed body of `lease` as a message, checked by hand (the checks of `WireBody`, without
 * building a parse tree); `undefined` when any check fails, and the schema then says why.
 */
const fastDecodeLease = (lease: RawLease): TaskMessage | undefined => {
  let json: unknown
  try {
    json = JSON.parse(lease.body)
  } catch {
    return undefined
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) return undefined
  const { task_id: taskId, data, priority, enqueued_at: enqueuedAt } = json as Record<string, unknown>
  if (
    taskId !== lease.id ||
    !isTaskId(taskId) ||
    typeof priority !== "number" ||
    !Number.isInteger(priority) ||
    priority < minPriority ||
    priority > maxPriority ||
    typeof enqueuedAt !== "number" ||
    // What JSON.parse makes is JSON; only its depth is left to check, and a short body has none to speak of.
    (lease.body.length >= shallowJsonLength && !isJsonValue(data))
  ) {
    return undefined
  }
  return unsafeTaskMessage({
    taskId,
    data: data as JsonValue,
    priority: priority as Priority,
    enqueuedAt,
    attempt: lease.attempt
  })
}

/** Decodes a claimed body into a message, or says why it is malformed. */
const decodeLease = (lease: RawLease): Either.Either<TaskMessage, string> => {
  const fast = fastDecodeLease(lease)
  if (fast !== undefined) return Either.right(fast)
  const body = decodeBody(lease.body)
  if (Either.isLeft(body))
    return Either.left(`malformed message: ${ParseResult.TreeFormatter.formatErrorSync(body.left)}`)
  if (body.right.taskId !== lease.id) {
    return Either.left(
      `malformed message: body task_id ${JSON.stringify(body.right.taskId)} differs from its id`
    )
  }
  const { taskId, data, priority, enqueuedAt } = body.right
  return Either.right(unsafeTaskMessage({ taskId, data, priority, enqueuedAt, attempt: lease.attempt }))
}

/** Effect's default tracer: its spans are never exported, so nothing can observe them. */
const nativeTracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/** The time by the fiber's `Clock` (a `TestClock` in tests), read without an effect of its own. */
const clockMillis = (fiber: Fiber.RuntimeFiber<unknown, unknown>) =>
  Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeMillis()

const defaultTimeout = Duration.seconds(1)

const firstDelivery = (deliveries: Array<Delivery>) => Option.fromNullable(deliveries[0])

/** What the deliveries of one queue share: its backend, lease duration and the way it runs a public operation. */
interface Settle {
  readonly backend: QueueBackend
  readonly leaseMillis: number
  readonly operation: <A, E>(
    name: string,
    taskId: string,
    body: (fiber: Fiber.RuntimeFiber<unknown, unknown>) => Effect.Effect<A, E>
  ) => Effect.Effect<A, E>
}

/** A pulled task. Its effects are built when read: most deliveries are only acked. */
class LeasedDelivery implements Delivery {
  readonly token: string
  readonly #id: string
  readonly #settle: Settle

  constructor(
    readonly message: TaskMessage,
    lease: RawLease,
    settle: Settle
  ) {
    this.token = lease.token
    this.#id = lease.id
    this.#settle = settle
  }

  get ack(): Delivery["ack"] {
    const { backend, operation } = this.#settle
    const immediate = backend.immediate
    if (immediate === undefined) {
      return operation("QueueManager.ack", this.#id, () => backend.ack(this.#id, this.token))
    }
    return operation("QueueManager.ack", this.#id, (fiber) => {
      const failure = immediate.ack(this.#id, this.token, clockMillis(fiber))
      return failure === undefined ? Effect.void : Effect.fail(failure)
    })
  }

  get nack(): Delivery["nack"] {
    const { backend, operation } = this.#settle
    return (options) =>
      operation("QueueManager.nack", this.#id, () =>
        backend.nack(this.#id, this.token, {
          requeue: options?.requeue ?? true,
          delayMillis: options?.delay === undefined ? 0 : Duration.toMillis(options.delay),
          error: options?.error
        })
      )
  }

  get extend(): Delivery["extend"] {
    const { backend, leaseMillis } = this.#settle
    return (duration) =>
      backend.extend(this.#id, this.token, duration === undefined ? leaseMillis : Duration.toMillis(duration))
  }

  get release(): Delivery["release"] {
    const { backend, operation } = this.#settle
    return operation("QueueManager.release", this.#id, () => backend.release(this.#id, this.token))
  }
}

/** Builds the typed `QueueManager` on a backend's raw operations. */
export const make = (options: {
  readonly queueName: string
  readonly backend: QueueBackend
  readonly leaseDuration: Duration.DurationInput
}): QueueManagerService => {
  const { backend, queueName } = options
  const leaseMillis = Duration.toMillis(options.leaseDuration)
  const attributes = { "queue.name": queueName, "queue.backend": backend.kind }
  /** The backend's batched ack, or one ack after another where it has none. */
  const ackMany =
    backend.ackMany ??
    ((leases: ReadonlyArray<RawAck>) =>
      Effect.forEach(leases, ({ id, token }) =>
        backend.ack(id, token).pipe(
          Effect.as(true),
          Effect.catchTag("LeaseLost", () => Effect.succeed(false))
        )
      ))

  /**
   * The public operation `name`: `body` of the running fiber, in a span. A span costs more than a
   * memory-backend operation, so it is made only when a tracer that exports spans is installed
   * (Effect's default one keeps its spans to itself), and without a call-site stack trace.
   */
  const operation = <A, E>(
    name: string,
    taskId: string | undefined,
    body: (fiber: Fiber.RuntimeFiber<unknown, unknown>) => Effect.Effect<A, E>
  ): Effect.Effect<A, E> =>
    Effect.withFiberRuntime((fiber) =>
      fiber.currentTracer === nativeTracer
        ? body(fiber)
        : Effect.withSpan(
            Effect.withFiberRuntime((inner) => body(inner)),
            name,
            {
              attributes: taskId === undefined ? attributes : { ...attributes, "task.id": taskId },
              captureStackTrace: false
            }
          )
    )

  const settle: Settle = { backend, leaseMillis, operation }

  const offer = (
    tasks: Iterable<NewTask>,
    now: number
  ): Effect.Effect<ReadonlyArray<boolean>, QueueError | InvalidTask> => {
    const raw: Array<RawTask> = []
    for (const task of tasks) {
      const encoded = encodeTask(task, now)
      if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
      raw.push(encoded.right)
    }
    if (raw.length === 0) return Effect.succeed([])
    return backend.immediate === undefined ? backend.offer(raw) : Effect.succeed(backend.immediate.offer(raw))
  }

  /** How a claim takes leases and makes deliveries of them: plainly, or recording their starts. */
  interface Claimer<L extends RawLease, D> {
    readonly take: (
      max: number,
      timeout: Duration.Duration,
      now: number
    ) => Effect.Effect<ReadonlyArray<L>, QueueError>
    /** What `take` would get at `now` without waiting, where the backend can say at once (see `ImmediateOps`). */
    readonly takeNow?: ((max: number, now: number) => ReadonlyArray<L>) | undefined
    readonly deliver: (lease: L, message: TaskMessage) => D
    /** Dead-letters a lease whose body is malformed (no backend should hold one): the claim carries on. */
    readonly reject: (lease: L, reason: string, now: number) => Effect.Effect<void, QueueError>
  }

  const plain: Claimer<RawLease, Delivery> = {
    take: (max, timeout) => backend.claim(max, timeout),
    takeNow: backend.immediate?.claim,
    deliver: (lease, message) => new LeasedDelivery(message, lease, settle),
    reject: (lease, reason) =>
      backend
        .nack(lease.id, lease.token, { requeue: false, delayMillis: 0, error: reason })
        .pipe(Effect.catchTag("LeaseLost", () => Effect.void))
  }

  /**
   * Claims up to `max` tasks by `deadline`, again while every claimed body was malformed, and
   * answers `finish` of the deliveries.
   */
  const claim = <L extends RawLease, D, A>(
    claimer: Claimer<L, D>,
    max: number,
    deadline: number,
    now: number,
    finish: (deliveries: Array<D>) => A
  ): Effect.Effect<A, QueueError> => {
    const remaining = Math.max(0, deadline - now)
    // Taken at once where the backend can say (and then waited for only when there was nothing).
    const atOnce = claimer.takeNow?.(max, now)
    return atOnce !== undefined && (atOnce.length > 0 || remaining === 0)
      ? deliverAll(claimer, max, deadline, now, finish, atOnce)
      : Effect.flatMap(claimer.take(max, Duration.millis(remaining), now), (leases) =>
          deliverAll(claimer, max, deadline, now, finish, leases)
        )
  }

  /**
   * The deliveries of claimed leases, finished by `finish`: a malformed body is dead-lettered and
   * the claim made again (by `deadline`) when it left nothing else.
   */
  const deliverAll = <L extends RawLease, D, A>(
    claimer: Claimer<L, D>,
    max: number,
    deadline: number,
    now: number,
    finish: (deliveries: Array<D>) => A,
    leases: ReadonlyArray<L>
  ): Effect.Effect<A, QueueError> => {
    const remaining = Math.max(0, deadline - now)
    const out: Array<D> = []
    const malformed: Array<Effect.Effect<void, QueueError>> = []
    for (const lease of leases) {
      const message = decodeLease(lease)
      if (Either.isRight(message)) out.push(claimer.deliver(lease, message.right))
      else {
        malformed.push(
          Effect.zipRight(
            Effect.logWarning("dead-lettering a malformed message").pipe(
              Effect.annotateLogs({ taskId: lease.id, reason: message.left })
            ),
            claimer.reject(lease, message.left, now)
          )
        )
      }
    }
    if (malformed.length === 0) return Effect.succeed(finish(out))
    return Effect.zipRight(
      Effect.all(malformed, { discard: true }),
      out.length > 0 || remaining === 0
        ? Effect.succeed(finish(out))
        : Effect.withFiberRuntime<A, QueueError>((fiber) =>
            claim(claimer, max, deadline, clockMillis(fiber), finish)
          )
    )
  }

  // The timeout of the last pull, decoded once: a pull loop passes the same one every time, and
  // decoding a string such as "1 second" each time is a measurable part of a pull.
  let lastTimeout: Duration.DurationInput = defaultTimeout
  let lastTimeoutMillis = Duration.toMillis(defaultTimeout)
  const timeoutMillis = (timeout: Duration.DurationInput) => {
    if (timeout !== lastTimeout) {
      lastTimeoutMillis = Duration.toMillis(timeout)
      lastTimeout = timeout
    }
    return lastTimeoutMillis
  }

  const claimFor = <L extends RawLease, D, A>(
    claimer: Claimer<L, D>,
    max: number,
    timeout: Duration.DurationInput,
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    finish: (deliveries: Array<D>) => A
  ) => {
    const now = clockMillis(fiber)
    return claim(claimer, Math.max(1, Math.floor(max)), now + timeoutMillis(timeout), now, finish)
  }

  /** The queue's claims and settlements with the records of `records` written by the same calls, where the backend can. */
  const recording = (records: SharedRecords): RecordingQueue | undefined => {
    const raw = backend.recording?.(records)
    if (raw === undefined) return undefined
    const recorder: Claimer<RawStartedLease, StartedDelivery> = {
      take: raw.claim,
      deliver: (lease, message) => ({
        delivery: new LeasedDelivery(message, lease, settle),
        start: lease.start
      }),
      reject: (lease, reason, now) =>
        Effect.asVoid(
          raw.settle([{ id: lease.id, token: lease.token, status: "FAILED", error: reason }], now)
        )
    }
    return {
      pullBatch: (max, timeout = defaultTimeout) =>
        operation("QueueManager.pullBatch", undefined, (fiber) =>
          claimFor(recorder, max, timeout, fiber, identity)
        ),
      settleAll: (endings) =>
        endings.length === 0
          ? Effect.succeed([])
          : operation("QueueManager.settleAll", undefined, (fiber) =>
              raw.settle(
                endings.map(({ delivery, outcome }) =>
                  outcome.status === "COMPLETED"
                    ? {
                        id: delivery.message.taskId,
                        token: delivery.token,
                        status: "COMPLETED",
                        result: JSON.stringify(outcome.result)
                      }
                    : {
                        id: delivery.message.taskId,
                        token: delivery.token,
                        status: "FAILED",
                        error: outcome.error
                      }
                ),
                clockMillis(fiber)
              )
            )
    }
  }

  return {
    queueName,
    backend: backend.kind,
    push: (taskId, data, priority) =>
      operation("QueueManager.push", taskId, (fiber) =>
        Effect.map(offer([{ taskId, data, priority }], clockMillis(fiber)), (accepted) => accepted[0]!)
      ),
    pushBatch: (tasks) =>
      operation("QueueManager.pushBatch", undefined, (fiber) => offer(tasks, clockMillis(fiber))),
    pull: (timeout = defaultTimeout) =>
      operation("QueueManager.pull", undefined, (fiber) => claimFor(plain, 1, timeout, fiber, firstDelivery)),
    pullBatch: (max, timeout = defaultTimeout) =>
      operation("QueueManager.pullBatch", undefined, (fiber) =>
        claimFor(plain, max, timeout, fiber, identity)
      ),
    recording,
    ackAll: (deliveries) =>
      deliveries.length === 0
        ? Effect.succeed([])
        : operation("QueueManager.ackAll", undefined, () =>
            ackMany(deliveries.map((delivery) => ({ id: delivery.message.taskId, token: delivery.token })))
          ),
    length: operation("QueueManager.length", undefined, () =>
      Effect.map(backend.stats, (s) => s.pending + s.delayed)
    ),
    clear: operation("QueueManager.clear", undefined, () => backend.clear),
    stats: operation("QueueManager.stats", undefined, () => backend.stats),
    deadLetters: (limit = 100) =>
      operation("QueueManager.deadLetters", undefined, () =>
        Effect.map(backend.deadLetters(limit), (letters) =>
          letters.map(
            (raw): DeadLetter => ({
              taskId: raw.id,
              message: Option.getRight(
                decodeLease({ id: raw.id, body: raw.body, attempt: Math.max(1, raw.attempts), token: "" })
              ),
              attempts: raw.attempts,
              error: raw.error,
              deadAt: raw.deadAt
            })
          )
        )
      ),
    retryDead: (taskId) => operation("QueueManager.retryDead", taskId, () => backend.retryDead(taskId))
  }
}

/** The `Config` behind {@link QueueManager.layerConfig}. */
export const queueConfig: Config.Config<QueueOptions> = Config.all({
  backend: Config.literal(
    "memory",
    "redis",
    "rabbitmq"
  )("QUEUE_BACKEND").pipe(Config.withDefault("memory" as const), Config.withDescription("the queue backend")),
  queueName: Config.string("QUEUE_NAME").pipe(Config.withDefault(defaults.queueName)),
  redisUrl: Config.redacted("REDIS_URL").pipe(Config.withDefault(Redacted.make(defaults.redisUrl))),
  rabbitmqUrl: Config.redacted("RABBITMQ_URL").pipe(Config.withDefault(Redacted.make(defaults.rabbitmqUrl))),
  leaseDuration: Config.duration("LEASE_DURATION").pipe(Config.withDefault(defaults.leaseDuration))
})

/**
 * The queue service. Provide it with `QueueManager.layer({ backend })`, `QueueManager.layerConfig`
 * or a backend module's own `layer` (`layers/MemoryQueue.ts`, `layers/RedisQueue.ts`, ...).
 */
export class QueueManager extends Context.Tag("effect-task-queue/QueueManager")<
  QueueManager,
  QueueManagerService
>() {
  /** The queue on the chosen backend; only that backend's module (and driver) is loaded. */
  static layer = (options: QueueOptions): Layer.Layer<QueueManager, QueueError> => {
    const common = {
      queueName: options.queueName ?? defaults.queueName,
      leaseDuration: options.leaseDuration ?? defaults.leaseDuration
    }
    const load = <A>(module: () => Promise<A>) =>
      Effect.tryPromise({
        try: module,
        catch: (cause) => new QueueError({ message: `cannot load the ${options.backend} backend`, cause })
      })
    switch (options.backend) {
      case "memory":
        return Layer.unwrapEffect(
          Effect.map(
            load(() => import("../layers/MemoryQueue.js")),
            (m) => m.layer(common)
          )
        )
      case "redis":
        return Layer.unwrapEffect(
          Effect.map(
            load(() => import("../layers/RedisQueue.js")),
            (m) => m.layer({ ...common, redisUrl: options.redisUrl ?? defaults.redisUrl })
          )
        )
      case "rabbitmq":
        return Layer.unwrapEffect(
          Effect.map(
            load(() => import("../layers/RabbitMqQueue.js")),
            (m) => m.layer({ ...common, rabbitmqUrl: options.rabbitmqUrl ?? defaults.rabbitmqUrl })
          )
        )
    }
  }

  /**
   * The queue configured from the environment: `QUEUE_BACKEND` (memory | redis | rabbitmq, default
   * memory), `QUEUE_NAME`, `REDIS_URL`, `RABBITMQ_URL`, `LEASE_DURATION` (e.g. "30 seconds").
   */
  static layerConfig: Layer.Layer<QueueManager, QueueError | ConfigError.ConfigError> = Layer.unwrapEffect(
    Effect.map(queueConfig, QueueManager.layer)
  )
}

/**
 * The small, untyped store interface every backend implements. The typed `QueueManager` front
 * (validation, encoding, decoding, malformed-message handling) sits on top of it, once, for all
 * backends; a backend only moves opaque bodies between pending, in-flight, delayed and dead.
 *
 * @since 0.1.0
 */
import type { Duration, Effect } from "effect"
import type { LeaseLost, QueueError } from "./Errors.js"
import type { SharedRecords, StartResult } from "./TaskStore.js"

/** A task ready to be offered: its id, priority (already validated) and encoded body. */
export interface RawTask {
  readonly id: string
  readonly priority: number
  readonly body: string
}

/** A claimed task: its body, the attempt this delivery is (1 for the first) and the lease token. */
export interface RawLease {
  readonly id: string
  readonly body: string
  readonly attempt: number
  readonly token: string
}

/** A claimed task whose start the backend recorded in a task store's records (see {@link RawRecording}). */
export interface RawStartedLease extends RawLease {
  /** What `TaskStore.startMany` would have answered for it. */
  readonly start: StartResult
}

/** A lease's end for {@link RawRecording.settle}: COMPLETED (acked, `result` as JSON) or FAILED (dead-lettered). */
export type RawEnding =
  | { readonly id: string; readonly token: string; readonly status: "COMPLETED"; readonly result: string }
  | { readonly id: string; readonly token: string; readonly status: "FAILED"; readonly error: string }

/**
 * Claims and settlements that also write a task store's records, for a store the backend shares
 * a server with (see `SharedRecords`). `now` (epoch ms, the caller's clock) stamps the records.
 */
export interface RawRecording {
  /** `claim`, each lease's start recorded as `TaskStore.startMany` records it. */
  readonly claim: (
    max: number,
    timeout: Duration.Duration,
    now: number
  ) => Effect.Effect<ReadonlyArray<RawStartedLease>, QueueError>
  /**
   * Per ending: its outcome recorded as `TaskStore.finishMany` records it (fenced by the token;
   * `discarded` when it no longer holds the record), then the lease acked (COMPLETED) or
   * dead-lettered with the error (FAILED): `settled`, or `expired` when the lease no longer held.
   */
  readonly settle: (
    endings: ReadonlyArray<RawEnding>,
    now: number
  ) => Effect.Effect<ReadonlyArray<"settled" | "discarded" | "expired">, QueueError>
}

/** A lease to ack: the task's id and the holder's token. */
export interface RawAck {
  readonly id: string
  readonly token: string
}

/** A dead-lettered task as stored: its body, the last error and when it died (epoch ms). */
export interface RawDeadLetter {
  readonly id: string
  readonly body: string
  readonly attempts: number
  readonly error: string
  readonly deadAt: number
}

/** Counts of a queue's tasks by state. */
export interface QueueStats {
  /** Ready to be pulled now. */
  readonly pending: number
  /** Pulled and leased, not yet acked or nacked. */
  readonly inFlight: number
  /** Nacked with a delay, waiting for their time. */
  readonly delayed: number
  /** Dead-lettered. */
  readonly dead: number
}

/** How a holder gives a task back. */
export interface RawNack {
  /** `true`: back to pending (after `delayMillis`); `false`: dead-lettered with `error`. */
  readonly requeue: boolean
  readonly delayMillis: number
  readonly error: string | undefined
}

/**
 * The operations a backend completes at once, in memory (the memory backend): `QueueManager` runs
 * them in its own step of the fiber, without effects of their own, where it would otherwise run
 * their effectful counterparts. Each answers as its counterpart would.
 */
export interface ImmediateOps {
  /** `QueueBackend.offer`. */
  readonly offer: (tasks: ReadonlyArray<RawTask>) => ReadonlyArray<boolean>
  /** What `QueueBackend.claim` would hand out at `now` without waiting: maybe nothing. */
  readonly claim: (max: number, now: number) => ReadonlyArray<RawLease>
  /** `QueueBackend.ack` at `now`: `undefined` when acked, else why not. */
  readonly ack: (id: string, token: string, now: number) => LeaseLost | undefined
}

/**
 * The raw operations of one queue on one backend.
 *
 * Semantics every backend holds: `offer` skips ids already pending, delayed or in flight (their
 * boolean is `false`) and replaces a dead letter of the same id; `claim` hands out the most
 * urgent pending tasks (priority, then offer order), each leased with a fresh token, waiting up
 * to `timeout` for one; an expired lease puts its task back to pending; `ack`, `nack` and
 * `extend` fail with `LeaseLost` when the token no longer holds the task.
 */
export interface QueueBackend {
  /** The backend's name, for logs and spans. */
  readonly kind: "memory" | "redis" | "rabbitmq"
  /** Operations it completes at once, which `QueueManager` then runs without their effects; optional. */
  readonly immediate?: ImmediateOps | undefined
  readonly offer: (tasks: ReadonlyArray<RawTask>) => Effect.Effect<ReadonlyArray<boolean>, QueueError>
  readonly claim: (
    max: number,
    timeout: Duration.Duration
  ) => Effect.Effect<ReadonlyArray<RawLease>, QueueError>
  readonly ack: (id: string, token: string) => Effect.Effect<void, QueueError | LeaseLost>
  /**
   * Acks several leases in one round trip: `true` each one acked, `false` where the token no
   * longer held. Optional: without it, `QueueManager.ackAll` acks one after another.
   */
  readonly ackMany?:
    | ((leases: ReadonlyArray<RawAck>) => Effect.Effect<ReadonlyArray<boolean>, QueueError>)
    | undefined
  /** Claims and settlements that also write `records`, when this backend can write them; optional. */
  readonly recording?: ((records: SharedRecords) => RawRecording | undefined) | undefined
  readonly nack: (id: string, token: string, options: RawNack) => Effect.Effect<void, QueueError | LeaseLost>
  /**
   * Gives back a task its holder never ran: back to pending, this attempt not counted (Redis and
   * memory: at the place it was claimed from; RabbitMQ: at the back of its priority).
   */
  readonly release: (id: string, token: string) => Effect.Effect<void, QueueError | LeaseLost>
  readonly extend: (
    id: string,
    token: string,
    leaseMillis: number
  ) => Effect.Effect<void, QueueError | LeaseLost>
  readonly stats: Effect.Effect<QueueStats, QueueError>
  /** Removes pending and delayed tasks; returns how many. */
  readonly clear: Effect.Effect<number, QueueError>
  /** The oldest `limit` dead letters, oldest first. */
  readonly deadLetters: (limit: number) => Effect.Effect<ReadonlyArray<RawDeadLetter>, QueueError>
  /** Moves a dead letter back to pending with its attempts reset; `false` when there is none. */
  readonly retryDead: (id: string) => Effect.Effect<boolean, QueueError>
}

/**
 * The small, untyped store interface every backend implements. The typed `QueueManager` front
 * (validation, encoding, decoding, malformed-message handling) sits on top of it, once, for all
 * backends; a backend only moves opaque bodies between pending, in-flight, delayed and dead.
 *
 * @since 0.1.0
 */
import type { Duration, Effect } from "effect"
import type { LeaseLost, QueueError } from "./Errors.js"

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

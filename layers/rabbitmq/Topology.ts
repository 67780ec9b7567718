/**
 * The RabbitMQ objects of one queue and the headers its messages carry. Every declaration here is
 * a pure function of the queue name (and delay bucket), so any process declares exactly the same
 * arguments and a redeclaration never fails with `PRECONDITION_FAILED`.
 *
 * - `<q>`: durable classic queue, `x-max-priority: 10`; what the broker itself dead-letters goes
 *   to `<q>.dead` through the default exchange.
 * - `<q>.dead`: durable queue of dead letters, oldest first.
 * - `<q>.delay.<b>`: one durable queue per delay bucket `b`, powers of two from 256 ms to 2^31 ms
 *   (24 queues). A delayed message carries its own `expiration` (the exact delay) and, once
 *   expired, the broker dead-letters it back into `<q>` with its priority and headers. A bucket
 *   holds delays in `(b / 2, b]` (the first one everything up to 256 ms); the broker expires
 *   messages only at the head of a queue, so a message behind an older, longer one of its bucket
 *   is late by less than `b / 2` (and never early).
 *
 * The buckets are a fixed set declared with the rest, not one queue per distinct delay that would
 * vanish when unused (`x-expires`): so any process can count and purge every delayed task
 * (`stats`, `clear`) with declarations that cannot fail, without knowing which delays others used,
 * and no queue can expire while it still holds messages.
 *
 * @since 0.1.0
 */

/** The priority ceiling declared on the queue; task priorities map onto it one to one. */
export const maxPriority = 10

/** The smallest delay bucket, in milliseconds. */
export const minDelayBucket = 2 ** 8

/** The largest delay bucket, in milliseconds. */
export const maxDelayBucket = 2 ** 31

/** The longest delay a nack may ask for on RabbitMQ (about 24.8 days). */
export const maxDelayMillis = maxDelayBucket

/** Every delay bucket, shortest first. */
export const delayBuckets: ReadonlyArray<number> = Array.from(
  { length: Math.log2(maxDelayBucket) - Math.log2(minDelayBucket) + 1 },
  (_, i) => minDelayBucket * 2 ** i
)

/** The bucket of a delay: the smallest power of two at least as long (and at least 256 ms). */
export const bucketFor = (delayMillis: number): number => {
  const bucket = 2 ** Math.ceil(Math.log2(Math.max(1, delayMillis)))
  return Math.min(maxDelayBucket, Math.max(minDelayBucket, bucket))
}

/** The names of a queue's RabbitMQ objects. */
export interface Names {
  readonly main: string
  readonly dead: string
  readonly delay: (bucket: number) => string
}

/** The names of the objects of queue `queueName`. */
export const names = (queueName: string): Names => ({
  main: queueName,
  dead: `${queueName}.dead`,
  delay: (bucket) => `${queueName}.delay.${bucket}`
})

/** Every queue the backend declares for `queueName` (for operations and tests that remove them). */
export const allQueues = (queueName: string): ReadonlyArray<string> => {
  const n = names(queueName)
  return [n.main, n.dead, ...delayBuckets.map(n.delay)]
}

/** `assertQueue` options of the main queue. */
export const mainQueueOptions = (queueName: string) => ({
  durable: true,
  arguments: {
    "x-max-priority": maxPriority,
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": names(queueName).dead
  }
})

/** `assertQueue` options of the dead-letter queue. */
export const deadQueueOptions = { durable: true } as const

/** `assertQueue` options of one delay bucket queue. */
export const delayQueueOptions = (queueName: string) => ({
  durable: true,
  arguments: {
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": names(queueName).main
  }
})

/** The message headers the backend reads and writes. */
export const header = {
  /** The task id, when it is too long for `messageId` (over 255 bytes of UTF-8). */
  taskId: "x-task-id",
  /** Attempts already made before this copy of the message (absent: 0). */
  attempt: "x-attempt",
  /** On a dead letter: the last error. */
  error: "x-error",
  /** On a dead letter: the attempts made. */
  attempts: "x-attempts",
  /** On a dead letter: when it died, epoch milliseconds. */
  deadAt: "x-dead-at",
  /** On a delayed copy: the delay asked for, in milliseconds (informational). */
  delay: "x-delay-ms"
} as const

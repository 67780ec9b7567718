/**
 * Our `QueueManager` under measurement: opening it on a backend (or saying the backend is not
 * available yet), pre-pushing tasks, timing an effect.
 *
 * @since 0.1.0
 */
import { existsSync } from "node:fs"
import { Context, Effect, Layer, type Scope } from "effect"
import { QueueManager, type QueueManagerService } from "../../src/QueueManager.js"
import {
  BenchError,
  type Job,
  NotAvailable,
  now,
  type Payload,
  priorityOf,
  type Sample,
  startStopwatch,
  timedSection
} from "./Measurement.js"

/** Our backends. */
export type OurBackend = "memory" | "redis" | "rabbitmq"

/** Where our sources live, to tell "not written yet" from "broken". */
const sourceExists = (relative: string) => existsSync(new URL(`../../${relative}`, import.meta.url))

/** The module each backend needs, relative to the repository root. */
const backendModule: Record<OurBackend, string> = {
  memory: "layers/MemoryQueue.ts",
  redis: "layers/RedisQueue.ts",
  rabbitmq: "layers/RabbitMqQueue.ts"
}

/** Fails with `NotAvailable` when the backend's module has not landed yet. */
export const requireModule = (relative: string, what: string) =>
  sourceExists(relative)
    ? Effect.void
    : Effect.fail(new NotAvailable({ message: `${what} is not available: ${relative} does not exist yet` }))

/** A `QueueManager` on the backend, held by the scope. */
export const openQueue = (
  backend: OurBackend,
  job: Job
): Effect.Effect<QueueManagerService, BenchError | NotAvailable, Scope.Scope> =>
  Effect.zipRight(
    requireModule(backendModule[backend], `the ${backend} backend`),
    Layer.build(
      QueueManager.layer({
        backend,
        queueName: job.queueName,
        redisUrl: job.settings.redisUrl,
        rabbitmqUrl: job.settings.rabbitmqUrl
      })
    ).pipe(
      Effect.map(Context.get(QueueManager)),
      Effect.mapError((error) =>
        /not available|cannot load/.test(error.message)
          ? new NotAvailable({ message: `the ${backend} backend: ${error.message}` })
          : new BenchError({ message: `cannot open the ${backend} queue: ${error.message}`, cause: error })
      )
    )
  )

export const failed = (what: string) => (error: { readonly message: string }) =>
  new BenchError({ message: `${what}: ${error.message}`, cause: error })

/** The payload of task `i`. */
export const payload = (i: number, sentAt = now()): Payload => ({ i, sentAt })

/** `0..n-1`. */
export const indices = (n: number) => Array.from({ length: n }, (_, i) => i)

/** Times `self`, which handles `count` tasks. */
export const timed = <E, R>(count: number, self: Effect.Effect<unknown, E, R>): Effect.Effect<Sample, E, R> =>
  Effect.suspend(() => {
    const stopwatch = startStopwatch()
    return Effect.as(self, undefined).pipe(
      Effect.ensuring(Effect.sync(() => timedSection.end())),
      Effect.map(() => stopwatch.stop(count))
    )
  })

/** Pushes tasks `0..n-1` in batches of `batch`, one batch in flight. */
export const pushAll = (queue: QueueManagerService, n: number, batch: number) =>
  Effect.forEach(
    indices(Math.ceil(n / batch)),
    (b) =>
      queue.pushBatch(
        indices(Math.min(batch, n - b * batch)).map((k) => {
          const i = b * batch + k
          return { taskId: `t${i}`, data: payload(i), priority: priorityOf(i) }
        })
      ),
    { discard: true }
  ).pipe(Effect.mapError(failed("pushBatch failed")))

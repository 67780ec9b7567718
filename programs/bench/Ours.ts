/**
 * Our backends, measured through the public services only: `QueueManager` (push, pushBatch,
 * pull, ack) for the queue-level scenarios and `TaskWorker` (with its `TaskStore` and a no-op
 * `Pipeline`) for the worker scenarios. Producer and worker each get their own `QueueManager`
 * (their own connections), as two processes would; on the memory backend they share the one
 * in-process queue.
 *
 * @since 0.1.0
 */
import { Cause, Deferred, Effect, Option } from "effect"
import {
  BenchError,
  type Job,
  type NotAvailable,
  priorityOf,
  type Sample,
  withPeakRss
} from "./Measurement.js"
import { failed, indices, type OurBackend, openQueue, payload, pushAll, timed } from "./OurQueue.js"
import * as OurWorker from "./OurWorker.js"
import * as Probe from "./RedisProbe.js"

/** Removes whatever a measurement left on its backend. */
const cleanUp = (backend: OurBackend, job: Job) => {
  switch (backend) {
    case "memory":
      return Effect.void
    case "redis":
      return Effect.scoped(
        Effect.flatMap(Probe.connect(job.settings.redisUrl), (redis) =>
          Probe.deleteKeysContaining(redis, job.queueName)
        )
      ).pipe(Effect.ignore)
    case "rabbitmq":
      return OurWorker.deleteRabbitQueues(job)
  }
}

/** Runs one measurement of one of our backends. */
export const run = (backend: OurBackend, job: Job): Effect.Effect<Sample, BenchError | NotAvailable> =>
  Effect.scoped(
    Effect.gen(function* () {
      const { n } = job.settings
      const { concurrency } = job.scenario
      yield* Effect.addFinalizer(() => cleanUp(backend, job))
      const producer = yield* openQueue(backend, job)

      switch (job.scenario.kind) {
        case "push": {
          // `concurrency` long-lived lanes taking the next index, as the peers' promise pool does.
          let next = 0
          const lane = Effect.gen(function* () {
            while (next < n) {
              const i = next++
              yield* producer.push(`t${i}`, payload(i), priorityOf(i))
            }
          })
          return yield* timed(
            n,
            Effect.forEach(indices(concurrency), () => lane, { concurrency: "unbounded", discard: true })
          ).pipe(Effect.mapError(failed("push failed")))
        }
        case "batch": {
          if (backend !== "redis") return yield* timed(n, pushAll(producer, n, concurrency))
          const redis = yield* Probe.connect(job.settings.redisUrl)
          const before = yield* Probe.usedMemory(redis)
          const sample = yield* timed(n, pushAll(producer, n, concurrency))
          return { ...sample, ...(yield* Probe.memoryPerTask(redis, job.queueName, before, n)) }
        }
        case "queue": {
          yield* pushAll(producer, n, 100)
          const consumer = backend === "memory" ? producer : yield* openQueue(backend, job)
          const done = yield* Deferred.make<void>()
          let acked = 0
          const puller = Effect.gen(function* () {
            for (;;) {
              const delivery = yield* consumer.pull("1 second")
              if (Option.isNone(delivery)) continue
              yield* delivery.value.ack
              if (++acked === n) yield* Deferred.succeed(done, undefined)
            }
          })
          return yield* withPeakRss(
            timed(
              n,
              Effect.raceFirst(
                Deferred.await(done),
                Effect.forEach(indices(concurrency), () => puller, {
                  concurrency: "unbounded",
                  discard: true
                })
              )
            ).pipe(Effect.mapError(failed("pull or ack failed")))
          )
        }
        case "cycle": {
          const consumer = backend === "memory" ? producer : yield* openQueue(backend, job)
          let next = 0
          const cycler = Effect.gen(function* () {
            while (next < n) {
              const i = next++
              yield* producer.push(`t${i}`, payload(i), priorityOf(i))
              for (;;) {
                const delivery = yield* consumer.pull("1 second")
                if (Option.isSome(delivery)) {
                  yield* delivery.value.ack
                  break
                }
              }
            }
          })
          return yield* timed(
            n,
            Effect.forEach(indices(concurrency), () => cycler, { concurrency: "unbounded", discard: true })
          ).pipe(Effect.mapError(failed("push, pull or ack failed")))
        }
        case "worker":
          return yield* OurWorker.drain(backend, job, producer)
        case "latency":
          return yield* OurWorker.latency(backend, job, producer)
      }
    })
  ).pipe(
    Effect.catchAllDefect((defect) =>
      Effect.fail(new BenchError({ message: `defect: ${Cause.pretty(Cause.die(defect))}`, cause: defect }))
    )
  )

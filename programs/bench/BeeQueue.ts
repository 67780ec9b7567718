/**
 * bee-queue 2 on the same Redis: `createJob().save()` / `saveAll`, `process(concurrency)` with a
 * no-op handler. bee-queue has no priorities (a plain list), so it pays less per task than a
 * priority queue. The producer is `isWorker: false, getEvents: false` (no event subscription, as
 * bee-queue recommends for producers); the worker keeps its defaults (succeeded jobs are kept,
 * events are published).
 *
 * @since 0.1.0
 */
import BeeQueue from "bee-queue"
import { Effect } from "effect"
import { connectionOf } from "./BullMq.js"
import {
  BenchError,
  type Job,
  now,
  type Payload,
  promisePool,
  type Sample,
  signal,
  steadyLatency,
  timePromise,
  withPeakRss
} from "./Measurement.js"
import * as Probe from "./RedisProbe.js"

const failed = (cause: unknown) => new BenchError({ message: "bee-queue failed", cause })

/** Runs one measurement of bee-queue. */
export const run = (spec: Job): Effect.Effect<Sample, BenchError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const { n, redisUrl } = spec.settings
      const { concurrency } = spec.scenario
      const { username: _, ...redis } = connectionOf(redisUrl)
      const probe = yield* Probe.connect(redisUrl)
      yield* Effect.addFinalizer(() => Effect.ignore(Probe.deleteKeysContaining(probe, spec.queueName)))
      const open = (settings: BeeQueue.QueueSettings) =>
        Effect.acquireRelease(
          Effect.tryPromise({
            try: async () => {
              const queue = new BeeQueue<Payload>(spec.queueName, { redis, ...settings })
              queue.on("error", () => {})
              await queue.ready()
              return queue
            },
            catch: failed
          }),
          (queue) => Effect.promise(() => queue.close(5_000).catch(() => undefined))
        )
      const producer = yield* open({ isWorker: false, getEvents: false })
      const timed = (f: () => Promise<unknown>) =>
        Effect.tryPromise({ try: () => timePromise(n, f), catch: failed })
      const saveAll = (batch: number) => async () => {
        for (let i = 0; i < n; i += batch) {
          const errors = await producer.saveAll(
            Array.from({ length: Math.min(batch, n - i) }, (_, k) =>
              producer.createJob({ i: i + k, sentAt: now() })
            )
          )
          if (errors.size > 0) throw [...errors.values()][0]
        }
      }

      switch (spec.scenario.kind) {
        case "push":
          return yield* timed(() =>
            promisePool(n, concurrency, (i) => producer.createJob({ i, sentAt: now() }).save())
          )
        case "batch": {
          const before = yield* Probe.usedMemory(probe)
          const sample = yield* timed(saveAll(concurrency))
          return { ...sample, ...(yield* Probe.memoryPerTask(probe, spec.queueName, before, n)) }
        }
        case "worker": {
          yield* Effect.tryPromise({ try: saveAll(100), catch: failed })
          const worker = yield* open({ getEvents: false })
          const done = signal()
          let succeeded = 0
          worker.on("succeeded", () => {
            if (++succeeded === n) done.resolve()
          })
          return yield* withPeakRss(
            timed(() => {
              worker.process(concurrency, async () => {})
              return done.promise
            })
          )
        }
        case "latency": {
          const worker = yield* open({ getEvents: false })
          let handler: (payload: Payload) => void = () => {}
          worker.process(concurrency, async (job) => {
            handler(job.data)
          })
          return yield* Effect.tryPromise({
            try: () =>
              steadyLatency({
                rate: spec.settings.rate,
                durationSeconds: spec.settings.durationSeconds,
                push: (i, sentAt) => producer.createJob({ i, sentAt }).save(),
                onStart: (h) => {
                  handler = h
                }
              }),
            catch: failed
          })
        }
        default:
          return yield* new BenchError({ message: `bee-queue does not run ${spec.scenario.kind}` })
      }
    })
  )

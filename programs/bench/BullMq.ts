/**
 * BullMQ 6 on the same Redis, as its users run it: `Queue.add` / `addBulk`, a `Worker` with a
 * no-op processor. Every job carries a priority (1..11, from the same 0..10 levels as ours), so
 * BullMQ pays for a priority queue as we do; job ids are BullMQ's own, completed jobs are kept
 * (its defaults).
 *
 * @since 0.1.0
 */
import { Queue, Worker } from "bullmq"
import { Effect } from "effect"
import {
  BenchError,
  type Job,
  now,
  type Payload,
  priorityOf,
  promisePool,
  type Sample,
  signal,
  steadyLatency,
  timePromise,
  withPeakRss
} from "./Measurement.js"
import * as Probe from "./RedisProbe.js"

/** ioredis options from a `redis://` URL, as BullMQ takes them. */
export const connectionOf = (url: string) => {
  const parsed = new URL(url)
  return {
    host: parsed.hostname,
    port: Number(parsed.port || 6379),
    ...(parsed.password === "" ? {} : { password: decodeURIComponent(parsed.password) }),
    ...(parsed.username === "" ? {} : { username: decodeURIComponent(parsed.username) }),
    db: Number(parsed.pathname.slice(1) || 0)
  }
}

const failed = (cause: unknown) => new BenchError({ message: "BullMQ failed", cause })

const job = (i: number, sentAt = now()) => ({
  name: "noop",
  data: { i, sentAt } satisfies Payload,
  // BullMQ: 1 is the most urgent; ours: 10 is.
  opts: { priority: 11 - priorityOf(i) }
})

/** Runs one measurement of BullMQ. */
export const run = (spec: Job): Effect.Effect<Sample, BenchError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const { n, redisUrl } = spec.settings
      const { concurrency } = spec.scenario
      const connection = connectionOf(redisUrl)
      const probe = yield* Probe.connect(redisUrl)
      yield* Effect.addFinalizer(() => Effect.ignore(Probe.deleteKeysContaining(probe, spec.queueName)))
      const queue = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const queue = new Queue(spec.queueName, { connection })
            queue.on("error", () => {})
            await queue.waitUntilReady()
            return queue
          },
          catch: failed
        }),
        (queue) =>
          Effect.promise(() =>
            queue
              .obliterate({ force: true })
              .catch(() => undefined)
              .then(() => queue.close())
          )
      )
      const makeWorker = (processor: (data: Payload) => void, autorun: boolean) =>
        Effect.acquireRelease(
          Effect.tryPromise({
            try: async () => {
              const worker = new Worker<Payload>(
                spec.queueName,
                async (j) => {
                  processor(j.data)
                },
                { connection, concurrency, autorun }
              )
              worker.on("error", () => {})
              await worker.waitUntilReady()
              return worker
            },
            catch: failed
          }),
          (worker) => Effect.promise(() => worker.close())
        )
      const timed = (f: () => Promise<unknown>) =>
        Effect.tryPromise({ try: () => timePromise(n, f), catch: failed })
      const addAll = (batch: number) => async () => {
        for (let i = 0; i < n; i += batch) {
          await queue.addBulk(Array.from({ length: Math.min(batch, n - i) }, (_, k) => job(i + k)))
        }
      }

      switch (spec.scenario.kind) {
        case "push":
          return yield* timed(() =>
            promisePool(n, concurrency, (i) => {
              const { name, data, opts } = job(i)
              return queue.add(name, data, opts)
            })
          )
        case "batch": {
          const before = yield* Probe.usedMemory(probe)
          const sample = yield* timed(addAll(concurrency))
          return { ...sample, ...(yield* Probe.memoryPerTask(probe, spec.queueName, before, n)) }
        }
        case "worker": {
          yield* Effect.tryPromise({ try: addAll(100), catch: failed })
          const done = signal()
          let completed = 0
          const worker = yield* makeWorker(() => {}, false)
          worker.on("completed", () => {
            if (++completed === n) done.resolve()
          })
          return yield* withPeakRss(
            timed(() => {
              void worker.run().catch(() => undefined)
              return done.promise
            })
          )
        }
        case "latency": {
          let handler: (payload: Payload) => void = () => {}
          yield* makeWorker((payload) => handler(payload), true)
          return yield* Effect.tryPromise({
            try: () =>
              steadyLatency({
                rate: spec.settings.rate,
                durationSeconds: spec.settings.durationSeconds,
                push: (i, sentAt) => {
                  const { name, data, opts } = job(i, sentAt)
                  return queue.add(name, data, opts)
                },
                onStart: (h) => {
                  handler = h
                }
              }),
            catch: failed
          })
        }
        default:
          return yield* new BenchError({ message: `BullMQ does not run ${spec.scenario.kind}` })
      }
    })
  )

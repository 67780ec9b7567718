/**
 * The cost floor of an at-least-once queue on Redis: three bare Lua scripts on ioredis, nothing
 * else. A push script (HSETNX body + INCR sequence + ZADD pending with the same score layout as
 * ours, and a wake-up marker), a claim script (ZPOPMIN pending + ZADD lease with a deadline +
 * HGET body) and an ack script (ZREM lease + HDEL body). No lease tokens, no attempts, no
 * reaping of expired leases, no status records: what any at-least-once Redis queue must at
 * least do, so our figures can be read as a fraction of it.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import type { Redis } from "ioredis"
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

const pushLua = `
-- KEYS: pending, body, seq, marker. ARGV: id, priority, body per task.
local out = {}
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('ZADD', KEYS[1], (10 - tonumber(ARGV[i + 1])) * 1099511627776 + redis.call('INCR', KEYS[3]), ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
redis.call('ZADD', KEYS[4], 0, 'w')
return out
`

const claimLua = `
-- KEYS: pending, lease, body. ARGV: lease deadline (ms).
local top = redis.call('ZPOPMIN', KEYS[1])
if #top == 0 then return false end
redis.call('ZADD', KEYS[2], ARGV[1], top[1])
return { top[1], redis.call('HGET', KEYS[3], top[1]) }
`

const ackLua = `
-- KEYS: lease, body. ARGV: id.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
`

const leaseMillis = 30_000

interface Floor {
  readonly push: (
    tasks: ReadonlyArray<readonly [id: string, priority: number, body: string]>
  ) => Promise<unknown>
  readonly claim: () => Promise<[string, string] | null>
  readonly ack: (id: string) => Promise<unknown>
  readonly marker: string
}

const load = (redis: Redis, queue: string) =>
  Effect.tryPromise({
    try: async (): Promise<Floor> => {
      const key = (name: string) => `{${queue}}:${name}`
      const [push, claim, ack] = (await Promise.all(
        [pushLua, claimLua, ackLua].map((lua) => redis.script("LOAD", lua))
      )) as Array<string>
      const pending = key("pending")
      const lease = key("lease")
      const body = key("body")
      const seq = key("seq")
      const marker = key("marker")
      return {
        push: (tasks) => redis.evalsha(push!, 4, pending, body, seq, marker, ...tasks.flat()),
        claim: () =>
          redis.evalsha(claim!, 3, pending, lease, body, Date.now() + leaseMillis) as Promise<
            [string, string] | null
          >,
        ack: (id) => redis.evalsha(ack!, 2, lease, body, id),
        marker
      }
    },
    catch: (cause) => new BenchError({ message: "cannot load the Lua floor's scripts", cause })
  })

const task = (i: number, sentAt = now()) =>
  [`t${i}`, priorityOf(i), JSON.stringify({ i, sentAt } satisfies Payload)] as const

const pushAll = async (floor: Floor, n: number, batch: number) => {
  for (let i = 0; i < n; i += batch) {
    await floor.push(Array.from({ length: Math.min(batch, n - i) }, (_, k) => task(i + k)))
  }
}

/** Runs one measurement of the Lua floor. */
export const run = (job: Job): Effect.Effect<Sample, BenchError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const { n, redisUrl } = job.settings
      const { concurrency } = job.scenario
      const redis = yield* Probe.connect(redisUrl)
      yield* Effect.addFinalizer(() => Effect.ignore(Probe.deleteKeysContaining(redis, job.queueName)))
      const floor = yield* load(redis, job.queueName)
      const timed = (f: () => Promise<unknown>) =>
        Effect.tryPromise({
          try: () => timePromise(n, f),
          catch: (cause) => new BenchError({ message: "the Lua floor failed", cause })
        })

      switch (job.scenario.kind) {
        case "push":
          return yield* timed(() => promisePool(n, concurrency, (i) => floor.push([task(i)])))
        case "batch": {
          const before = yield* Probe.usedMemory(redis)
          const sample = yield* timed(() => pushAll(floor, n, concurrency))
          return { ...sample, ...(yield* Probe.memoryPerTask(redis, job.queueName, before, n)) }
        }
        case "queue": {
          yield* Effect.promise(() => pushAll(floor, n, 100))
          return yield* withPeakRss(
            timed(() =>
              promisePool(concurrency, concurrency, async () => {
                for (;;) {
                  const claimed = await floor.claim()
                  if (claimed === null) return
                  JSON.parse(claimed[1])
                  await floor.ack(claimed[0])
                }
              })
            )
          )
        }
        case "latency": {
          const blocking = yield* Probe.connect(redisUrl, { blocking: true })
          let handler: (payload: Payload) => void = () => {}
          let running = true
          // One claimer feeds `concurrency` slots; when the queue is empty it blocks on the marker.
          const consume = async () => {
            let free = concurrency
            let freed = signal()
            while (running) {
              if (free === 0) {
                await freed.promise
                continue
              }
              const claimed = await floor.claim()
              if (claimed === null) {
                await blocking.bzpopmin(floor.marker, 0.2)
                continue
              }
              free--
              handler(JSON.parse(claimed[1]) as Payload)
              void floor.ack(claimed[0]).finally(() => {
                free++
                const wake = freed
                freed = signal()
                wake.resolve()
              })
            }
          }
          const consumer = consume()
          const sample = yield* Effect.tryPromise({
            try: () =>
              steadyLatency({
                rate: job.settings.rate,
                durationSeconds: job.settings.durationSeconds,
                push: (i, sentAt) => floor.push([task(i, sentAt)]),
                onStart: (h) => {
                  handler = h
                }
              }),
            catch: (cause) => new BenchError({ message: "the Lua floor failed", cause })
          })
          running = false
          yield* Effect.promise(() => consumer.catch(() => undefined))
          return sample
        }
        default:
          return yield* new BenchError({ message: `the Lua floor does not run ${job.scenario.kind}` })
      }
    })
  )

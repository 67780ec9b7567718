/**
 * What the bench asks Redis directly: a scoped connection, the keys of one measurement (to size
 * and to delete them), `INFO memory` and `INFO commandstats`.
 *
 * @since 0.1.0
 */
import { Effect } from "effect"
import { Redis } from "ioredis"
import { BenchError } from "./Measurement.js"

const fail = (message: string) => (cause: unknown) => new BenchError({ message, cause })

/** An ioredis connection closed with the scope; connecting is bounded by 5 seconds. */
export const connect = (url: string, options: { readonly blocking?: boolean } = {}) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const redis = new Redis(url, {
          lazyConnect: true,
          connectTimeout: 5_000,
          maxRetriesPerRequest: options.blocking === true ? null : 1
        })
        redis.on("error", () => {})
        await redis.connect()
        return redis
      },
      catch: fail(`cannot connect to Redis at ${url}`)
    }),
    (redis) => Effect.promise(() => redis.quit().catch(() => redis.disconnect()))
  )

/** The keys whose name contains `fragment` (a measurement's unique queue name). */
export const keysContaining = (redis: Redis, fragment: string) =>
  Effect.tryPromise({
    try: async () => {
      const keys: Array<string> = []
      const pattern = `*${fragment.replace(/[*?[\]\\]/g, "\\$&")}*`
      let cursor = "0"
      do {
        const [next, batch] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000)
        cursor = next
        keys.push(...batch)
      } while (cursor !== "0")
      return keys
    },
    catch: fail("cannot scan Redis keys")
  })

/** Deletes every key whose name contains `fragment`; returns how many. */
export const deleteKeysContaining = (redis: Redis, fragment: string) =>
  Effect.flatMap(keysContaining(redis, fragment), (keys) =>
    keys.length === 0
      ? Effect.succeed(0)
      : Effect.tryPromise({
          try: async () => {
            let removed = 0
            for (let i = 0; i < keys.length; i += 500)
              removed += await redis.unlink(...keys.slice(i, i + 500))
            return removed
          },
          catch: fail("cannot delete Redis keys")
        })
  )

/** `used_memory` from `INFO memory`, bytes. */
export const usedMemory = (redis: Redis) =>
  Effect.tryPromise({
    try: async () => {
      const info = await redis.info("memory")
      const match = /^used_memory:(\d+)/m.exec(info)
      if (match === null) throw new Error("no used_memory in INFO memory")
      return Number(match[1])
    },
    catch: fail("cannot read INFO memory")
  })

/** The sum of `MEMORY USAGE <key> SAMPLES 0` over the keys whose name contains `fragment`, bytes. */
export const keyBytes = (redis: Redis, fragment: string) =>
  Effect.flatMap(keysContaining(redis, fragment), (keys) =>
    Effect.tryPromise({
      try: async () => {
        const pipeline = redis.pipeline()
        for (const key of keys) pipeline.memory("USAGE", key, "SAMPLES", 0)
        const replies = (await pipeline.exec()) ?? []
        return replies.reduce((sum, [, bytes]) => sum + (typeof bytes === "number" ? bytes : 0), 0)
      },
      catch: fail("cannot read MEMORY USAGE")
    })
  )

/** Calls per command from `INFO commandstats` (command names lower case, e.g. `evalsha`, `zadd`). */
export const commandStats = (redis: Redis) =>
  Effect.tryPromise({
    try: async () => {
      const info = await redis.info("commandstats")
      const calls = new Map<string, number>()
      for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm))
        calls.set(match[1]!, Number(match[2]))
      return calls
    },
    catch: fail("cannot read INFO commandstats")
  })

/** Redis memory taken by `n` pending tasks of a measurement, both ways; `before` is used_memory before pushing. */
export const memoryPerTask = (redis: Redis, fragment: string, before: number, n: number) =>
  Effect.all({
    redisBytesPerTask: Effect.map(usedMemory(redis), (after) => (after - before) / n),
    redisKeyBytesPerTask: Effect.map(keyBytes(redis, fragment), (bytes) => bytes / n)
  })

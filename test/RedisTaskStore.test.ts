/**
 * The Redis task store: the TaskStore conformance suite on a real Redis, plus what only Redis has
 * (TTLs, key layout, connection failures).
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Option, type Scope } from "effect"
import type { Redis } from "ioredis"
import * as RedisTaskStore from "../layers/RedisTaskStore.js"
import { TaskStore } from "../src/TaskStore.js"
import { uniqueQueueName } from "./conformance.js"
import { deleteRedisKeys, describeWithServer, rawRedis, redisUrl } from "./services.js"
import { taskStoreConformance } from "./taskStoreConformance.js"

await describeWithServer("Redis", redisUrl, "RedisTaskStore", () => {
  taskStoreConformance({
    name: "redis",
    layer: (queueName, retention) => RedisTaskStore.layer({ queueName, redisUrl, retention }),
    live: true,
    elapse: (duration) => Effect.sleep(duration),
    cleanup: deleteRedisKeys
  })

  describe("on Redis", () => {
    const withStore = <A, E>(
      f: (queueName: string, client: Redis) => Effect.Effect<A, E, TaskStore | Scope.Scope>
    ) => {
      const queueName = uniqueQueueName("redis-store")
      return Effect.scoped(
        Effect.flatMap(rawRedis, (client) => f(queueName, client)).pipe(
          Effect.provide(RedisTaskStore.layer({ queueName, redisUrl, retention: "2 hours" }))
        )
      ).pipe(Effect.ensuring(Effect.orDie(deleteRedisKeys(queueName))))
    }

    it.live(
      "one hash per record under the queue's hash tag; finished records get a TTL of the retention",
      () =>
        withStore((queueName, client) =>
          Effect.gen(function* () {
            const tasks = yield* TaskStore
            yield* tasks.create("a", 5)
            yield* tasks.start("a", { token: "t", attempt: 1, priority: 5 })
            const key = RedisTaskStore.recordKey(queueName, "a")
            expect(key).toBe(`{${queueName}}:task:a`)
            expect(yield* Effect.promise(() => client.keys(`{${queueName}}:*`))).toEqual([key])
            expect(yield* Effect.promise(() => client.pttl(key))).toBe(-1)
            yield* tasks.finish("a", "t", { status: "RETRYING", error: "again" })
            expect(yield* Effect.promise(() => client.pttl(key))).toBe(-1)
            yield* tasks.start("a", { token: "u", attempt: 2, priority: 5 })
            yield* tasks.finish("a", "u", { status: "COMPLETED", result: { ok: true } })
            const ttl = yield* Effect.promise(() => client.pttl(key))
            expect(ttl).toBeGreaterThan(Duration.toMillis("2 hours") - 60_000)
            expect(ttl).toBeLessThanOrEqual(Duration.toMillis("2 hours"))
            const fields = yield* Effect.promise(() => client.hgetall(key))
            expect(fields).toMatchObject({
              status: "COMPLETED",
              attempts: "2",
              result: '{"ok":true}',
              token: "u"
            })
            expect(yield* tasks.reset("a")).toBe(true)
            expect(yield* Effect.promise(() => client.pttl(key))).toBe(-1)
          })
        )
    )

    it.live("stores on the same queue share records; another queue's are separate", () =>
      withStore((queueName) =>
        Effect.gen(function* () {
          const tasks = yield* TaskStore
          yield* tasks.create("shared", 3)
          const other = yield* RedisTaskStore.make({ queueName, redisUrl })
          expect(Option.getOrThrow(yield* other.get("shared")).priority).toBe(3)
          expect(Either.isLeft(yield* Effect.either(other.create("shared", 1)))).toBe(true)
          const elsewhere = yield* RedisTaskStore.make({ queueName: `${queueName}-other`, redisUrl })
          expect(yield* elsewhere.get("shared")).toEqual(Option.none())
        })
      )
    )

    it.live("a malformed record is a QueueError that says so", () =>
      withStore((queueName, client) =>
        Effect.gen(function* () {
          const tasks = yield* TaskStore
          yield* Effect.promise(() =>
            client.hset(RedisTaskStore.recordKey(queueName, "bad"), { status: "WEIRD", priority: "x" })
          )
          const got = yield* Effect.either(tasks.get("bad"))
          expect(Either.isLeft(got) && got.left.message).toMatch(/^the record of task bad is malformed: /)
        })
      )
    )
  })
})

describe("RedisTaskStore without a server", () => {
  it.live("an unreachable Redis fails the layer with a QueueError within the connect timeout", () =>
    Effect.gen(function* () {
      const started = Date.now()
      const exit = yield* Effect.scoped(
        RedisTaskStore.make({ redisUrl: "redis://127.0.0.1:1", connectTimeout: "500 millis" })
      ).pipe(Effect.either)
      expect(Either.isLeft(exit) && exit.left.message).toMatch(/^cannot connect to Redis at 127\.0\.0\.1:1/)
      expect(Date.now() - started).toBeLessThan(3_000)
    })
  )

  it.live("rejects a queue name that would break the hash tag", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.scoped(RedisTaskStore.make({ queueName: "a}b", redisUrl })).pipe(
        Effect.either
      )
      expect(Either.isLeft(exit) && exit.left.message).toMatch(/invalid queue name/)
    })
  )
})

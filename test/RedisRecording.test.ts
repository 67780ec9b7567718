/**
 * The Redis queue writing the Redis task store's records inside its own claims and settlements
 * (`QueueManager.recording`), and the worker using it: on a real Redis.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Layer, Option, Schema, type Scope } from "effect"
import type { Redis } from "ioredis"
import * as RedisQueue from "../layers/RedisQueue.js"
import * as RedisTaskStore from "../layers/RedisTaskStore.js"
import * as Pipeline from "../src/Pipeline.js"
import * as QM from "../src/QueueManager.js"
import { TaskStore, type TaskStoreService } from "../src/TaskStore.js"
import { TaskWorker } from "../src/TaskWorker.js"
import { uniqueQueueName } from "./conformance.js"
import { deleteRedisKeys, describeWithServer, rawRedis, redisUrl } from "./services.js"

/** A Redis queue and a Redis store on one queue name, and the queue's recording for that store. */
const withBoth = <A, E>(
  f: (
    recording: QM.RecordingQueue,
    queue: QM.QueueManagerService,
    store: TaskStoreService,
    client: Redis
  ) => Effect.Effect<A, E, Scope.Scope>,
  leaseDuration: Duration.DurationInput = "30 seconds"
) => {
  const queueName = uniqueQueueName("recording")
  return Effect.scoped(
    Effect.gen(function* () {
      const queue = yield* RedisQueue.make({ queueName, redisUrl, leaseDuration })
      const store = yield* RedisTaskStore.make({ queueName, redisUrl, retention: "2 hours" })
      const recording = queue.recording?.(store.shared!)
      expect(recording).toBeDefined()
      return yield* f(recording!, queue, store, yield* rawRedis)
    })
  ).pipe(Effect.ensuring(Effect.orDie(deleteRedisKeys(queueName))))
}

const recordOf = (store: TaskStoreService, taskId: string) => Effect.map(store.get(taskId), Option.getOrThrow)

await describeWithServer("Redis", redisUrl, "Redis queue recording the Redis store's records", () => {
  it.live("offered only for the store's own records: same server and queue name", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const queueName = uniqueQueueName("recording")
        const queue = yield* RedisQueue.make({ queueName, redisUrl })
        const same = yield* RedisTaskStore.make({ queueName, redisUrl })
        const other = yield* RedisTaskStore.make({ queueName: `${queueName}-other`, redisUrl })
        const otherDb = yield* RedisTaskStore.make({ queueName, redisUrl: `${redisUrl}/1` })
        expect(queue.recording?.(same.shared!)).toBeDefined()
        expect(queue.recording?.(other.shared!)).toBeUndefined()
        expect(queue.recording?.(otherDb.shared!)).toBeUndefined()
        // Server, database and queue name, as ioredis resolved the URL: never its credentials.
        const { hostname, port } = new URL(redisUrl)
        expect(same.shared?.location).toBe(`redis ${hostname}:${port}/0 ${queueName}`)
        expect(otherDb.shared?.location).toBe(`redis ${hostname}:${port}/1 ${queueName}`)
      })
    )
  )

  it.live("a claim records each start: PROCESSING with the attempt and the delivery's token", () =>
    withBoth((recording, queue, store) =>
      Effect.gen(function* () {
        yield* store.create("a", 7)
        yield* queue.pushBatch([
          { taskId: "a", data: { n: 1 }, priority: 7 },
          { taskId: "b", data: { n: 2 }, priority: 3 }
        ])
        const claimed = yield* recording.pullBatch(5)
        expect(claimed.map((c) => c.delivery.message.taskId)).toEqual(["a", "b"])
        expect(claimed.map((c) => c.start._tag)).toEqual(["Started", "Started"])
        expect(yield* recordOf(store, "a")).toMatchObject({ status: "PROCESSING", attempts: 1, priority: 7 })
        // A task pushed without a record gets one, with its priority.
        expect(yield* recordOf(store, "b")).toMatchObject({ status: "PROCESSING", attempts: 1, priority: 3 })
        // The token is the delivery's: the store's own transitions are fenced by it.
        const a = claimed[0]!.delivery
        expect(yield* store.finish("a", "not-the-token", { status: "COMPLETED", result: 1 })).toBe(false)
        expect(yield* store.finish("a", a.token, { status: "COMPLETED", result: 1 })).toBe(true)
      })
    )
  )

  it.live("a claim of a task already finished leaves its record alone and answers Finished", () =>
    withBoth((recording, queue, store) =>
      Effect.gen(function* () {
        yield* store.create("done", 5)
        yield* store.start("done", { token: "old", attempt: 1, priority: 5 })
        yield* store.finish("done", "old", { status: "COMPLETED", result: { ok: true } })
        const before = yield* recordOf(store, "done")
        yield* queue.push("done", {})
        const [claimed] = yield* recording.pullBatch(1)
        expect(claimed!.start._tag).toBe("Finished")
        expect(claimed!.start._tag === "Finished" && claimed!.start.record).toEqual(before)
        expect(yield* recordOf(store, "done")).toEqual(before)
      })
    )
  )

  it.live(
    "settleAll records outcomes and settles: COMPLETED acked with the retention, FAILED dead-lettered",
    () =>
      withBoth((recording, queue, store, client) =>
        Effect.gen(function* () {
          yield* queue.pushBatch([
            { taskId: "ok", data: {} },
            { taskId: "bad", data: {} }
          ])
          const claimed = yield* recording.pullBatch(2)
          const ok = claimed.find((c) => c.delivery.message.taskId === "ok")!.delivery
          const bad = claimed.find((c) => c.delivery.message.taskId === "bad")!.delivery
          const settled = yield* recording.settleAll([
            { delivery: ok, outcome: { status: "COMPLETED", result: { answer: 42 } } },
            { delivery: bad, outcome: { status: "FAILED", error: "broken for good" } }
          ])
          expect(settled).toEqual(["settled", "settled"])
          expect(yield* recordOf(store, "ok")).toMatchObject({ status: "COMPLETED", result: { answer: 42 } })
          expect(yield* recordOf(store, "bad")).toMatchObject({ status: "FAILED", error: "broken for good" })
          const ttl = yield* Effect.promise(() =>
            client.pttl(RedisTaskStore.recordKey(queue.queueName, "ok"))
          )
          expect(ttl).toBeGreaterThan(Duration.toMillis("1 hour"))
          expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 1 })
          const [letter] = yield* queue.deadLetters()
          expect(letter).toMatchObject({ taskId: "bad", error: "broken for good" })
        })
      )
  )

  it.live("settleAll changes nothing for a delivery another one has taken over: discarded", () =>
    withBoth((recording, queue, store) =>
      Effect.gen(function* () {
        yield* queue.push("x", {})
        const [claimed] = yield* recording.pullBatch(1)
        // Another delivery started since (as a worker holding a newer lease would record it).
        yield* store.start("x", { token: "newer", attempt: 2, priority: 5 })
        const settled = yield* recording.settleAll([
          { delivery: claimed!.delivery, outcome: { status: "COMPLETED", result: 1 } }
        ])
        expect(settled).toEqual(["discarded"])
        expect(yield* recordOf(store, "x")).toMatchObject({ status: "PROCESSING", attempts: 2 })
        expect(yield* queue.stats).toMatchObject({ inFlight: 1 })
      })
    )
  )

  it.live("settleAll after the lease expired: recorded, not acked; the next delivery finds it finished", () =>
    withBoth(
      (recording, queue, store) =>
        Effect.gen(function* () {
          yield* queue.push("slow", {})
          const [claimed] = yield* recording.pullBatch(1)
          yield* Effect.sleep("300 millis")
          const settled = yield* recording.settleAll([
            { delivery: claimed!.delivery, outcome: { status: "COMPLETED", result: "late" } }
          ])
          expect(settled).toEqual(["expired"])
          expect(yield* recordOf(store, "slow")).toMatchObject({ status: "COMPLETED", result: "late" })
          const [again] = yield* recording.pullBatch(1)
          expect(again!.delivery.message.attempt).toBe(2)
          expect(again!.start._tag).toBe("Finished")
        }),
      "200 millis"
    )
  )

  it.live("a settleAll of more than a thousand leases answers for each, in order", () =>
    withBoth((recording, queue, store) =>
      Effect.gen(function* () {
        const n = 1100
        yield* queue.pushBatch(Array.from({ length: n }, (_, k) => ({ taskId: `t${k}`, data: k })))
        const claimed = yield* recording.pullBatch(n)
        expect(claimed.length).toBe(n)
        const deliveries = claimed.map((c) => c.delivery)
        // Three settled already (their messages gone): a second outcome is recorded, not acked.
        const early = deliveries.slice(0, 3).map((delivery) => ({
          delivery,
          outcome: { status: "COMPLETED" as const, result: "first" }
        }))
        expect(yield* recording.settleAll(early)).toEqual(["settled", "settled", "settled"])
        const settled = yield* recording.settleAll(
          deliveries.map((delivery, k) => ({
            delivery,
            outcome:
              k === 1050
                ? { status: "FAILED" as const, error: "boom" }
                : { status: "COMPLETED" as const, result: k }
          }))
        )
        expect(settled.slice(0, 3)).toEqual(["expired", "expired", "expired"])
        expect(settled.slice(3).every((end) => end === "settled")).toBe(true)
        expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 1 })
        expect(yield* recordOf(store, "t1050")).toMatchObject({ status: "FAILED", error: "boom" })
        expect(yield* recordOf(store, "t1099")).toMatchObject({ status: "COMPLETED", result: 1099 })
      })
    )
  )

  it.live(
    "a claim interrupted while Redis answers gives its tasks back and their records back to PENDING",
    () =>
      withBoth((recording, queue, store, client) =>
        Effect.gen(function* () {
          yield* queue.pushBatch(["a", "b", "c"].map((taskId) => ({ taskId, data: {} })))
          // Another client keeps Redis busy for 100 ms, so the claim is sent and not yet answered
          // when its caller is interrupted.
          const busy = client.eval(
            "local t = redis.call('TIME') local s = t[1] * 1000000 + t[2] repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - s > 100000 return 1",
            0
          )
          yield* Effect.sleep(Duration.millis(10))
          const fiber = yield* Effect.fork(recording.pullBatch(2, Duration.seconds(1)))
          yield* Effect.sleep(Duration.millis(20))
          const exit = yield* Fiber.interrupt(fiber)
          yield* Effect.promise(() => busy)
          expect(Exit.isInterrupted(exit)).toBe(true)
          expect(yield* queue.stats).toMatchObject({ pending: 3, inFlight: 0 })
          // The claim recorded two starts before it was given back: neither running nor counted.
          for (const taskId of ["a", "b"]) {
            expect(yield* recordOf(store, taskId)).toMatchObject({ status: "PENDING", attempts: 0 })
          }
          expect(Option.isNone(yield* store.get("c"))).toBe(true)
          const again = yield* recording.pullBatch(3)
          expect(again.map((c) => [c.delivery.message.taskId, c.delivery.message.attempt])).toEqual([
            ["a", 1],
            ["b", 1],
            ["c", 1]
          ])
          expect(yield* recordOf(store, "a")).toMatchObject({ status: "PROCESSING", attempts: 1 })
        })
      )
  )

  it.live("a malformed body found by a recording claim is dead-lettered and its record FAILED", () =>
    withBoth((recording, queue, store, client) =>
      Effect.gen(function* () {
        yield* queue.push("garbled", { fine: true })
        yield* Effect.promise(() => client.hset(`{${queue.queueName}}:task`, "b:garbled", "{not json"))
        expect(yield* recording.pullBatch(1, "200 millis")).toEqual([])
        expect(yield* recordOf(store, "garbled")).toMatchObject({ status: "FAILED" })
        expect((yield* recordOf(store, "garbled")).error).toMatch(/malformed message/)
        expect(yield* queue.stats).toMatchObject({ inFlight: 0, dead: 1 })
      })
    )
  )

  describe("the worker", () => {
    /** The Redis store, counting the calls a worker makes to it; `shared` kept or hidden. */
    const counting = (calls: { startMany: number; finishMany: number }, share: boolean) =>
      Layer.effect(
        TaskStore,
        Effect.map(
          TaskStore,
          (store): TaskStoreService => ({
            ...store,
            shared: share ? store.shared : undefined,
            startMany: (starts) => {
              calls.startMany++
              return store.startMany(starts)
            },
            finishMany: (outcomes) => {
              calls.finishMany++
              return store.finishMany(outcomes)
            }
          })
        )
      )

    const drain = (share: boolean) => {
      const queueName = uniqueQueueName("recording-worker")
      const calls = { startMany: 0, finishMany: 0 }
      const pipeline = Pipeline.make({
        schema: Schema.Struct({ n: Schema.Number }),
        run: ({ n }) => Effect.succeed(n * 2)
      })
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        const store = yield* TaskStore
        yield* queue.pushBatch(Array.from({ length: 40 }, (_, n) => ({ taskId: `t${n}`, data: { n } })))
        yield* TaskWorker.start
        for (;;) {
          const stats = yield* queue.stats
          if (stats.pending === 0 && stats.inFlight === 0) break
          yield* Effect.sleep("10 millis")
        }
        for (let n = 0; n < 40; n++) {
          expect(yield* Effect.map(store.get(`t${n}`), Option.getOrThrow)).toMatchObject({
            status: "COMPLETED",
            attempts: 1,
            result: n * 2
          })
        }
        return calls
      }).pipe(
        Effect.scoped,
        Effect.provide(
          TaskWorker.layer({ concurrency: 4 }).pipe(
            Layer.provideMerge(
              Layer.mergeAll(
                RedisQueue.layer({ queueName, redisUrl }),
                counting(calls, share).pipe(Layer.provide(RedisTaskStore.layer({ queueName, redisUrl }))),
                Pipeline.Pipeline.layer(pipeline)
              )
            )
          )
        ),
        Effect.ensuring(Effect.orDie(deleteRedisKeys(queueName)))
      )
    }

    it.live(
      "records starts and outcomes through the queue's claims and settlements, not the store's calls",
      () =>
        Effect.gen(function* () {
          expect(yield* drain(true)).toEqual({ startMany: 0, finishMany: 0 })
          // Without the store's shared records, the same drain makes the store's calls.
          const unshared = yield* drain(false)
          expect(unshared.startMany).toBeGreaterThan(0)
          expect(unshared.finishMany).toBeGreaterThan(0)
        })
    )
  })
})

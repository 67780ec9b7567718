/**
 * The Redis backend on the real server: the conformance suite, then what only Redis has (key
 * layout, scripts by SHA, one round trip per batch, several processes on one queue).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  ConfigProvider,
  Context,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  Layer,
  Option,
  type Scope
} from "effect"
import { Redis } from "ioredis"
import * as RedisQueue from "../layers/RedisQueue.js"
import * as Connection from "../layers/redis/Connection.js"
import * as Scripts from "../layers/redis/scripts.js"
import * as QM from "../src/QueueManager.js"
import { conformance, drain, uniqueQueueName } from "./conformance.js"
import { describeWithServer, redisUrl } from "./services.js"

/** A plain client for the test's own look at Redis, closed after `f`. */
const withClient = <A>(f: (client: Redis) => Promise<A>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
      client.on("error", () => {})
      return client
    }),
    (client) => Effect.tryPromise(() => f(client)),
    (client) => Effect.sync(() => client.disconnect())
  )

/** Every key whose name mentions the queue. */
const keysOf = (queueName: string) =>
  withClient(async (client) => {
    const found: Array<string> = []
    let cursor = "0"
    do {
      const [next, batch] = await client.scan(cursor, "MATCH", `*${queueName}*`, "COUNT", 1000)
      cursor = next
      found.push(...batch)
    } while (cursor !== "0")
    return found.sort()
  })

const cleanup = (queueName: string) =>
  Effect.flatMap(keysOf(queueName), (found) =>
    withClient(async (client) => {
      const all = [...new Set([...Object.values(RedisQueue.keys(queueName)), ...found])]
      await client.del(...all)
    })
  )

const plant = (queueName: string, id: string, priority: number, body: string) =>
  withClient(async (client) => {
    const key = RedisQueue.keys(queueName)
    const seq = await client.incr(key.seq)
    await client
      .multi()
      .hset(key.task, Scripts.bodyField(id), body, Scripts.stateField(id), priority)
      .zadd(key.pending, RedisQueue.pendingScore(priority, seq), id)
      .zadd(key.marker, 0, "wake")
      .exec()
  })

/** One "process": a queue service built in the current scope. */
const instance = (queueName: string, leaseDuration: Duration.DurationInput = "30 seconds") =>
  Layer.build(RedisQueue.layer({ queueName, redisUrl, leaseDuration })).pipe(
    Effect.map(Context.get(QM.QueueManager))
  )

/** Runs `f` on a fresh queue name and deletes its keys afterwards. */
const onQueue = <A, E>(f: (queueName: string) => Effect.Effect<A, E, Scope.Scope>) => {
  const queueName = uniqueQueueName("redis")
  return Effect.scoped(f(queueName)).pipe(Effect.ensuring(Effect.orDie(cleanup(queueName))))
}

/**
 * Records every command the queue's connections send while `f` runs, seen by Redis itself
 * through `MONITOR` and told apart by client address.
 */
const monitored = <A, E>(queueName: string, f: Effect.Effect<A, E>) =>
  Effect.gen(function* () {
    const prefix = RedisQueue.connectionNamePrefix(queueName)
    const addresses = yield* withClient(async (client) => {
      const list = (await client.client("LIST")) as string
      const byName = new Map<string, Array<string>>()
      for (const line of list.split("\n")) {
        const name = /\bname=(\S+)/.exec(line)?.[1]
        const addr = /\baddr=(\S+)/.exec(line)?.[1]
        if (name?.startsWith(prefix) && addr !== undefined) byName.set(addr, [name])
      }
      return byName
    })
    const seen: Array<{ readonly connection: string; readonly args: ReadonlyArray<string> }> = []
    // Starting MONITOR while other suites send commands can lose ioredis a race ("Command queue
    // state error": a monitored line read before MONITOR's own reply): start it again then.
    const monitor = yield* Effect.acquireRelease(
      Effect.tryPromise(async () => {
        const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
        client.on("error", () => {})
        try {
          const monitor = await client.monitor()
          monitor.on("error", () => {})
          return monitor
        } finally {
          client.disconnect()
        }
      }).pipe(Effect.retry({ times: 3 })),
      (monitor) => Effect.sync(() => monitor.disconnect())
    )
    monitor.on("monitor", (_time: string, args: ReadonlyArray<string>, source: string) => {
      const name = addresses.get(source)?.[0]
      if (name !== undefined) seen.push({ connection: name, args })
    })
    const result = yield* f
    // MONITOR streams asynchronously: a fenced PING from the queue's own view is not possible,
    // so give the feed a moment to catch up.
    yield* Effect.sleep(Duration.millis(200))
    return { result, seen, connections: [...addresses.values()].map((n) => n[0]!) }
  })

const meeting = (n: number) => ({ audio_files: [`meeting-${n}.wav`], meeting_type: "weekly_sync" })

await describeWithServer("Redis", redisUrl, "RedisQueue", () => {
  conformance({
    name: "redis",
    layer: (queueName, { leaseDuration }) => RedisQueue.layer({ queueName, redisUrl, leaseDuration }),
    plant,
    cleanup
  })

  describe("Redis specifics", () => {
    it.live("every key of a queue shares the {queue} hash tag", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          yield* queue.pushBatch(Array.from({ length: 5 }, (_, n) => ({ taskId: `k${n}`, data: meeting(n) })))
          const a = yield* queue.pull().pipe(Effect.flatten)
          yield* a.nack({ requeue: false, error: "dead" })
          const b = yield* queue.pull().pipe(Effect.flatten)
          yield* b.nack({ delay: "1 minute" })
          yield* queue.pull().pipe(Effect.flatten)
          yield* queue.stats
          const found = yield* keysOf(queueName)
          expect(found.length).toBeGreaterThanOrEqual(10)
          for (const key of found) {
            expect(key.startsWith(`{${queueName}}:`), key).toBe(true)
            // The hash tag Redis Cluster hashes: from the first "{" to the next "}".
            expect(key.slice(key.indexOf("{") + 1, key.indexOf("}"))).toBe(queueName)
          }
        })
      )
    )

    it.live("state changes go to Redis as EVALSHA of the loaded scripts, waits as BZPOPMIN", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          const { seen, connections } = yield* monitored(
            queueName,
            Effect.gen(function* () {
              const waiting = yield* Effect.fork(queue.pull(Duration.seconds(5)))
              yield* Effect.sleep(Duration.millis(100))
              yield* queue.push("sha", meeting(1))
              const delivery = yield* Fiber.join(waiting).pipe(Effect.flatten)
              yield* delivery.extend()
              yield* delivery.nack()
              yield* (yield* queue.pull().pipe(Effect.flatten)).ack
              yield* queue.stats
              yield* queue.clear
              yield* queue.deadLetters()
              yield* queue.retryDead("none")
            })
          )
          expect(connections.sort()).toEqual([`etq:${queueName}:block`, `etq:${queueName}:cmd`])
          const marker = RedisQueue.keys(queueName).marker
          const commands = seen.map((s) => `${s.connection.split(":").at(-1)} ${s.args[0]?.toLowerCase()}`)
          expect(commands.length).toBeGreaterThanOrEqual(12)
          expect(commands).toContain("block bzpopmin")
          for (const [i, command] of commands.entries()) {
            // Besides the scripts, only the wake-up marker is touched: BZPOPMIN on it, and a ZADD
            // that hands back a marker popped after the local puller it was for had left.
            if (command === "cmd zadd") expect(seen[i]!.args.slice(1)).toEqual([marker, "0", "wake"])
            else expect(["cmd evalsha", "block bzpopmin"]).toContain(command)
          }
          for (const { args } of seen) {
            if (args[0]?.toLowerCase() !== "evalsha") continue
            // One key is declared to every script, the queue's prefix: its hash tag is every key's,
            // so Cluster routes the call to the slot that holds them all.
            expect(args[2]).toBe("1")
            expect(args[3]).toBe(RedisQueue.keyPrefix(queueName))
            for (const key of Object.values(RedisQueue.keys(queueName)))
              expect(key.startsWith(RedisQueue.keyPrefix(queueName))).toBe(true)
          }
        })
      )
    )

    it.live(
      "calls made in the same turn by concurrent fibers go to Redis as one script call, or two halves from eight",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const queue = yield* instance(queueName)
            const all = { concurrency: "unbounded" } as const
            const keyCount = 1
            /** The ARGV count of each script call seen. */
            const argvCounts = (seen: ReadonlyArray<{ readonly args: ReadonlyArray<string> }>) =>
              seen.map(({ args }) => args.length - 3 - keyCount)
            const few = Array.from({ length: Connection.splitAt - 1 }, (_, n) => `f${n}`)
            const pushedFew = yield* monitored(
              queueName,
              Effect.forEach(few, (id) => queue.push(id, meeting(1)), all)
            )
            expect(pushedFew.result.every((accepted) => accepted)).toBe(true)
            expect(argvCounts(pushedFew.seen)).toEqual([3 * few.length])
            const ids = Array.from({ length: 16 }, (_, n) => `m${n}`)
            const pushed = yield* monitored(
              queueName,
              Effect.forEach(ids, (id) => queue.push(id, meeting(1)), all)
            )
            expect(pushed.result.every((accepted) => accepted)).toBe(true)
            expect(argvCounts(pushed.seen)).toEqual([3 * 8, 3 * 8])
            const pulled = yield* monitored(
              queueName,
              Effect.forEach([...few, ...ids], () => Effect.flatten(queue.pull(Duration.seconds(1))), all)
            )
            expect(new Set(pulled.result.map((d) => d.message.taskId))).toEqual(new Set([...few, ...ids]))
            // A claim's ARGV is the total wanted and the lease duration.
            expect(pulled.seen.map(({ args }) => args[3 + keyCount])).toEqual(["12", "11"])
            const acked = yield* monitored(
              queueName,
              Effect.forEach(pulled.result, (delivery) => delivery.ack, all)
            )
            expect(argvCounts(acked.seen)).toEqual([2 * 12, 2 * 11])
            expect(yield* queue.stats).toMatchObject({ pending: 0, inFlight: 0 })
          })
        )
    )

    it.live("after a claim that empties the queue, a pull waits for the marker instead of asking Redis", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const consumer = yield* instance(queueName)
          const producer = yield* instance(queueName)
          yield* producer.push("first", meeting(1))
          // Asked for five, got one: nothing is pending now.
          const [first] = yield* consumer.pullBatch(5)
          expect(first!.message.taskId).toBe("first")
          // The first push's marker is still there: a short pull pops it and finds nothing.
          expect(Option.isNone(yield* consumer.pull(Duration.millis(200)))).toBe(true)
          const { result, seen } = yield* monitored(
            queueName,
            Effect.gen(function* () {
              const waiting = yield* Effect.fork(consumer.pull(Duration.seconds(5)))
              yield* Effect.sleep(Duration.millis(300))
              yield* producer.push("second", meeting(2))
              return yield* Fiber.join(waiting).pipe(Effect.flatten)
            })
          )
          expect(result.message.taskId).toBe("second")
          const scripts = seen
            .filter(({ args }) => args[0]?.toLowerCase() === "evalsha")
            .map(({ args }) =>
              args[1] === Scripts.claim.sha ? "claim" : args[1] === Scripts.offer.sha ? "offer" : "other"
            )
          // One claim, after the push: none while the queue was known to be empty.
          expect(scripts).toEqual(["offer", "claim"])
          yield* Effect.all([first!.ack, result.ack])
        })
      )
    )

    it.live("a drained queue is claimed again when a lease it knows of expires, without a marker", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName, "500 millis")
          yield* queue.pushBatch([
            { taskId: "kept", data: meeting(1) },
            { taskId: "lost", data: meeting(2) }
          ])
          const claimed = yield* queue.pullBatch(5)
          expect(claimed.map((d) => d.message.taskId)).toEqual(["kept", "lost"])
          yield* claimed[0]!.ack
          // The push's marker is still there: a short pull pops it and finds nothing.
          expect(Option.isNone(yield* queue.pull(Duration.millis(100)))).toBe(true)
          // "lost" is never settled: its lease ends within half a second, and that is when the
          // drained queue is asked again, long before this pull's timeout.
          const [elapsed, again] = yield* Effect.timed(queue.pull(Duration.seconds(5)).pipe(Effect.flatten))
          expect(again.message.taskId).toBe("lost")
          expect(again.message.attempt).toBe(2)
          expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(200)
          expect(Duration.toMillis(elapsed)).toBeLessThan(2_000)
          yield* again.ack
        })
      )
    )

    it.live("a pushBatch of 1,000 tasks is one call to Redis", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          const tasks = Array.from({ length: 1000 }, (_, n) => ({
            taskId: `b${n}`,
            data: meeting(n),
            priority: n % 11
          }))
          const { result, seen } = yield* monitored(queueName, queue.pushBatch(tasks))
          expect(result.length).toBe(1000)
          expect(result.every((accepted) => accepted)).toBe(true)
          expect(seen.length).toBe(1)
          expect(seen[0]!.args[0]!.toLowerCase()).toBe("evalsha")
          expect(seen[0]!.args.length).toBe(3 + 1 + 3 * 1000)
          expect(yield* queue.length).toBe(1000)
        })
      )
    )

    it.live(
      "batches past a thousand tasks (the scripts write 1,000 fields per call) push, pull and ack whole",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const queue = yield* instance(queueName)
            expect(yield* queue.push("b7", meeting(-1), 0)).toBe(true)
            const n = 1100
            const tasks = Array.from({ length: n }, (_, k) => ({
              taskId: `b${k}`,
              data: meeting(k),
              priority: k % 11
            }))
            const accepted = yield* queue.pushBatch([...tasks, { taskId: "b1099", data: meeting(0) }])
            // The id already pending and the repeat inside the batch are refused; all others are in.
            expect(accepted.flatMap((a, k) => (a ? [] : [k]))).toEqual([7, n])
            const pulled = yield* queue.pullBatch(n + 10)
            expect(pulled.length).toBe(n)
            const expected = [{ taskId: "b7", priority: 0 }, ...tasks.filter((t) => t.taskId !== "b7")]
              .map((t, order) => ({ id: t.taskId, priority: t.priority, order }))
              .sort((a, b) => b.priority - a.priority || a.order - b.order)
              .map((t) => t.id)
            expect(pulled.map((d) => d.message.taskId)).toEqual(expected)
            for (const d of pulled) {
              expect(d.message.data).toEqual(
                d.message.taskId === "b7" ? meeting(-1) : meeting(Number(d.message.taskId.slice(1)))
              )
            }
            const spent = pulled.slice(0, 3)
            expect(yield* queue.ackAll(spent)).toEqual([true, true, true])
            const answers = yield* queue.ackAll(pulled)
            expect(answers.filter((a) => !a).length).toBe(3)
            expect(answers.slice(3).every((a) => a)).toBe(true)
            expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
          })
        )
    )

    it.live("two instances on one queue share the work without duplicates", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const a = yield* instance(queueName)
          const b = yield* instance(queueName)
          const n = 300
          yield* a.pushBatch(
            Array.from({ length: n }, (_, i) => ({ taskId: `w${i}`, data: i, priority: i % 3 }))
          )
          const byInstance = yield* Effect.forEach([a, a, a, a, b, b, b, b], (queue) => drain(queue), {
            concurrency: "unbounded"
          })
          const fromA = byInstance.slice(0, 4).flat()
          const fromB = byInstance.slice(4).flat()
          const all = [...fromA, ...fromB]
          expect(all.length).toBe(n)
          expect(new Set(all).size).toBe(n)
          expect(fromA.length).toBeGreaterThan(0)
          expect(fromB.length).toBeGreaterThan(0)
          expect(yield* b.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
        })
      )
    )

    it.live("a push in one instance wakes blocked pullers in the others", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const a = yield* instance(queueName)
          const b = yield* instance(queueName)
          const c = yield* instance(queueName)
          const pullers = yield* Effect.forEach([b, b, c, c], (queue) =>
            Effect.fork(Effect.timed(queue.pull(Duration.seconds(10))))
          )
          yield* Effect.sleep(Duration.millis(200))
          yield* a.pushBatch([1, 2, 3, 4].map((n) => ({ taskId: `x${n}`, data: n })))
          const results = yield* Fiber.joinAll(pullers)
          expect(results.map(([, d]) => Option.getOrThrow(d).message.taskId).sort()).toEqual([
            "x1",
            "x2",
            "x3",
            "x4"
          ])
          for (const [elapsed] of results) expect(Duration.toMillis(elapsed)).toBeLessThan(2_000)
        })
      )
    )

    it.live("an interrupted pull does not keep a marker from a puller elsewhere", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const a = yield* instance(queueName)
          const b = yield* instance(queueName)
          const gone = yield* Effect.fork(a.pull(Duration.seconds(10)))
          yield* Effect.sleep(Duration.millis(100))
          yield* Fiber.interrupt(gone)
          const waiting = yield* Effect.fork(Effect.timed(b.pull(Duration.seconds(10))))
          yield* Effect.sleep(Duration.millis(100))
          // `a`'s BZPOPMIN is still blocked and may take this marker: it must hand it on.
          yield* a.push("handed-on", 1)
          const [elapsed, delivery] = yield* Fiber.join(waiting)
          expect(Option.map(delivery, (d) => d.message.taskId)).toEqual(Option.some("handed-on"))
          expect(Duration.toMillis(elapsed)).toBeLessThan(2_000)
        })
      )
    )

    it.live("a lease that expires in one instance goes to another as attempt 2; the first cannot ack", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const a = yield* instance(queueName, "500 millis")
          const b = yield* instance(queueName, "500 millis")
          yield* a.push("handover", meeting(1))
          const first = yield* a.pull().pipe(Effect.flatten)
          expect(first.message.attempt).toBe(1)
          const [elapsed, second] = yield* Effect.timed(b.pull(Duration.seconds(5)).pipe(Effect.flatten))
          expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(300)
          expect(Duration.toMillis(elapsed)).toBeLessThan(2_000)
          expect(second.message.taskId).toBe("handover")
          expect(second.message.attempt).toBe(2)
          const stale = yield* Effect.either(first.ack)
          expect(Either.isLeft(stale) && stale.left._tag).toBe("LeaseLost")
          const staleExtend = yield* Effect.either(first.extend())
          expect(Either.isLeft(staleExtend) && staleExtend.left._tag).toBe("LeaseLost")
          yield* second.ack
          expect(yield* a.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
        })
      )
    )

    it.live(
      "the upkeep, skipped until {q}:due, still reaps a shorter lease and promotes a delay due before it",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const long = yield* instance(queueName, "30 seconds")
            const short = yield* instance(queueName, "300 millis")
            yield* long.pushBatch(
              ["held", "delayed", "expiring"].map((taskId) => ({ taskId, data: meeting(1) }))
            )
            // A 30-second lease first: the next look is 30 seconds away.
            const held = yield* long.pull().pipe(Effect.flatten)
            const due = RedisQueue.keys(queueName).due
            const first = Number(yield* withClient((client) => client.get(due)))
            const delayed = yield* long.pull().pipe(Effect.flatten)
            yield* delayed.nack({ delay: "200 millis" })
            const expiring = yield* short.pull().pipe(Effect.flatten)
            expect(expiring.message.taskId).toBe("expiring")
            // The delay and the short lease each brought the next look forward.
            expect(Number(yield* withClient((client) => client.get(due)))).toBeLessThan(first - 20_000)
            const [elapsed, next] = yield* Effect.timed(long.pull(Duration.seconds(5)).pipe(Effect.flatten))
            expect(next.message.taskId).toBe("delayed")
            expect(next.message.attempt).toBe(2)
            expect(Duration.toMillis(elapsed)).toBeLessThan(2_000)
            const again = yield* long.pull(Duration.seconds(5)).pipe(Effect.flatten)
            expect(again.message.taskId).toBe("expiring")
            expect(again.message.attempt).toBe(2)
            yield* Effect.all([held.ack, next.ack, again.ack])
            expect(yield* long.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
          })
        )
    )

    it.live("a lease keeps its place in Redis, not in the process; no field of it outlives the lease", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName, "300 millis")
          const key = RedisQueue.keys(queueName)
          const fields = withClient((client) => client.hkeys(key.task)).pipe(Effect.map((f) => f.sort()))
          yield* queue.pushBatch(["first", "second", "third"].map((taskId) => ({ taskId, data: meeting(1) })))
          const first = yield* queue.pull().pipe(Effect.flatten)
          expect(yield* fields).toContain(Scripts.positionField("first"))
          yield* first.release
          // Back at its place, ahead of the others.
          const again = yield* queue.pull().pipe(Effect.flatten)
          expect(again.message.taskId).toBe("first")
          yield* again.ack
          const second = yield* queue.pull().pipe(Effect.flatten)
          yield* second.nack({ requeue: false, error: "no" })
          const third = yield* queue.pull().pipe(Effect.flatten)
          yield* Effect.sleep("400 millis")
          expect((yield* queue.stats).pending).toBe(1) // the lease expired: reaped
          // Only the dead letter's body and state are left.
          expect(yield* fields).toEqual(
            [
              Scripts.bodyField("second"),
              Scripts.bodyField("third"),
              Scripts.stateField("second"),
              Scripts.stateField("third")
            ].sort()
          )
          expect(Either.isLeft(yield* Effect.either(third.release))).toBe(true)
          // A lease of the layout before this field: released to the back of its priority.
          yield* queue.push("fourth", meeting(1))
          const third2 = yield* queue.pull().pipe(Effect.flatten)
          expect(third2.message.taskId).toBe("third")
          yield* withClient((client) => client.hdel(key.task, Scripts.positionField("third")))
          yield* third2.release
          const next = yield* queue.pull().pipe(Effect.flatten)
          expect(next.message.taskId).toBe("fourth")
          const last = yield* queue.pull().pipe(Effect.flatten)
          expect([last.message.taskId, last.message.attempt]).toEqual(["third", 2])
          yield* Effect.all([next.ack, last.ack])
        })
      )
    )

    it.live("a lost {q}:due key only makes the next script look: an expired lease still comes back", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName, "300 millis")
          yield* queue.push("orphan", meeting(1))
          const first = yield* queue.pull().pipe(Effect.flatten)
          yield* withClient((client) => client.del(RedisQueue.keys(queueName).due))
          const second = yield* queue.pull(Duration.seconds(5)).pipe(Effect.flatten)
          expect(second.message.taskId).toBe("orphan")
          expect(second.message.attempt).toBe(2)
          expect(Either.isLeft(yield* Effect.either(first.ack))).toBe(true)
          yield* second.ack
        })
      )
    )

    it.live("pulls interrupted mid-claim give their tasks back without counting an attempt", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          const n = 40
          yield* queue.pushBatch(Array.from({ length: n }, (_, i) => ({ taskId: `i${i}`, data: i })))
          let delivered = 0
          for (let i = 0; i < n; i++) {
            const fiber = yield* Effect.fork(queue.pull(Duration.seconds(1)))
            // Interrupt at varying points of the round trip.
            yield* Effect.sleep(Duration.micros(BigInt((i % 8) * 100)))
            const exit = yield* Fiber.interrupt(fiber)
            if (Exit.isSuccess(exit) && Option.isSome(exit.value)) {
              delivered++
              yield* exit.value.value.nack()
            }
          }
          const stats = yield* queue.stats
          expect(stats.inFlight).toBe(0)
          expect(stats.pending).toBe(n)
          const attempts = new Map<string, number>()
          for (;;) {
            const d = yield* queue.pull(Duration.millis(50))
            if (Option.isNone(d)) break
            attempts.set(d.value.message.taskId, d.value.message.attempt)
            yield* d.value.ack
          }
          expect(attempts.size).toBe(n)
          // Only the tasks a puller actually received (and nacked) count an attempt.
          const counted = [...attempts.values()].filter((a) => a === 2).length
          expect(counted).toBe(delivered)
        })
      )
    )

    it.live("layerConfig reads QUEUE_NAME, REDIS_URL and LEASE_DURATION", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* Layer.build(RedisQueue.layerConfig).pipe(
            Effect.map(Context.get(QM.QueueManager)),
            Effect.withConfigProvider(
              ConfigProvider.fromMap(
                new Map([
                  ["QUEUE_NAME", queueName],
                  ["REDIS_URL", redisUrl],
                  ["LEASE_DURATION", "200 millis"]
                ])
              )
            )
          )
          expect(queue.queueName).toBe(queueName)
          expect(queue.backend).toBe("redis")
          yield* queue.push("configured", 1)
          const first = yield* queue.pull().pipe(Effect.flatten)
          const again = yield* queue.pull(Duration.seconds(3)).pipe(Effect.flatten)
          expect(again.message.attempt).toBe(2)
          expect(first.message.taskId).toBe("configured")
          expect((yield* keysOf(queueName)).length).toBeGreaterThan(0)
        })
      )
    )

    it.live("QueueManager.layer({ backend: 'redis' }) loads this backend", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* Layer.build(
            QM.QueueManager.layer({ backend: "redis", queueName, redisUrl })
          ).pipe(Effect.map(Context.get(QM.QueueManager)))
          expect(queue.backend).toBe("redis")
          expect(yield* queue.push("selected", 1)).toBe(true)
          expect(yield* queue.length).toBe(1)
        })
      )
    )

    it.live("a queue name that would break the hash tag is refused", () =>
      Effect.gen(function* () {
        for (const queueName of ["", "a}b", "{x"]) {
          const result = yield* Effect.either(Effect.scoped(instance(queueName)))
          expect(Either.isLeft(result) && result.left._tag, queueName).toBe("QueueError")
        }
      })
    )
  })
})

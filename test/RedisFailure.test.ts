/**
 * The Redis backend when Redis misbehaves: connections killed in mid-stream, a server that is
 * unreachable, silent, killed, frozen, or has lost its script cache. The last ones run on a
 * private `redis-server` started by the test (skipped, loudly, when the binary is missing).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { createServer, type Server, type Socket } from "node:net"
import { describe, expect, it } from "@effect/vitest"
import {
  Context,
  Duration,
  Effect,
  Either,
  Fiber,
  Layer,
  Option,
  Redacted,
  Schedule,
  type Scope
} from "effect"
import { Redis } from "ioredis"
import * as RedisQueue from "../layers/RedisQueue.js"
import type { QueueError } from "../src/Errors.js"
import * as QM from "../src/QueueManager.js"
import { uniqueQueueName } from "./conformance.js"
import { describeWithServer, redisUrl } from "./services.js"

/** A plain client on `url` for the test's own commands, closed after `f`. */
const withClient = <A>(url: string, f: (client: Redis) => Promise<A>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const client = new Redis(url, { maxRetriesPerRequest: 1 })
      client.on("error", () => {})
      return client
    }),
    (client) => Effect.tryPromise(() => f(client)),
    (client) => Effect.sync(() => client.disconnect())
  )

const cleanup = (url: string, queueName: string) =>
  withClient(url, (client) => client.del(...Object.values(RedisQueue.keys(queueName)))).pipe(Effect.orDie)

/** One "process": a queue service built in the current scope. */
const instance = (options: RedisQueue.RedisQueueOptions) =>
  Layer.build(RedisQueue.layer(options)).pipe(Effect.map(Context.get(QM.QueueManager)))

/** Kills the queue's connections on the server (`CLIENT KILL ID`); returns how many. */
const killConnections = (url: string, queueName: string) =>
  withClient(url, async (client) => {
    const prefix = RedisQueue.connectionNamePrefix(queueName)
    const list = (await client.client("LIST")) as string
    const ids = list
      .split("\n")
      .filter((line) => /\bname=(\S+)/.exec(line)?.[1]?.startsWith(prefix))
      .map((line) => /\bid=(\d+)/.exec(line)![1]!)
    for (const id of ids) await client.client("KILL", "ID", id)
    return ids.length
  })

/** A TCP port nobody listens on right now. */
const freePort = Effect.async<number>((resume) => {
  const server = createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    server.close(() => resume(Effect.succeed(typeof address === "object" && address ? address.port : 0)))
  })
})

const hasRedisServer = spawnSync("redis-server", ["--version"]).status === 0

/** A private `redis-server` for tests that stop, freeze or flush it; killed with the scope. */
const privateRedis = Effect.gen(function* () {
  const port = yield* freePort
  const url = `redis://127.0.0.1:${port}`
  let child: ChildProcess | undefined
  const start = Effect.gen(function* () {
    child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      {
        stdio: "ignore"
      }
    )
    yield* withClient(url, (c) => c.ping()).pipe(
      Effect.retry(Schedule.spaced(Duration.millis(50)).pipe(Schedule.intersect(Schedule.recurs(100))))
    )
  })
  const signal = (name: NodeJS.Signals) => Effect.sync(() => child?.kill(name))
  const stop = Effect.gen(function* () {
    const exited = child
    if (exited === undefined || exited.exitCode !== null) return
    yield* Effect.async<void>((resume) => {
      exited.once("exit", () => resume(Effect.void))
      exited.kill("SIGCONT")
      exited.kill("SIGKILL")
    })
  })
  yield* Effect.acquireRelease(start, () => stop)
  return { url, start, stop, freeze: signal("SIGSTOP"), thaw: signal("SIGCONT") }
})

/** A TCP server that accepts connections and never answers. */
const silentServer = Effect.acquireRelease(
  Effect.async<{ readonly server: Server; readonly sockets: Set<Socket>; readonly port: number }>(
    (resume) => {
      const sockets = new Set<Socket>()
      const server = createServer((socket) => {
        sockets.add(socket)
        socket.on("error", () => {})
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        resume(
          Effect.succeed({ server, sockets, port: typeof address === "object" && address ? address.port : 0 })
        )
      })
    }
  ),
  ({ server, sockets }) =>
    Effect.async<void>((resume) => {
      for (const socket of sockets) socket.destroy()
      server.close(() => resume(Effect.void))
    })
)

const isQueueError = (e: { readonly _tag: string }): e is QueueError => e._tag === "QueueError"

/** Retries a call through a Redis outage: `QueueError` means "outcome unknown, try again". */
const retried = <A, E extends { readonly _tag: string }>(effect: Effect.Effect<A, E>) =>
  effect.pipe(
    Effect.retry({
      schedule: Schedule.spaced(Duration.millis(20)),
      while: isQueueError,
      times: 500
    })
  )

await describeWithServer("Redis", redisUrl, "RedisQueue failures", () => {
  it.live(
    "connections killed in mid-stream: the backend reconnects and every accepted task is delivered",
    () => {
      const queueName = uniqueQueueName("redis-kill")
      return Effect.gen(function* () {
        const queue = yield* instance({ queueName, redisUrl, leaseDuration: "1 second" })
        const accepted = new Set<string>()
        const delivered = new Set<string>()
        let failures = 0
        const n = 400

        const producer = Effect.forEach(
          Array.from({ length: n }, (_, i) => `k${i}`),
          (id) =>
            queue.push(id, { id }).pipe(
              Effect.tapError(() => Effect.sync(() => failures++)),
              retried,
              // `false` after a failed attempt: that attempt did land, so the task is queued.
              Effect.tap(() => Effect.sync(() => accepted.add(id))),
              Effect.zipRight(Effect.sleep(Duration.millis(2)))
            ),
          { discard: true }
        )
        const consumer = queue.pull(Duration.millis(200)).pipe(
          Effect.flatMap(
            Option.match({
              onNone: () => Effect.void,
              onSome: (delivery) => {
                delivered.add(delivery.message.taskId)
                // A lost ack leaves the lease to expire: the task comes back and is acked again.
                return delivery.ack.pipe(Effect.ignore)
              }
            })
          ),
          Effect.catchAll(() =>
            Effect.sync(() => failures++).pipe(Effect.zipRight(Effect.sleep("50 millis")))
          ),
          Effect.forever
        )
        const consumers = yield* Effect.forEach([1, 2, 3, 4], () => Effect.fork(consumer))
        const producing = yield* Effect.fork(producer)
        let killed = 0
        for (let round = 0; round < 3; round++) {
          yield* Effect.sleep(Duration.millis(250))
          killed += yield* killConnections(redisUrl, queueName)
        }
        yield* Fiber.join(producing)
        expect(accepted.size).toBe(n)
        // Everything accepted is eventually delivered, and the queue ends empty.
        const settled = Effect.gen(function* () {
          const stats = yield* queue.stats
          const missing = [...accepted].filter((id) => !delivered.has(id))
          if (missing.length > 0 || stats.pending + stats.inFlight + stats.delayed + stats.dead > 0) {
            return yield* Effect.fail(`not settled: ${missing.length} missing, ${JSON.stringify(stats)}`)
          }
        })
        yield* settled.pipe(
          Effect.retry(Schedule.spaced(Duration.millis(100)).pipe(Schedule.upTo("20 seconds")))
        )
        yield* Fiber.interruptAll(consumers)
        expect(killed).toBeGreaterThanOrEqual(6)
        // The layer is still usable on fresh connections.
        expect(yield* queue.push("after", 1)).toBe(true)
        expect(Option.map(yield* queue.pull(), (d) => d.message.taskId)).toEqual(Option.some("after"))
        yield* Effect.logInfo(
          `kill test: ${killed} connections killed, ${failures} calls failed and were retried`
        )
      }).pipe(Effect.scoped, Effect.ensuring(cleanup(redisUrl, queueName)))
    },
    60_000
  )

  it.live("an unreachable Redis fails the layer with a clear QueueError, quickly", () =>
    Effect.gen(function* () {
      const [elapsed, result] = yield* Effect.timed(
        Effect.either(
          Effect.scoped(
            instance({
              queueName: uniqueQueueName("redis-down"),
              redisUrl: Redacted.make("redis://:hunter2@127.0.0.1:1")
            })
          )
        )
      )
      expect(Duration.toMillis(elapsed)).toBeLessThan(10_000)
      expect(Either.isLeft(result) && result.left._tag).toBe("QueueError")
      const message = Either.isLeft(result) ? result.left.message : ""
      expect(message).toMatch(/cannot connect to Redis at 127\.0\.0\.1:1/)
      expect(message).not.toContain("hunter2")
    })
  )

  it.live("a server that accepts but never answers fails the layer within the connect timeout", () =>
    Effect.gen(function* () {
      const { port } = yield* silentServer
      const [elapsed, result] = yield* Effect.timed(
        Effect.either(
          Effect.scoped(
            instance({ queueName: uniqueQueueName("redis-silent"), redisUrl: `redis://127.0.0.1:${port}` })
          )
        )
      )
      expect(Either.isLeft(result) && result.left._tag).toBe("QueueError")
      expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(4_000)
      expect(Duration.toMillis(elapsed)).toBeLessThan(10_000)
    }).pipe(Effect.scoped)
  )

  describe.skipIf(!hasRedisServer)("on a private redis-server", () => {
    if (!hasRedisServer)
      console.warn("\n!!! redis-server is not installed: skipping the private-server failure tests\n")

    const withPrivate = <A, E>(
      f: (
        server: Effect.Effect.Success<typeof privateRedis>,
        queueName: string
      ) => Effect.Effect<A, E, Scope.Scope>
    ) => Effect.scoped(Effect.flatMap(privateRedis, (server) => f(server, uniqueQueueName("redis-private"))))

    it.live("after SCRIPT FLUSH the scripts are sent again and everything still works", () =>
      withPrivate((server, queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance({ queueName, redisUrl: server.url })
          yield* queue.push("before", 1)
          yield* withClient(server.url, (c) => c.script("FLUSH"))
          expect(yield* queue.push("after", 1)).toBe(true)
          const first = yield* queue.pull().pipe(Effect.flatten)
          expect(first.message.taskId).toBe("before")
          yield* first.ack
          const second = yield* queue.pull().pipe(Effect.flatten)
          expect(second.message.taskId).toBe("after")
          yield* second.ack
          expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
          const info = yield* withClient(server.url, (c) => c.info("commandstats"))
          expect(info).toMatch(/cmdstat_evalsha:calls=\d+/)
          expect(info).toMatch(/cmdstat_eval:calls=[1-9]/)
        })
      )
    )

    it.live(
      "a push while Redis is down fails with QueueError at once; after a restart the queue works again",
      () =>
        withPrivate((server, queueName) =>
          Effect.gen(function* () {
            const queue = yield* instance({ queueName, redisUrl: server.url })
            expect(yield* queue.push("up", 1)).toBe(true)
            yield* server.stop
            const [elapsed, pushed] = yield* Effect.timed(Effect.either(queue.push("while-down", 1)))
            expect(Either.isLeft(pushed) && pushed.left._tag).toBe("QueueError")
            expect(Duration.toMillis(elapsed)).toBeLessThan(5_000)
            const pulled = yield* Effect.either(queue.pull(Duration.millis(500)))
            expect(Either.isLeft(pulled) && pulled.left._tag).toBe("QueueError")
            yield* server.start
            // The server came back empty (no persistence); the layer reconnects by itself.
            expect(yield* retried(queue.push("back", 1))).toBe(true)
            const delivery = yield* retried(queue.pull(Duration.seconds(2))).pipe(Effect.flatten)
            expect(delivery.message.taskId).toBe("back")
            yield* delivery.ack
          })
        )
    )

    it.live(
      "a frozen Redis (SIGSTOP) makes a push fail within the command timeout instead of hanging",
      () =>
        withPrivate((server, queueName) =>
          Effect.gen(function* () {
            const queue = yield* instance({ queueName, redisUrl: server.url })
            expect(yield* queue.push("up", 1)).toBe(true)
            yield* (yield* queue.pull().pipe(Effect.flatten)).ack
            const waiting = yield* Effect.fork(Effect.either(queue.pull(Duration.seconds(30))))
            yield* Effect.sleep(Duration.millis(100))
            yield* server.freeze
            const [elapsed, pushed] = yield* Effect.timed(Effect.either(queue.push("frozen", 1)))
            expect(Either.isLeft(pushed) && pushed.left._tag).toBe("QueueError")
            expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(4_000)
            expect(Duration.toMillis(elapsed)).toBeLessThan(7_000)
            yield* server.thaw
            // The frozen push may have landed once Redis resumed: its outcome was unknown.
            expect(yield* retried(queue.push("thawed", 1))).toBe(true)
            // The blocked pull either failed with QueueError during the freeze or got a task.
            const pulled = yield* Fiber.join(waiting)
            const ids: Array<string> = []
            if (Either.isLeft(pulled)) expect(pulled.left._tag).toBe("QueueError")
            else if (Option.isSome(pulled.right)) {
              ids.push(pulled.right.value.message.taskId)
              yield* pulled.right.value.ack
            }
            for (;;) {
              const next = yield* queue.pull(Duration.millis(100))
              if (Option.isNone(next)) break
              ids.push(next.value.message.taskId)
              yield* next.value.ack
            }
            expect(ids).toContain("thawed")
            expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
          })
        ),
      30_000
    )
  })
})

/**
 * Faults on the real broker: connections closed by the broker while pushing and pulling, holders
 * that die with unacked tasks, a broker that goes away and comes back (through a local TCP proxy
 * the test controls), garbage on the queue, a queue deleted under a waiting claim, a broker that
 * is not there at all. Only this suite's own connections are closed (found by their
 * `connection_name`), so other suites can run meanwhile.
 */
import { type AddressInfo, createServer, type Socket, connect as tcpConnect } from "node:net"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Either, Exit, Fiber, Layer, Option, Schedule, type Scope } from "effect"
import * as RabbitMqQueue from "../layers/RabbitMqQueue.js"
import { QueueError } from "../src/Errors.js"
import * as QM from "../src/QueueManager.js"
import { drain, uniqueQueueName } from "./conformance.js"
import { cleanup, dropConnections, instance, withChannel } from "./fixtures/rabbitmq.js"
import { describeWithServer, rabbitmqUrl } from "./services.js"

const onQueue = <A, E>(f: (queueName: string) => Effect.Effect<A, E, Scope.Scope>) => {
  const queueName = uniqueQueueName("rmq-fault")
  return Effect.scoped(f(queueName)).pipe(Effect.ensuring(Effect.orDie(cleanup(queueName))))
}

/** A TCP proxy to the broker that the test can cut and restore. */
interface BrokerProxy {
  readonly url: string
  /** Drops every proxied connection and refuses new ones, as if the broker went away. */
  readonly cut: Effect.Effect<void>
  /** Accepts connections again, on the same port. */
  readonly restore: Effect.Effect<void>
  /** Holds every byte in both directions (the connections stay open) until `resume`. */
  readonly stall: Effect.Effect<void>
  /** Delivers what was held and forwards again. */
  readonly resume: Effect.Effect<void>
}

const proxy: Effect.Effect<BrokerProxy, never, Scope.Scope> = Effect.gen(function* () {
  const target = new URL(rabbitmqUrl)
  const sockets = new Set<Socket>()
  let stalled = false
  const held: Array<readonly [Socket, Buffer]> = []
  const forward = (from: Socket, to: Socket) =>
    from.on("data", (chunk: Buffer) => {
      if (stalled) held.push([to, chunk])
      else to.write(chunk)
    })
  const make = () =>
    createServer((client) => {
      const upstream = tcpConnect(Number(target.port || 5672), target.hostname)
      for (const socket of [client, upstream]) {
        sockets.add(socket)
        socket.on("error", () => {})
        socket.on("close", () => {
          sockets.delete(socket)
          client.destroy()
          upstream.destroy()
        })
      }
      forward(client, upstream)
      forward(upstream, client)
    })
  let server = make()
  const listen = (port: number) =>
    Effect.async<number>((resume) => {
      server.listen(port, "127.0.0.1", () => resume(Effect.succeed((server.address() as AddressInfo).port)))
    })
  const drop = () => {
    for (const socket of sockets) socket.destroy()
  }
  const port = yield* listen(0)
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      drop()
      server.close()
    })
  )
  const url = new URL(rabbitmqUrl)
  url.port = String(port)
  return {
    url: url.toString(),
    cut: Effect.async<void>((resume) => {
      drop()
      server.close(() => resume(Effect.void))
    }),
    restore: Effect.suspend(() => {
      server = make()
      return Effect.asVoid(listen(port))
    }),
    stall: Effect.sync(() => {
      stalled = true
    }),
    resume: Effect.sync(() => {
      stalled = false
      for (const [to, chunk] of held.splice(0)) to.write(chunk)
    })
  }
})

await describeWithServer("RabbitMQ", rabbitmqUrl, "RabbitMQ backend under faults", () => {
  describe("connection loss", () => {
    it.live(
      "recovers when the broker closes its connections mid-stream; every confirmed task arrives, none twice unless it was in flight",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const producer = yield* instance(queueName)
            const consumer = yield* instance(queueName)
            const n = 400
            const confirmed = new Set<string>()
            const retried = new Set<string>()
            const deliveries: Array<{ readonly id: string; readonly attempt: number }> = []
            const pushing = yield* Effect.forEach(
              Array.from({ length: n }, (_, i) => `f${i}`),
              (id) =>
                producer.push(id, { id }).pipe(
                  Effect.tapError(() => Effect.sync(() => retried.add(id))),
                  Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("30 seconds"))),
                  Effect.tap(() => Effect.sync(() => confirmed.add(id))),
                  Effect.zipRight(Effect.sleep(Duration.millis(8)))
                ),
              { discard: true }
            ).pipe(Effect.fork)
            const delivered = () => new Set(deliveries.map((d) => d.id))
            const pulling = yield* consumer.pull(Duration.millis(200)).pipe(
              Effect.flatMap(
                Option.match({
                  onNone: () => Effect.void,
                  onSome: (delivery) =>
                    Effect.sync(() =>
                      deliveries.push({ id: delivery.message.taskId, attempt: delivery.message.attempt })
                    ).pipe(Effect.zipRight(Effect.ignore(delivery.ack)))
                })
              ),
              Effect.catchAll(() => Effect.sleep(Duration.millis(50))),
              Effect.repeat({
                until: () => confirmed.size === n && [...confirmed].every((id) => delivered().has(id))
              }),
              Effect.fork
            )
            yield* Effect.sleep(Duration.millis(500))
            expect(yield* dropConnections(queueName)).toBe(2)
            yield* Fiber.join(pushing)
            yield* Fiber.join(pulling).pipe(
              Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => "drain" })
            )
            expect(confirmed.size).toBe(n)
            const seen = new Map<string, Array<number>>()
            for (const { id, attempt } of deliveries) seen.set(id, [...(seen.get(id) ?? []), attempt])
            for (const [id, attempts] of seen) {
              if (attempts.length === 1) continue
              // A second delivery is either the broker's redelivery of an unacked task (a later
              // attempt) or the copy of a push whose confirm was lost and was pushed again.
              expect(attempts.some((a) => a > 1) || retried.has(id), `${id}: ${attempts}`).toBe(true)
            }
            expect((yield* consumer.stats).inFlight).toBe(0)
          })
        ),
      60_000
    )

    it.live("a holder whose scope closes with unacked tasks: they come back as the next attempt", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const survivor = yield* instance(queueName)
          yield* survivor.pushBatch([1, 2, 3].map((n) => ({ taskId: `u${n}`, data: n })))
          const taken = yield* Effect.scoped(
            Effect.gen(function* () {
              const doomed = yield* instance(queueName)
              const batch = yield* doomed.pullBatch(3)
              expect(batch.map((d) => d.message.attempt)).toEqual([1, 1, 1])
              return batch
            })
          )
          const back = yield* survivor.pullBatch(3, Duration.seconds(5))
          expect(back.map((d) => d.message.taskId).sort()).toEqual(["u1", "u2", "u3"])
          expect(back.map((d) => d.message.attempt)).toEqual([2, 2, 2])
          const stale = yield* Effect.either(taken[0]!.ack)
          expect(Either.isLeft(stale) && stale.left._tag).toBe("LeaseLost")
          yield* Effect.forEach(back, (d) => d.ack, { discard: true })
          expect(yield* survivor.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
        })
      )
    )

    it.live(
      "a holder whose connection is closed: its tasks come back as the next attempt, its old tokens are refused and never acked on the new channel",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const holder = yield* instance(queueName)
            yield* holder.pushBatch([1, 2].map((n) => ({ taskId: `h${n}`, data: n })))
            const old = yield* holder.pullBatch(2)
            expect(old.length).toBe(2)
            expect(yield* dropConnections(queueName)).toBe(1)
            const back = yield* holder.pullBatch(2, Duration.seconds(15))
            const rest = back.length < 2 ? yield* holder.pullBatch(2, Duration.seconds(5)) : []
            const all = [...back, ...rest]
            expect(all.map((d) => d.message.taskId).sort()).toEqual(["h1", "h2"])
            expect(all.map((d) => d.message.attempt)).toEqual([2, 2])
            for (const d of old) {
              const ack = yield* Effect.either(d.ack)
              expect(Either.isLeft(ack) && ack.left._tag).toBe("LeaseLost")
              const nack = yield* Effect.either(d.nack())
              expect(Either.isLeft(nack) && nack.left._tag).toBe("LeaseLost")
            }
            // Had an old delivery tag reached the new channel, the broker would have closed it
            // (406) and these would fail or come back.
            yield* Effect.forEach(all, (d) => d.ack, { discard: true })
            yield* holder.push("after", 1)
            expect(yield* drain(holder)).toEqual(["after"])
            expect(yield* holder.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
          })
        ),
      30_000
    )

    it.live(
      "a broker that goes away: pushes fail within the bound, then the backend reconnects by itself",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const broker = yield* proxy
            const queue = yield* instance(queueName, {
              rabbitmqUrl: broker.url,
              operationTimeout: "1 second",
              connectTimeout: "1 second"
            })
            yield* queue.push("before", 1)
            yield* broker.cut
            const [elapsed, outage] = yield* Effect.timed(Effect.either(queue.push("during", 1)))
            expect(Either.isLeft(outage) && outage.left._tag).toBe("QueueError")
            expect(Duration.toMillis(elapsed)).toBeLessThan(5_000)
            const pulled = yield* Effect.either(queue.pull(Duration.millis(300)))
            expect(Either.isLeft(pulled) && pulled.left._tag).toBe("QueueError")
            yield* broker.restore
            yield* queue
              .push("after", 1)
              .pipe(Effect.retry(Schedule.spaced("200 millis").pipe(Schedule.upTo("15 seconds"))))
            const ids = yield* drain(queue)
            expect(ids.filter((id) => id !== "during")).toEqual(["before", "after"])
          })
        )
    )

    it.live(
      "a broker that stops answering: a push fails once its confirm is overdue, and succeeds after",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const broker = yield* proxy
            const queue = yield* instance(queueName, {
              rabbitmqUrl: broker.url,
              operationTimeout: "1 second"
            })
            yield* queue.push("before", 1)
            yield* broker.stall
            const [elapsed, stalled] = yield* Effect.timed(Effect.either(queue.push("unconfirmed", 1)))
            expect(Either.isLeft(stalled) && stalled.left._tag).toBe("QueueError")
            expect(Either.isLeft(stalled) && stalled.left.message).toMatch(
              /did not confirm .* may or may not/
            )
            expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(900)
            expect(Duration.toMillis(elapsed)).toBeLessThan(3_000)
            yield* broker.resume
            yield* queue.push("after", 1)
            // The overdue push did reach the broker: "may or may not" means exactly that.
            expect(yield* drain(queue)).toEqual(["before", "unconfirmed", "after"])
          })
        )
    )

    it.live("a queue deleted under a waiting claim: the backend redeclares it and carries on", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          const waiting = yield* Effect.fork(Effect.either(queue.pull(Duration.seconds(2))))
          yield* Effect.sleep(Duration.millis(200))
          yield* withChannel((channel) => channel.deleteQueue(queueName))
          const result = yield* Fiber.join(waiting)
          expect(
            Either.isRight(result) ? Option.isNone(result.right) : result.left._tag === "QueueError"
          ).toBe(true)
          yield* queue
            .push("again", 1)
            .pipe(Effect.retry(Schedule.spaced("200 millis").pipe(Schedule.upTo("10 seconds"))))
          expect(yield* drain(queue)).toEqual(["again"])
        })
      )
    )
  })

  describe("bad messages and unreachable brokers", () => {
    it.live("a non-JSON message published straight onto the queue is dead-lettered with the reason", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          yield* withChannel(async (channel) => {
            channel.sendToQueue(queueName, Buffer.from("\u0000\u0001 not json"), {
              persistent: true,
              priority: 9
            })
            channel.sendToQueue(queueName, Buffer.from('{"task_id":"x"}'), {
              persistent: true,
              messageId: "x"
            })
            await channel.waitForConfirms()
          })
          yield* queue.push("good", { ok: true }, 0)
          const delivery = yield* queue.pull().pipe(Effect.flatten)
          expect(delivery.message.taskId).toBe("good")
          yield* delivery.ack
          const letters = yield* queue.deadLetters()
          expect(letters.length).toBe(2)
          for (const letter of letters) expect(letter.error).toMatch(/^malformed message: /)
          expect(letters.map((l) => l.taskId).sort()).toEqual(["", "x"])
          expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 2 })
        })
      )
    )

    it.live("a broker that is not there: the layer fails with QueueError within the bound", () =>
      Effect.gen(function* () {
        const unreachable = "amqp://guest:guest@127.0.0.1:1"
        for (const built of [
          Layer.build(RabbitMqQueue.layer({ queueName: "nowhere", rabbitmqUrl: unreachable })),
          Layer.build(
            QM.QueueManager.layer({ backend: "rabbitmq", queueName: "nowhere", rabbitmqUrl: unreachable })
          )
        ]) {
          const [elapsed, exit] = yield* Effect.timed(Effect.exit(Effect.scoped(built)))
          expect(Exit.isFailure(exit)).toBe(true)
          const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
          expect(error).toBeInstanceOf(QueueError)
          expect((error as QueueError).message).toMatch(/cannot connect to RabbitMQ at 127\.0\.0\.1:1/)
          expect((error as QueueError).message).not.toMatch(/guest/)
          expect(Duration.toMillis(elapsed)).toBeLessThan(10_000)
        }
      })
    )

    it.live("a broker that never answers: the layer fails with QueueError after the connect timeout", () =>
      Effect.gen(function* () {
        // A listener that accepts and never speaks AMQP.
        const silent = createServer(() => {})
        const port = yield* Effect.async<number>((resume) => {
          silent.listen(0, "127.0.0.1", () => resume(Effect.succeed((silent.address() as AddressInfo).port)))
        })
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            silent.close()
          })
        )
        const [elapsed, exit] = yield* Effect.timed(
          Effect.exit(
            Effect.scoped(
              Layer.build(
                RabbitMqQueue.layer({
                  queueName: "silent",
                  rabbitmqUrl: `amqp://guest:guest@127.0.0.1:${port}`,
                  connectTimeout: "1 second"
                })
              )
            )
          )
        )
        expect(Exit.isFailure(exit)).toBe(true)
        expect(String(Exit.isFailure(exit) ? exit.cause : "")).toMatch(/cannot connect to RabbitMQ/)
        expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(900)
        expect(Duration.toMillis(elapsed)).toBeLessThan(5_000)
      }).pipe(Effect.scoped)
    )
  })
})

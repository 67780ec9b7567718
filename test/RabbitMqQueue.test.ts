/**
 * The RabbitMQ backend on the real broker: the conformance suite (with the differences RabbitMQ
 * documents), then what only RabbitMQ has (topology, message properties, headers, several
 * processes on one queue, unroutable publishes, the backend selector).
 */
import { describe, expect, it } from "@effect/vitest"
import { ConfigProvider, Context, Duration, Effect, Either, Layer, Option, type Scope } from "effect"
import * as RabbitMqQueue from "../layers/RabbitMqQueue.js"
import * as Topology from "../layers/rabbitmq/Topology.js"
import * as QM from "../src/QueueManager.js"
import { conformance, drain, uniqueQueueName } from "./conformance.js"
import { cleanup, dropConnections, instance, withChannel } from "./fixtures/rabbitmq.js"
import { describeWithServer, rabbitmqUrl } from "./services.js"

/** Publishes a raw body straight onto the main queue. */
const plant = (queueName: string, id: string | undefined, priority: number, body: string) =>
  withChannel(async (channel) => {
    channel.sendToQueue(queueName, Buffer.from(body), {
      persistent: true,
      priority,
      ...(id === undefined ? {} : { messageId: id })
    })
    await channel.waitForConfirms()
  })

/** Runs `f` on a fresh queue name and deletes its queues afterwards. */
const onQueue = <A, E>(f: (queueName: string) => Effect.Effect<A, E, Scope.Scope>) => {
  const queueName = uniqueQueueName("rmq")
  return Effect.scoped(f(queueName)).pipe(Effect.ensuring(Effect.orDie(cleanup(queueName))))
}

const meeting = (n: number) => ({ audio_files: [`meeting-${n}.wav`], meeting_type: "weekly_sync" })

await describeWithServer("RabbitMQ", rabbitmqUrl, "RabbitMQ backend", () => {
  conformance({
    name: "RabbitMQ",
    layer: (queueName, { leaseDuration }) => RabbitMqQueue.layer({ queueName, rabbitmqUrl, leaseDuration }),
    plant: (queueName, id, priority, body) => plant(queueName, id, priority, body),
    cleanup,
    idempotentPush: false,
    replacesDeadLetters: false,
    leaseExpiry: false,
    releaseInPlace: false,
    strictOrder: false,
    exactCounts: false,
    dropConnections
  })

  describe("RabbitMQ specifics", () => {
    it.live(
      "declares the topology idempotently: a priority queue, its dead-letter queue, the delay buckets",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            yield* instance(queueName)
            // A second process declares the same arguments without a PRECONDITION_FAILED.
            yield* instance(queueName)
            const names = Topology.names(queueName)
            const declared = yield* withChannel(async (channel) => ({
              main: await channel.assertQueue(names.main, Topology.mainQueueOptions(queueName)),
              dead: await channel.checkQueue(names.dead),
              delays: await Promise.all(
                Topology.delayBuckets.map((bucket) => channel.checkQueue(names.delay(bucket)))
              )
            }))
            expect(declared.main.queue).toBe(queueName)
            expect(declared.dead.queue).toBe(`${queueName}.dead`)
            expect(declared.delays.map((reply) => reply.queue)).toEqual(
              Topology.delayBuckets.map((bucket) => `${queueName}.delay.${bucket}`)
            )
            // Declaring the main queue without its priority ceiling is refused: it has one.
            const mismatch = yield* Effect.either(
              withChannel((channel) => channel.assertQueue(names.main, { durable: true }))
            )
            expect(Either.isLeft(mismatch) && String(mismatch.left.cause)).toMatch(/PRECONDITION_FAILED/)
          })
        )
    )

    it.live("publishes persistent messages with the task id and priority, attempts in a header", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          // The process's feed would take the requeued copy: it gives it back as it closes.
          yield* Effect.scoped(
            Effect.gen(function* () {
              const queue = yield* instance(queueName)
              yield* queue.push("props", meeting(1), 7)
              const delivery = yield* queue.pull().pipe(Effect.flatten)
              yield* delivery.nack()
            })
          )
          const raw = yield* withChannel(async (channel) => {
            const message = await channel.get(queueName, { noAck: true })
            return message === false ? undefined : message
          })
          expect(raw?.properties.messageId).toBe("props")
          expect(raw?.properties.priority).toBe(7)
          expect(raw?.properties.deliveryMode).toBe(2)
          expect(raw?.properties.contentType).toBe("application/json")
          expect(raw?.properties.headers?.[Topology.header.attempt]).toBe(1)
          expect(JSON.parse(raw!.content.toString()).task_id).toBe("props")
        })
      )
    )

    it.live("a delayed nack waits in its delay bucket queue and comes back with its priority", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          yield* queue.push("slow", meeting(1), 3)
          yield* (yield* queue.pull().pipe(Effect.flatten)).nack({ delay: "300 millis" })
          const bucket = yield* withChannel((channel) => channel.checkQueue(`${queueName}.delay.512`))
          expect(bucket.messageCount).toBe(1)
          // Redeclaring with the same arguments succeeds: the dead-letter route is fixed per queue.
          yield* withChannel((channel) =>
            channel.assertQueue(`${queueName}.delay.512`, Topology.delayQueueOptions(queueName))
          )
          const again = yield* queue.pull(Duration.seconds(5)).pipe(Effect.flatten)
          expect(again.message.taskId).toBe("slow")
          expect(again.message.priority).toBe(3)
          expect(again.message.attempt).toBe(2)
        })
      )
    )

    it.effect("delay buckets are powers of two from 256 ms to 2^31 ms", () =>
      Effect.sync(() => {
        expect(Topology.bucketFor(1)).toBe(256)
        expect(Topology.bucketFor(256)).toBe(256)
        expect(Topology.bucketFor(257)).toBe(512)
        expect(Topology.bucketFor(1000)).toBe(1024)
        expect(Topology.bucketFor(2 ** 31)).toBe(2 ** 31)
        expect(Topology.delayBuckets.length).toBe(24)
        expect(Topology.allQueues("q").length).toBe(26)
      })
    )

    it.live("a delay over the RabbitMQ maximum fails and leaves the lease held", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          yield* queue.push("far", meeting(1))
          const delivery = yield* queue.pull().pipe(Effect.flatten)
          const result = yield* Effect.either(delivery.nack({ delay: Duration.days(30) }))
          expect(Either.isLeft(result) && result.left._tag).toBe("QueueError")
          yield* delivery.ack
        })
      )
    )

    it.live("a task id over 255 bytes travels in a header, through nack, dead letters and retry", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          const id = "é".repeat(200)
          expect(yield* queue.push(id, meeting(1))).toBe(true)
          const first = yield* queue.pull().pipe(Effect.flatten)
          expect(first.message.taskId).toBe(id)
          yield* first.nack()
          const second = yield* queue.pull().pipe(Effect.flatten)
          expect(second.message.taskId).toBe(id)
          expect(second.message.attempt).toBe(2)
          yield* second.nack({ requeue: false, error: "long id" })
          const [letter] = yield* queue.deadLetters()
          expect(letter?.taskId).toBe(id)
          expect(yield* queue.retryDead(id)).toBe(true)
          expect((yield* queue.pull().pipe(Effect.flatten)).message.taskId).toBe(id)
        })
      )
    )

    it.live("reading dead letters loses none and keeps their order", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          yield* queue.pushBatch([1, 2, 3].map((n) => ({ taskId: `d${n}`, data: meeting(n) })))
          for (let n = 1; n <= 3; n++) {
            yield* (yield* queue.pull().pipe(Effect.flatten)).nack({ requeue: false, error: `e${n}` })
          }
          const ids = (letters: ReadonlyArray<QM.DeadLetter>) => letters.map((l) => `${l.taskId}:${l.error}`)
          expect(ids(yield* queue.deadLetters())).toEqual(["d1:e1", "d2:e2", "d3:e3"])
          expect(ids(yield* queue.deadLetters(2))).toEqual(["d1:e1", "d2:e2"])
          expect(yield* queue.retryDead("d2")).toBe(true)
          expect(ids(yield* queue.deadLetters())).toEqual(["d1:e1", "d3:e3"])
          expect((yield* queue.stats).dead).toBe(2)
          const letter = (yield* queue.deadLetters())[0]!
          expect(letter.deadAt).toBeGreaterThan(Date.now() - 60_000)
          expect(letter.attempts).toBe(1)
        })
      )
    )

    it.live("several processes share one queue; inFlight counts this process's leases only", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const a = yield* instance(queueName)
          const b = yield* instance(queueName)
          yield* a.pushBatch([
            { taskId: "low", data: 1, priority: 1 },
            { taskId: "high", data: 2, priority: 9 },
            { taskId: "mid", data: 3, priority: 5 }
          ])
          const fromB = yield* b.pull().pipe(Effect.flatten)
          expect(fromB.message.taskId).toBe("high")
          const fromA = yield* a.pull().pipe(Effect.flatten)
          expect(fromA.message.taskId).toBe("mid")
          expect(yield* a.stats).toEqual({ pending: 1, inFlight: 1, delayed: 0, dead: 0 })
          expect(yield* b.stats).toEqual({ pending: 1, inFlight: 1, delayed: 0, dead: 0 })
          // A token is good only in the process that holds it.
          yield* fromB.ack
          yield* fromA.ack
          // "low" went to whichever feed had room first; a's gives it back once idle.
          const low = yield* b.pull(Duration.seconds(5)).pipe(Effect.flatten)
          expect([low.message.taskId, low.message.attempt]).toEqual(["low", 1])
        })
      )
    )

    it.live("a feed no claim uses for a second gives back what it holds, as the same attempt", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const a = yield* instance(queueName)
          const b = yield* instance(queueName)
          yield* a.pushBatch(["f1", "f2", "f3"].map((taskId, n) => ({ taskId, data: n })))
          yield* a.pull().pipe(
            Effect.flatten,
            Effect.flatMap((delivery) => delivery.ack)
          )
          // Its ack made room in a's feed: the broker delivers the next task there.
          yield* Effect.sleep(Duration.millis(100))
          const got = yield* b.pull(Duration.zero).pipe(Effect.flatten)
          expect(got.message.taskId).toBe("f3")
          expect(Option.isNone(yield* b.pull(Duration.zero))).toBe(true)
          expect((yield* a.stats).pending).toBe(1)
          const back = yield* b.pull(Duration.seconds(5)).pipe(Effect.flatten)
          expect([back.message.taskId, back.message.attempt]).toEqual(["f2", 1])
          expect((yield* a.stats).pending).toBe(0)
        })
      )
    )

    it.live("acks in any order, one turn or several, settle each task once: none comes back", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          // Groups of positions acked together (one turn each): heads, tails and gaps of the batch.
          const orders: ReadonlyArray<ReadonlyArray<ReadonlyArray<number>>> = [
            [[4, 2], [0], [1, 3]],
            [[0, 1, 2, 3, 4]],
            [[3], [1], [4, 0, 2]],
            [
              [1, 2],
              [0, 4, 3]
            ]
          ]
          for (const [round, groups] of orders.entries()) {
            yield* Effect.scoped(
              Effect.gen(function* () {
                const queue = yield* instance(queueName)
                yield* queue.pushBatch(
                  Array.from({ length: 5 }, (_, n) => ({ taskId: `r${round}-${n}`, data: n }))
                )
                // A claim answers with what has arrived: claim until all five are held.
                const batch: Array<QM.Delivery> = []
                while (batch.length < 5)
                  batch.push(...(yield* queue.pullBatch(5 - batch.length, Duration.seconds(5))))
                for (const group of groups) {
                  yield* Effect.all(
                    group.map((n) => batch[n]!.ack),
                    { concurrency: "unbounded" }
                  )
                  yield* Effect.sleep(Duration.millis(20))
                }
                expect((yield* queue.stats).inFlight).toBe(0)
              })
            )
            // Anything left unacked would be redelivered once the holder's channel closed.
            const other = yield* instance(queueName)
            expect(Option.isNone(yield* other.pull(Duration.millis(200)))).toBe(true)
          }
        })
      )
    )

    it.live("a queue that closes gives back what its feed holds, as the same attempt", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          yield* Effect.scoped(
            Effect.gen(function* () {
              const a = yield* instance(queueName)
              yield* a.pushBatch(["c1", "c2", "c3"].map((taskId, n) => ({ taskId, data: n })))
              const batch = yield* a.pullBatch(2)
              expect(batch.map((d) => d.message.taskId)).toEqual(["c1", "c2"])
              yield* Effect.forEach(batch, (delivery) => delivery.ack)
              yield* Effect.sleep(Duration.millis(100))
              expect((yield* a.stats).pending).toBe(1)
            })
          )
          const b = yield* instance(queueName)
          const back = yield* b.pull(Duration.zero).pipe(Effect.flatten)
          expect([back.message.taskId, back.message.attempt]).toEqual(["c3", 1])
        })
      )
    )

    it.live("a blocked pull in one process wakes up on a push from another", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const producer = yield* instance(queueName)
          const consumer = yield* instance(queueName)
          const waiting = yield* Effect.fork(consumer.pull(Duration.seconds(10)))
          yield* Effect.sleep(Duration.millis(100))
          yield* producer.push("remote", meeting(1))
          const got = yield* waiting.await.pipe(Effect.flatten)
          expect(Option.map(got, (d) => d.message.taskId)).toEqual(Option.some("remote"))
        })
      )
    )

    it.live("a waiting pullBatch takes what arrives, up to max", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* instance(queueName)
          const waiting = yield* Effect.fork(queue.pullBatch(10, Duration.seconds(10)))
          yield* Effect.sleep(Duration.millis(100))
          yield* queue.pushBatch(
            Array.from({ length: 6 }, (_, n) => ({ taskId: `b${n}`, data: n, priority: n }))
          )
          const batch = yield* waiting.await.pipe(Effect.flatten)
          expect(batch.length).toBeGreaterThanOrEqual(1)
          const rest = yield* queue.pullBatch(10, Duration.millis(100))
          const all = [...batch, ...rest].map((d) => d.message.taskId)
          expect(all.sort()).toEqual(["b0", "b1", "b2", "b3", "b4", "b5"])
          // Within one claim, the most urgent first.
          const priorities = batch.map((d) => d.message.priority)
          expect(priorities).toEqual([...priorities].sort((x, y) => y - x))
        })
      )
    )

    it.live(
      "a publish to a queue deleted behind the backend's back is not dropped: the queue is declared again",
      () =>
        onQueue((queueName) =>
          Effect.gen(function* () {
            const queue = yield* instance(queueName)
            yield* queue.push("first", meeting(1))
            const held = yield* queue.pull().pipe(Effect.flatten)
            const names = Topology.names(queueName)
            // The broker would drop these publishes silently; mandatory returns them instead.
            yield* withChannel(async (channel) => {
              await channel.deleteQueue(names.main)
              await channel.deleteQueue(names.delay(1024))
              await channel.deleteQueue(names.dead)
            })
            expect(yield* queue.pushBatch([1, 2].map((n) => ({ taskId: `p${n}`, data: n })))).toEqual([
              true,
              true
            ])
            yield* held.nack({ delay: "1 second" })
            expect(yield* queue.stats).toEqual({ pending: 2, inFlight: 0, delayed: 1, dead: 0 })
            const doomed = yield* queue.pull().pipe(Effect.flatten)
            yield* doomed.nack({ requeue: false, error: "gone" })
            expect((yield* queue.deadLetters()).map((l) => l.taskId)).toEqual(["p1"])
            expect(yield* queue.pull().pipe(Effect.map(Option.map((d) => d.message.taskId)))).toEqual(
              Option.some("p2")
            )
          })
        )
    )

    it.live("QueueManager.layer and layerConfig select the RabbitMQ backend", () =>
      onQueue((queueName) =>
        Effect.gen(function* () {
          const viaSelector = yield* Layer.build(
            QM.QueueManager.layer({ backend: "rabbitmq", queueName, rabbitmqUrl })
          ).pipe(Effect.map(Context.get(QM.QueueManager)))
          expect(viaSelector.backend).toBe("rabbitmq")
          yield* viaSelector.push("selected", meeting(1))
          const viaConfig = yield* Layer.build(RabbitMqQueue.layerConfig).pipe(
            Effect.map(Context.get(QM.QueueManager)),
            Effect.withConfigProvider(
              ConfigProvider.fromMap(
                new Map([
                  ["QUEUE_NAME", queueName],
                  ["RABBITMQ_URL", rabbitmqUrl]
                ])
              )
            )
          )
          expect(viaConfig.queueName).toBe(queueName)
          expect(yield* drain(viaConfig)).toEqual(["selected"])
        })
      )
    )
  })
})

/**
 * The conformance suite: the definition of a backend. Every backend's test file calls
 * `conformance(...)` with a layer factory; what a backend documents as different is passed in
 * `BackendUnderTest` and said explicitly by the test it changes.
 */
import { randomUUID } from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Duration, Effect, Either, Fiber, type Layer, Option, Schedule } from "effect"
import type { QueueError } from "../src/Errors.js"
import type { QueueStats } from "../src/QueueBackend.js"
import { QueueManager, type QueueManagerService } from "../src/QueueManager.js"

/** What the suite needs to know of a backend. */
export interface BackendUnderTest {
  readonly name: string
  /** A queue layer on the queue of this name. */
  readonly layer: (
    queueName: string,
    options: { readonly leaseDuration: Duration.DurationInput }
  ) => Layer.Layer<QueueManager, QueueError>
  /** Puts a raw body straight onto the queue under `id`, bypassing the library. */
  readonly plant: (
    queueName: string,
    id: string,
    priority: number,
    body: string
  ) => Effect.Effect<void, unknown>
  /** Removes everything the queue left on its server. */
  readonly cleanup: (queueName: string) => Effect.Effect<void, unknown>
  /**
   * Default `true`. `false`: push cannot see which ids are pending or in flight, so every push
   * answers `true` and a task pushed twice is delivered twice (RabbitMQ).
   */
  readonly idempotentPush?: boolean | undefined
  /** Default `true`. `false`: pushing the id of a dead letter enqueues the task and leaves the dead letter. */
  readonly replacesDeadLetters?: boolean | undefined
  /**
   * Default `true`. `false`: a lease never expires; the task is handed out again only when its
   * holder's connection closes, which `dropConnections` brings about (RabbitMQ).
   */
  readonly leaseExpiry?: boolean | undefined
  /** Default `true`. `false`: a released task goes to the back of its priority, not back to its place (RabbitMQ). */
  readonly releaseInPlace?: boolean | undefined
  /**
   * Default `true`. `false`: a process holds tasks the broker delivered ahead of its pulls, so a
   * more urgent task that arrives after them is pulled after them (RabbitMQ's standing consumer).
   */
  readonly strictOrder?: boolean | undefined
  /**
   * Default `true`. `false`: `pending` can be off for a moment while the broker is delivering, so
   * counts are checked once they settle, within 3 seconds (RabbitMQ).
   */
  readonly exactCounts?: boolean | undefined
  /** Closes the server side of the queue's connections, as if their process died (needed when `leaseExpiry` is `false`). */
  readonly dropConnections?: ((queueName: string) => Effect.Effect<void, unknown>) | undefined
}

/** A queue name of its own for one test. */
export const uniqueQueueName = (prefix: string) => `${prefix}-${randomUUID().slice(0, 8)}`

const meeting = (n: number) => ({ audio_files: [`meeting-${n}.wav`], meeting_type: "weekly_sync" })

/** Drains whatever is pending now, acking each; returns the task ids in pull order. */
export const drain = (queue: QueueManagerService) =>
  Effect.gen(function* () {
    const ids: Array<string> = []
    for (;;) {
      const delivery = yield* queue.pull(Duration.millis(50))
      if (Option.isNone(delivery)) return ids
      ids.push(delivery.value.message.taskId)
      yield* delivery.value.ack
    }
  })

/** Runs the conformance suite against one backend. */
export const conformance = (backend: BackendUnderTest) =>
  describe(`QueueManager conformance on ${backend.name}`, () => {
    const withQueue = <A, E>(
      f: (queue: QueueManagerService, queueName: string) => Effect.Effect<A, E>,
      leaseDuration: Duration.DurationInput = "30 seconds"
    ) => {
      const queueName = uniqueQueueName(`conf-${backend.name}`)
      return QueueManager.pipe(
        Effect.flatMap((queue) => f(queue, queueName)),
        Effect.provide(backend.layer(queueName, { leaseDuration })),
        Effect.ensuring(Effect.orDie(backend.cleanup(queueName)))
      )
    }

    /** Runs `check` on what `read` gives; where counts settle, again until it passes or 3 seconds pass. */
    const settled = <A, E>(read: Effect.Effect<A, E>, check: (a: A) => void) =>
      backend.exactCounts === false
        ? Effect.flatMap(read, (a) => Effect.try(() => check(a))).pipe(
            Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("3 seconds"))),
            // Still failing: once more, so the assertion's own error is what the test reports.
            Effect.orElse(() => Effect.map(read, check))
          )
        : Effect.map(read, check)
    const expectStats = (queue: QueueManagerService, expected: QueueStats) =>
      settled(queue.stats, (stats) => expect(stats).toEqual(expected))
    const expectLength = (queue: QueueManagerService, expected: number) =>
      settled(queue.length, (length) => expect(length).toBe(expected))

    it.live("pulls the highest priority first, in push order inside a priority", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          const pushes: Array<[string, number]> = [
            ["a", 5],
            ["b", 1],
            ["c", 10],
            ["d", 5],
            ["e", 10],
            ["f", 0],
            ["g", 5]
          ]
          for (const [id, priority] of pushes) expect(yield* queue.push(id, meeting(1), priority)).toBe(true)
          expect(yield* drain(queue)).toEqual(["c", "e", "a", "d", "g", "b", "f"])
        })
      )
    )

    it.live("delivers the task as pushed, first attempt 1, default priority 5", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.push("task_123", { audio_files: ["meeting.wav"], meeting_type: "weekly_sync", n: 1.5 })
          const delivery = yield* queue.pull().pipe(Effect.flatten)
          expect(delivery.message.taskId).toBe("task_123")
          expect(delivery.message.data).toEqual({
            audio_files: ["meeting.wav"],
            meeting_type: "weekly_sync",
            n: 1.5
          })
          expect(delivery.message.priority).toBe(5)
          expect(delivery.message.attempt).toBe(1)
          expect(delivery.message.enqueuedAt).toBeGreaterThan(0)
          yield* delivery.ack
          yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 0, dead: 0 })
        })
      )
    )

    it.live("pull on an empty queue waits for its timeout and returns None", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          const [elapsed, result] = yield* Effect.timed(queue.pull(Duration.millis(200)))
          expect(Option.isNone(result)).toBe(true)
          expect(Duration.toMillis(elapsed)).toBeGreaterThanOrEqual(150)
        })
      )
    )

    it.live("a blocked pull wakes up when a task is pushed", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          const waiting = yield* Effect.fork(Effect.timed(queue.pull(Duration.seconds(10))))
          yield* Effect.sleep(Duration.millis(100))
          yield* queue.push("wake", meeting(1))
          const [elapsed, result] = yield* Fiber.join(waiting)
          expect(Option.map(result, (d) => d.message.taskId)).toEqual(Option.some("wake"))
          expect(Duration.toMillis(elapsed)).toBeLessThan(5_000)
        })
      )
    )

    it.live("a batch push wakes every blocked puller it can feed", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          const pullers = yield* Effect.forEach([1, 2, 3], () =>
            Effect.fork(queue.pull(Duration.seconds(10)))
          )
          yield* Effect.sleep(Duration.millis(100))
          yield* queue.pushBatch([1, 2, 3].map((n) => ({ taskId: `t${n}`, data: meeting(n) })))
          const results = yield* Fiber.joinAll(pullers).pipe(Effect.timeout(Duration.seconds(5)))
          expect(
            results.map((r) => Option.map(r, (d) => d.message.taskId).pipe(Option.getOrNull)).sort()
          ).toEqual(["t1", "t2", "t3"])
        })
      )
    )

    /** The label of a test that checks what this backend documents as different. */
    const differs = (what: string) => `(${backend.name}: documented difference: ${what})`

    if (backend.idempotentPush === false) {
      it.live(
        `every push is accepted and delivered, even of a known id ${differs("no idempotent push")}`,
        () =>
          withQueue((queue) =>
            Effect.gen(function* () {
              expect(yield* queue.push("same", meeting(1), 3)).toBe(true)
              expect(yield* queue.push("same", meeting(2), 9)).toBe(true)
              yield* expectLength(queue, 2)
              const first = yield* queue.pull().pipe(Effect.flatten)
              expect(first.message.data).toEqual(meeting(2))
              expect(yield* queue.push("same", meeting(3), 0)).toBe(true)
              const second = yield* queue.pull().pipe(Effect.flatten)
              expect(second.message.data).toEqual(meeting(1))
              yield* first.ack
              yield* second.ack
              expect(yield* drain(queue)).toEqual(["same"])
            })
          )
      )
    } else {
      it.live("push is idempotent by id while the task is pending or in flight", () =>
        withQueue((queue) =>
          Effect.gen(function* () {
            expect(yield* queue.push("same", meeting(1), 3)).toBe(true)
            expect(yield* queue.push("same", meeting(2), 9)).toBe(false)
            yield* expectLength(queue, 1)
            const delivery = yield* queue.pull().pipe(Effect.flatten)
            expect(delivery.message.data).toEqual(meeting(1))
            expect(yield* queue.push("same", meeting(3))).toBe(false)
            yield* delivery.ack
            expect(yield* queue.push("same", meeting(4))).toBe(true)
            yield* expectLength(queue, 1)
            // Inside one batch too: the first of an id wins, in order.
            const answers = yield* queue.pushBatch([
              { taskId: "twin", data: meeting(5), priority: 2 },
              { taskId: "other", data: meeting(6) },
              { taskId: "twin", data: meeting(7), priority: 8 }
            ])
            expect(answers).toEqual([true, true, false])
            const all = yield* queue.pullBatch(10)
            expect(all.map((d) => d.message.taskId)).toEqual(["same", "other", "twin"])
            expect(all[2]!.message.data).toEqual(meeting(5))
          })
        )
      )
    }

    const idempotent = backend.idempotentPush !== false
    it.live(
      idempotent
        ? "pushBatch answers per task, skipping ids already known, in one call"
        : `pushBatch answers per task, in one call ${differs("no idempotent push: known ids are enqueued again")}`,
      () =>
        withQueue((queue) =>
          Effect.gen(function* () {
            yield* queue.push("x", meeting(0))
            const accepted = yield* queue.pushBatch([
              { taskId: "y", data: meeting(1), priority: 1 },
              { taskId: "x", data: meeting(2) },
              { taskId: "z", data: meeting(3), priority: 9 },
              { taskId: "y", data: meeting(4) }
            ])
            if (idempotent) {
              expect(accepted).toEqual([true, false, true, false])
              expect(yield* drain(queue)).toEqual(["z", "x", "y"])
            } else {
              expect(accepted).toEqual([true, true, true, true])
              expect(yield* drain(queue)).toEqual(["z", "x", "x", "y", "y"])
            }
            expect(yield* queue.pushBatch([])).toEqual([])
          })
        )
    )

    if (backend.leaseExpiry === false) {
      it.live(
        `a lease lasts until its holder's connection closes; then the task comes back as the next attempt and the stale token cannot ack ${differs("no lease expiry")}`,
        () =>
          withQueue(
            (queue, queueName) =>
              Effect.gen(function* () {
                yield* queue.push("leased", meeting(1))
                const first = yield* queue.pull().pipe(Effect.flatten)
                expect(first.message.attempt).toBe(1)
                // Well past the lease duration the task is still held, and the token still good.
                yield* Effect.sleep(Duration.millis(600))
                expect(Option.isNone(yield* queue.pull(Duration.millis(50)))).toBe(true)
                expect((yield* queue.stats).inFlight).toBe(1)
                yield* first.extend()
                if (backend.dropConnections === undefined)
                  throw new Error("leaseExpiry: false needs dropConnections")
                yield* Effect.orDie(backend.dropConnections(queueName))
                const second = yield* queue.pull(Duration.seconds(20)).pipe(Effect.flatten)
                expect(second.message.taskId).toBe("leased")
                expect(second.message.attempt).toBe(2)
                expect(second.token).not.toBe(first.token)
                const stale = yield* Effect.either(first.ack)
                expect(Either.isLeft(stale) && stale.left._tag).toBe("LeaseLost")
                const staleNack = yield* Effect.either(first.nack({ requeue: false, error: "late" }))
                expect(Either.isLeft(staleNack) && staleNack.left._tag).toBe("LeaseLost")
                const staleExtend = yield* Effect.either(first.extend())
                expect(Either.isLeft(staleExtend) && staleExtend.left._tag).toBe("LeaseLost")
                yield* second.ack
                yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 0, dead: 0 })
              }),
            Duration.millis(300)
          )
      )
    } else {
      it.live(
        "an expired lease hands the task out again as the next attempt; the stale token cannot ack",
        () =>
          withQueue(
            (queue) =>
              Effect.gen(function* () {
                yield* queue.push("leased", meeting(1))
                const first = yield* queue.pull().pipe(Effect.flatten)
                expect(first.message.attempt).toBe(1)
                expect(Option.isNone(yield* queue.pull(Duration.millis(50)))).toBe(true)
                expect((yield* queue.stats).inFlight).toBe(1)
                const second = yield* queue.pull(Duration.seconds(5)).pipe(Effect.flatten)
                expect(second.message.taskId).toBe("leased")
                expect(second.message.attempt).toBe(2)
                expect(second.token).not.toBe(first.token)
                const stale = yield* Effect.either(first.ack)
                expect(Either.isLeft(stale) && stale.left._tag).toBe("LeaseLost")
                const staleNack = yield* Effect.either(first.nack({ requeue: false, error: "late" }))
                expect(Either.isLeft(staleNack) && staleNack.left._tag).toBe("LeaseLost")
                yield* second.ack
                yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 0, dead: 0 })
              }),
            Duration.millis(300)
          )
      )
    }

    it.live("extend keeps a lease past its first deadline", () =>
      withQueue(
        (queue) =>
          Effect.gen(function* () {
            yield* queue.push("long", meeting(1))
            const delivery = yield* queue.pull().pipe(Effect.flatten)
            for (let i = 0; i < 4; i++) {
              yield* Effect.sleep(Duration.millis(150))
              yield* delivery.extend()
            }
            expect(Option.isNone(yield* queue.pull(Duration.millis(10)))).toBe(true)
            yield* delivery.ack
            expect((yield* queue.stats).inFlight).toBe(0)
          }),
        Duration.millis(400)
      )
    )

    it.live("an acked task is gone and its token is spent", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.push("once", meeting(1))
          const delivery = yield* queue.pull().pipe(Effect.flatten)
          yield* delivery.ack
          const again = yield* Effect.either(delivery.ack)
          expect(Either.isLeft(again) && again.left._tag).toBe("LeaseLost")
          yield* expectLength(queue, 0)
        })
      )
    )

    it.live(
      `a requeued task keeps its priority: ahead of lower ones pushed since, behind higher ones${
        backend.strictOrder === false ? ` ${differs("tasks delivered to the process come first")}` : ""
      }`,
      () =>
        withQueue((queue) =>
          Effect.gen(function* () {
            yield* queue.pushBatch([
              { taskId: "hi", data: meeting(1), priority: 8 },
              { taskId: "lo", data: meeting(2), priority: 2 }
            ])
            const [hi, lo] = yield* queue.pullBatch(2)
            expect([hi!.message.taskId, lo!.message.taskId]).toEqual(["hi", "lo"])
            yield* queue.push("mid", meeting(3), 5)
            yield* lo!.nack()
            yield* hi!.nack()
            const order: Array<string> = []
            for (let i = 0; i < 3; i++) {
              const delivery = yield* queue.pull().pipe(Effect.flatten)
              order.push(
                `${delivery.message.taskId}:${delivery.message.priority}:${delivery.message.attempt}`
              )
              yield* delivery.ack
            }
            if (backend.strictOrder === false) {
              // "mid" may already be delivered to this process when "hi" comes back: either comes first.
              expect(order.slice(0, 2).sort()).toEqual(["hi:8:2", "mid:5:1"])
              expect(order[2]).toBe("lo:2:2")
            } else {
              expect(order).toEqual(["hi:8:2", "mid:5:1", "lo:2:2"])
            }
          })
        )
    )

    it.live("nack requeues at the back of its priority as the next attempt", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.pushBatch([
            { taskId: "n1", data: meeting(1) },
            { taskId: "n2", data: meeting(2) }
          ])
          const first = yield* queue.pull().pipe(Effect.flatten)
          expect(first.message.taskId).toBe("n1")
          yield* first.nack()
          const next = yield* queue.pull().pipe(Effect.flatten)
          expect(next.message.taskId).toBe("n2")
          yield* next.ack
          const retried = yield* queue.pull().pipe(Effect.flatten)
          expect(retried.message.taskId).toBe("n1")
          expect(retried.message.attempt).toBe(2)
        })
      )
    )

    it.live(
      backend.releaseInPlace === false
        ? "release gives an unrun task back at the back of its priority, its attempt not counted; the token is spent"
        : "release gives an unrun task back at its place, its attempt not counted; the token is spent",
      () =>
        withQueue((queue) =>
          Effect.gen(function* () {
            yield* queue.pushBatch([
              { taskId: "r1", data: meeting(1), priority: 7 },
              { taskId: "r2", data: meeting(2), priority: 7 },
              { taskId: "r3", data: meeting(3), priority: 3 }
            ])
            const [first, second] = yield* queue.pullBatch(2)
            expect([first!.message.taskId, second!.message.taskId]).toEqual(["r1", "r2"])
            yield* first!.release
            yield* second!.release
            const again = yield* queue.pullBatch(3)
            expect(again.map((d) => d.message.taskId)).toEqual(["r1", "r2", "r3"])
            expect(again.map((d) => d.message.attempt)).toEqual([1, 1, 1])
            expect(Either.getLeft(yield* Effect.either(first!.ack)).pipe(Option.map((e) => e._tag))).toEqual(
              Option.some("LeaseLost")
            )
            // A task already moved on cannot be released by its old holder.
            yield* again[0]!.ack
            expect(Either.isLeft(yield* Effect.either(again[0]!.release))).toBe(true)
            // In place: back ahead of a task of its priority pushed after it was claimed.
            yield* queue.push("r4", meeting(4), 7)
            yield* again[1]!.release
            yield* again[2]!.ack
            const order = yield* drain(queue)
            expect(order[0]).toBe(backend.releaseInPlace === false ? "r4" : "r2")
          })
        )
    )

    it.live("ackAll acks several deliveries in one call; a spent lease answers false", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.pushBatch([1, 2, 3].map((n) => ({ taskId: `a${n}`, data: meeting(n) })))
          const [d1, d2, d3] = yield* queue.pullBatch(3)
          expect(yield* queue.ackAll([d1!, d2!])).toEqual([true, true])
          expect(yield* queue.ackAll([d1!, d3!])).toEqual([false, true])
          expect(yield* queue.ackAll([])).toEqual([])
          yield* settled(queue.stats, (stats) =>
            expect(stats).toMatchObject({ pending: 0, inFlight: 0, dead: 0 })
          )
          expect(Option.isNone(yield* queue.pull(Duration.millis(50)))).toBe(true)
        })
      )
    )

    it.live("nack with a delay keeps the task out of reach until then", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.push("later", meeting(1))
          const first = yield* queue.pull().pipe(Effect.flatten)
          yield* first.nack({ delay: Duration.millis(400) })
          yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 1, dead: 0 })
          yield* expectLength(queue, 1)
          expect(Option.isNone(yield* queue.pull(Duration.millis(50)))).toBe(true)
          const [elapsed, again] = yield* Effect.timed(queue.pull(Duration.seconds(5)).pipe(Effect.flatten))
          expect(again.message.attempt).toBe(2)
          expect(Duration.toMillis(elapsed)).toBeLessThan(4_000)
        })
      )
    )

    it.live("nack without requeue dead-letters with the error; retryDead puts it back fresh", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.push("doomed", meeting(7), 7)
          const first = yield* queue.pull().pipe(Effect.flatten)
          yield* first.nack({ requeue: false, error: "boom: it broke" })
          yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 0, dead: 1 })
          const [letter] = yield* queue.deadLetters()
          expect(letter?.taskId).toBe("doomed")
          expect(letter?.error).toBe("boom: it broke")
          expect(letter?.attempts).toBe(1)
          expect(Option.map(letter!.message, (m) => m.data)).toEqual(Option.some(meeting(7)))
          expect(yield* queue.retryDead("nope")).toBe(false)
          expect(yield* queue.retryDead("doomed")).toBe(true)
          expect(yield* queue.deadLetters()).toEqual([])
          const again = yield* queue.pull().pipe(Effect.flatten)
          expect(again.message.attempt).toBe(1)
          expect(again.message.priority).toBe(7)
        })
      )
    )

    const replaces = backend.replacesDeadLetters !== false
    it.live(
      replaces
        ? "pushing the id of a dead letter replaces it"
        : `pushing the id of a dead letter enqueues it again ${differs("the dead letter stays until retried or purged")}`,
      () =>
        withQueue((queue) =>
          Effect.gen(function* () {
            yield* queue.push("phoenix", meeting(1))
            yield* (yield* queue.pull().pipe(Effect.flatten)).nack({ requeue: false, error: "x" })
            expect(yield* queue.push("phoenix", meeting(2))).toBe(true)
            yield* expectStats(queue, {
              pending: 1,
              inFlight: 0,
              delayed: 0,
              dead: replaces ? 0 : 1
            })
            const delivery = yield* queue.pull().pipe(Effect.flatten)
            expect(delivery.message.data).toEqual(meeting(2))
            expect(delivery.message.attempt).toBe(1)
          })
        )
    )

    it.live("length, stats and clear count what they say", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.pushBatch(Array.from({ length: 6 }, (_, n) => ({ taskId: `s${n}`, data: meeting(n) })))
          const held = yield* queue.pull().pipe(Effect.flatten)
          const delayed = yield* queue.pull().pipe(Effect.flatten)
          yield* delayed.nack({ delay: Duration.minutes(5) })
          const doomed = yield* queue.pull().pipe(Effect.flatten)
          yield* doomed.nack({ requeue: false, error: "dead" })
          yield* expectStats(queue, { pending: 3, inFlight: 1, delayed: 1, dead: 1 })
          yield* expectLength(queue, 4)
          expect(yield* queue.clear).toBe(4)
          yield* expectStats(queue, { pending: 0, inFlight: 1, delayed: 0, dead: 1 })
          yield* expectLength(queue, 0)
          yield* held.ack
          expect(yield* queue.clear).toBe(0)
        })
      )
    )

    it.live("pullBatch hands out up to max tasks in priority order", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          yield* queue.pushBatch([
            { taskId: "p1", data: 1, priority: 1 },
            { taskId: "p2", data: 2, priority: 2 },
            { taskId: "p3", data: 3, priority: 3 }
          ])
          const batch = yield* queue.pullBatch(2)
          expect(batch.map((d) => d.message.taskId)).toEqual(["p3", "p2"])
          const rest = yield* queue.pullBatch(10)
          expect(rest.map((d) => d.message.taskId)).toEqual(["p1"])
        })
      )
    )

    const badInputs: ReadonlyArray<[string, string, unknown, number | undefined]> = [
      ["priority -1", "ok", 1, -1],
      ["priority 11", "ok", 1, 11],
      ["priority 2.5", "ok", 1, 2.5],
      ["priority NaN", "ok", 1, Number.NaN],
      ["an empty id", "", 1, 5],
      ["a 201-character id", "x".repeat(201), 1, 5],
      ["an id with a control character", "bad\nid", 1, 5],
      ["a function as data", "ok", () => 1, 5],
      ["a BigInt as data", "ok", { n: 10n }, 5],
      ["undefined as data", "ok", undefined, 5],
      ["NaN inside data", "ok", { x: [Number.NaN] }, 5],
      ["a class instance as data", "ok", { at: new Date() }, 5],
      ["data over 1 MiB", "ok", { blob: "a".repeat(1024 * 1024) }, 5],
      ["multi-byte data over 1 MiB", "ok", { blob: "é".repeat(600 * 1024) }, 5]
    ]

    it.live("bad input is a typed InvalidTask and enqueues nothing", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          const cyclic: Record<string, unknown> = {}
          cyclic.self = cyclic
          for (const [label, id, data, priority] of [...badInputs, ["a cycle", "ok", cyclic, 5] as const]) {
            const single = yield* Effect.either(queue.push(id, data, priority))
            expect(Either.isLeft(single) && single.left._tag, label).toBe("InvalidTask")
            const batch = yield* Effect.either(
              queue.pushBatch([
                { taskId: "fine", data: 1 },
                { taskId: id, data, priority }
              ])
            )
            expect(Either.isLeft(batch) && batch.left._tag, label).toBe("InvalidTask")
          }
          yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 0, dead: 0 })
          expect(yield* queue.push("x".repeat(200), { blob: "a".repeat(1000 * 1000) }, 0)).toBe(true)
        })
      )
    )

    it.live(
      "a malformed message on the queue is dead-lettered with the reason; the queue keeps serving",
      () =>
        withQueue((queue, queueName) =>
          Effect.gen(function* () {
            yield* backend.plant(queueName, "garbage", 9, "{not json")
            yield* backend.plant(
              queueName,
              "wrong-shape",
              8,
              JSON.stringify({ task_id: "wrong-shape", priority: 99 })
            )
            // Well-formed JSON, but its data nests deeper than task data may.
            const tooDeep = JSON.parse(`${"[".repeat(300)}${"]".repeat(300)}`)
            yield* backend.plant(
              queueName,
              "too-deep",
              7,
              JSON.stringify({ task_id: "too-deep", data: tooDeep, priority: 7, enqueued_at: 0 })
            )
            yield* queue.push("good", meeting(1), 1)
            const delivery = yield* queue.pull().pipe(Effect.flatten)
            expect(delivery.message.taskId).toBe("good")
            yield* delivery.ack
            const letters = yield* queue.deadLetters()
            expect(letters.map((l) => l.taskId).sort()).toEqual(["garbage", "too-deep", "wrong-shape"])
            for (const letter of letters) {
              expect(letter.error).toMatch(/^malformed message: /)
              expect(Option.isNone(letter.message)).toBe(true)
            }
            yield* expectStats(queue, { pending: 0, inFlight: 0, delayed: 0, dead: 3 })
          })
        )
    )

    it.live("concurrent pullers never get the same task twice", () =>
      withQueue((queue) =>
        Effect.gen(function* () {
          const n = 200
          yield* queue.pushBatch(
            Array.from({ length: n }, (_, i) => ({ taskId: `c${i}`, data: i, priority: i % 11 }))
          )
          const seen = yield* Effect.forEach(
            Array.from({ length: 8 }),
            () => drain(queue).pipe(Effect.map(Chunk.fromIterable)),
            { concurrency: "unbounded" }
          )
          const all = seen.flatMap((c) => Chunk.toArray(c))
          expect(all.length).toBe(n)
          expect(new Set(all).size).toBe(n)
        })
      )
    )
  })

/**
 * The TaskStore conformance suite: the definition of a task store. Each store's test file calls
 * `taskStoreConformance(...)` with a layer factory.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, type Layer, Option } from "effect"
import type { QueueError } from "../src/Errors.js"
import { TaskStore, type TaskStoreService } from "../src/TaskStore.js"
import { uniqueQueueName } from "./conformance.js"

/** What the suite needs to know of a store. */
export interface StoreUnderTest {
  readonly name: string
  /** A store for the queue of this name, keeping finished records for `retention`. */
  readonly layer: (queueName: string, retention: Duration.DurationInput) => Layer.Layer<TaskStore, QueueError>
  /** `true`: the store runs on real time (tests are `it.live`); `false`: on `TestClock` (`it.effect`). */
  readonly live: boolean
  /** Lets `duration` pass as the store sees time. */
  readonly elapse: (duration: Duration.DurationInput) => Effect.Effect<void>
  /** Removes what the queue's records left on the server. */
  readonly cleanup: (queueName: string) => Effect.Effect<void, unknown>
}

const lease = (token: string, attempt = 1, priority = 5) => ({ token, attempt, priority })

/** Runs the conformance suite against one store. */
export const taskStoreConformance = (store: StoreUnderTest) =>
  describe(`TaskStore conformance on ${store.name}`, () => {
    const test = store.live ? it.live : it.effect
    const withStore = <A, E>(
      f: (store: TaskStoreService) => Effect.Effect<A, E>,
      retention: Duration.DurationInput = "1 hour"
    ) => {
      const queueName = uniqueQueueName(`store-${store.name}`)
      return Effect.flatMap(TaskStore, f).pipe(
        Effect.provide(store.layer(queueName, retention)),
        Effect.ensuring(Effect.orDie(store.cleanup(queueName)))
      )
    }

    test("create records a PENDING task; a known id fails with DuplicateTask and changes nothing", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          const record = yield* tasks.create("m1", 8)
          expect(record).toMatchObject({ taskId: "m1", status: "PENDING", priority: 8, attempts: 0 })
          expect(record.updatedAt).toBe(record.createdAt)
          expect(Option.getOrThrow(yield* tasks.get("m1"))).toEqual(record)
          yield* tasks.start("m1", lease("a"))
          const again = yield* Effect.either(tasks.create("m1", 2))
          expect(Either.isLeft(again) && again.left._tag).toBe("DuplicateTask")
          expect(Option.getOrThrow(yield* tasks.get("m1"))).toMatchObject({
            status: "PROCESSING",
            priority: 8
          })
          expect(yield* tasks.get("unknown")).toEqual(Option.none())
        })
      ))

    test("start moves a record to PROCESSING with the delivery's attempt; it creates the record when there is none", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          const created = yield* tasks.create("s1", 4)
          expect(yield* tasks.start("s1", lease("t1", 1, 9))).toEqual({ _tag: "Started" })
          expect(Option.getOrThrow(yield* tasks.get("s1"))).toMatchObject({
            status: "PROCESSING",
            attempts: 1,
            priority: 4,
            createdAt: created.createdAt
          })
          expect(yield* tasks.start("pushed-directly", lease("t2", 3, 7))).toEqual({ _tag: "Started" })
          const record = Option.getOrThrow(yield* tasks.get("pushed-directly"))
          expect(record).toMatchObject({ status: "PROCESSING", attempts: 3, priority: 7 })
          expect(record.result).toBeUndefined()
          expect(record.error).toBeUndefined()
        })
      ))

    test("finish records the outcome of the delivery holding the token; a retry clears the old error", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          yield* tasks.start("f1", lease("t1"))
          expect(yield* tasks.finish("f1", "t1", { status: "RETRYING", error: "flaky" })).toBe(true)
          expect(Option.getOrThrow(yield* tasks.get("f1"))).toMatchObject({
            status: "RETRYING",
            error: "flaky"
          })
          yield* tasks.start("f1", lease("t2", 2))
          const processing = Option.getOrThrow(yield* tasks.get("f1"))
          expect(processing).toMatchObject({ status: "PROCESSING", attempts: 2 })
          expect(processing.error).toBeUndefined()
          const result = {
            summary: "ok",
            files: [{ path: "a.wav", seconds: 1.5 }],
            nested: [null, true, "é"]
          }
          expect(yield* tasks.finish("f1", "t2", { status: "COMPLETED", result })).toBe(true)
          const done = Option.getOrThrow(yield* tasks.get("f1"))
          expect(done).toMatchObject({ status: "COMPLETED", attempts: 2, result })
          expect(done.error).toBeUndefined()
          expect(done.updatedAt).toBeGreaterThanOrEqual(done.createdAt)
          expect(yield* tasks.finish("nobody", "t1", { status: "FAILED", error: "x" })).toBe(false)
        })
      ))

    test("a second outcome from the same delivery replaces the first, field and all", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          yield* tasks.start("twice", lease("t1"))
          expect(yield* tasks.finish("twice", "t1", { status: "RETRYING", error: "flaky" })).toBe(true)
          expect(yield* tasks.finish("twice", "t1", { status: "COMPLETED", result: 7 })).toBe(true)
          const done = Option.getOrThrow(yield* tasks.get("twice"))
          expect(done).toMatchObject({ status: "COMPLETED", result: 7 })
          expect(done.error).toBeUndefined()
          expect(yield* tasks.finish("twice", "t1", { status: "FAILED", error: "late" })).toBe(true)
          const failed = Option.getOrThrow(yield* tasks.get("twice"))
          expect(failed).toMatchObject({ status: "FAILED", error: "late" })
          expect(failed.result).toBeUndefined()
        })
      ))

    test("token fencing: once another delivery started, a late finish changes nothing", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          yield* tasks.start("fence", lease("old", 1))
          yield* tasks.start("fence", lease("new", 2))
          expect(yield* tasks.finish("fence", "old", { status: "COMPLETED", result: "late" })).toBe(false)
          expect(Option.getOrThrow(yield* tasks.get("fence"))).toMatchObject({
            status: "PROCESSING",
            attempts: 2
          })
          expect(yield* tasks.finish("fence", "new", { status: "COMPLETED", result: "current" })).toBe(true)
          expect(yield* tasks.finish("fence", "old", { status: "FAILED", error: "late" })).toBe(false)
          expect(Option.getOrThrow(yield* tasks.get("fence"))).toMatchObject({
            status: "COMPLETED",
            result: "current"
          })
        })
      ))

    test("release: a started delivery gives the task back unrun (PENDING, attempt not counted), fenced by its token", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          yield* tasks.create("back", 4)
          yield* tasks.start("back", lease("t1", 1))
          expect(yield* tasks.release("back", "other")).toBe(false)
          expect(yield* tasks.release("back", "t1")).toBe(true)
          expect(Option.getOrThrow(yield* tasks.get("back"))).toMatchObject({
            status: "PENDING",
            attempts: 0
          })
          // Spent: the token no longer holds; a finish of it is refused too.
          expect(yield* tasks.release("back", "t1")).toBe(false)
          expect(yield* tasks.finish("back", "t1", { status: "COMPLETED", result: 1 })).toBe(false)
          yield* tasks.start("back", lease("t2", 1))
          yield* tasks.finish("back", "t2", { status: "RETRYING", error: "flaky" })
          yield* tasks.start("back", lease("t3", 2))
          expect(yield* tasks.release("back", "t3")).toBe(true)
          expect(Option.getOrThrow(yield* tasks.get("back"))).toMatchObject({
            status: "PENDING",
            attempts: 1
          })
          // A finished record is not released; unknown ids neither.
          yield* tasks.start("back", lease("t4", 2))
          yield* tasks.finish("back", "t4", { status: "COMPLETED", result: "ok" })
          expect(yield* tasks.release("back", "t4")).toBe(false)
          expect(Option.getOrThrow(yield* tasks.get("back"))).toMatchObject({ status: "COMPLETED" })
          expect(yield* tasks.release("nobody", "t1")).toBe(false)
        })
      ))

    test("finishMany records several outcomes in one call, each fenced by its token, answers in order", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          yield* tasks.start("m1", lease("a", 1))
          yield* tasks.start("m2", lease("b", 1))
          yield* tasks.start("m3", lease("c", 1))
          const answers = yield* tasks.finishMany([
            { taskId: "m1", token: "a", outcome: { status: "COMPLETED", result: { n: 1 } } },
            { taskId: "m2", token: "stale", outcome: { status: "COMPLETED", result: 2 } },
            { taskId: "m3", token: "c", outcome: { status: "FAILED", error: "no" } },
            { taskId: "unknown", token: "d", outcome: { status: "COMPLETED", result: null } }
          ])
          expect(answers).toEqual([true, false, true, false])
          expect(Option.getOrThrow(yield* tasks.get("m1"))).toMatchObject({
            status: "COMPLETED",
            result: { n: 1 }
          })
          expect(Option.getOrThrow(yield* tasks.get("m2"))).toMatchObject({ status: "PROCESSING" })
          expect(Option.getOrThrow(yield* tasks.get("m3"))).toMatchObject({ status: "FAILED", error: "no" })
          expect(yield* tasks.finishMany([])).toEqual([])
        })
      ))

    test("start leaves a finished record alone and returns it as Finished", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          yield* tasks.start("done", lease("t1"))
          yield* tasks.finish("done", "t1", { status: "COMPLETED", result: [1, 2] })
          const completed = Option.getOrThrow(yield* tasks.get("done"))
          expect(yield* tasks.start("done", lease("t2", 2))).toEqual({ _tag: "Finished", record: completed })
          expect(Option.getOrThrow(yield* tasks.get("done"))).toEqual(completed)
          yield* tasks.start("failed", lease("t1"))
          yield* tasks.finish("failed", "t1", { status: "FAILED", error: "shutdown timeout" })
          const started = yield* tasks.start("failed", lease("t2", 2))
          expect(started._tag === "Finished" && started.record).toMatchObject({
            status: "FAILED",
            error: "shutdown timeout",
            attempts: 1
          })
        })
      ))

    test("reset makes a record PENDING again, clears its outcome and fences off its old token", () =>
      withStore((tasks) =>
        Effect.gen(function* () {
          expect(yield* tasks.reset("unknown")).toBe(false)
          yield* tasks.start("r1", lease("t1", 3))
          yield* tasks.finish("r1", "t1", { status: "FAILED", error: "gave up" })
          expect(yield* tasks.reset("r1")).toBe(true)
          const reset = Option.getOrThrow(yield* tasks.get("r1"))
          expect(reset).toMatchObject({ status: "PENDING", attempts: 0 })
          expect(reset.error).toBeUndefined()
          expect(yield* tasks.finish("r1", "t1", { status: "COMPLETED", result: null })).toBe(false)
          expect(yield* tasks.start("r1", lease("t2", 1))).toEqual({ _tag: "Started" })
          expect(yield* tasks.finish("r1", "t2", { status: "COMPLETED", result: null })).toBe(true)
          expect(Option.getOrThrow(yield* tasks.get("r1"))).toMatchObject({
            status: "COMPLETED",
            result: null
          })
        })
      ))

    test("retention: finished records expire, unfinished and reset ones stay", () =>
      withStore(
        (tasks) =>
          Effect.gen(function* () {
            yield* tasks.create("pending", 5)
            yield* tasks.start("processing", lease("p"))
            yield* tasks.start("retrying", lease("r"))
            yield* tasks.finish("retrying", "r", { status: "RETRYING", error: "again" })
            yield* tasks.start("completed", lease("c"))
            yield* tasks.finish("completed", "c", { status: "COMPLETED", result: 1 })
            yield* tasks.start("failed", lease("f"))
            yield* tasks.finish("failed", "f", { status: "FAILED", error: "no" })
            yield* tasks.start("revived", lease("v"))
            yield* tasks.finish("revived", "v", { status: "FAILED", error: "no" })
            yield* tasks.reset("revived")
            yield* store.elapse(Duration.millis(100))
            expect(Option.isSome(yield* tasks.get("completed"))).toBe(true)
            yield* store.elapse(Duration.millis(600))
            for (const id of ["completed", "failed"]) expect(yield* tasks.get(id)).toEqual(Option.none())
            for (const id of ["pending", "processing", "retrying", "revived"]) {
              expect(Option.isSome(yield* tasks.get(id))).toBe(true)
            }
            // an expired id is unknown again: it can be created anew
            expect((yield* tasks.create("completed", 5)).status).toBe("PENDING")
          }),
        Duration.millis(500)
      ))
  })

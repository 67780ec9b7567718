/**
 * The worker on the memory backend, driven by `TestClock`: no real time passes.
 */
import { describe, expect, it } from "@effect/vitest"
import {
  Clock,
  ConfigProvider,
  Data,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberId,
  Layer,
  Logger,
  Metric,
  Option,
  ParseResult,
  Schedule,
  Schema,
  Scope,
  TestClock
} from "effect"
import * as MemoryQueue from "../layers/MemoryQueue.js"
import * as MemoryTaskStore from "../layers/MemoryTaskStore.js"
import { QueueError } from "../src/Errors.js"
import * as Pipeline from "../src/Pipeline.js"
import * as QM from "../src/QueueManager.js"
import { TaskStore, type TaskStoreService } from "../src/TaskStore.js"
import {
  make as makeWorker,
  maxAdaptivePrefetch,
  TaskWorker,
  type TaskWorkerOptions,
  workerConfig
} from "../src/TaskWorker.js"
import * as WorkerMetrics from "../src/WorkerMetrics.js"
import { uniqueQueueName } from "./conformance.js"

/** What the test pipeline is told to do with a task. */
const TestData = Schema.Struct({
  /** Sleep this long (TestClock time). */
  ms: Schema.optional(Schema.Number),
  /** Wait until the probe's gate opens. */
  block: Schema.optional(Schema.Boolean),
  /** Fail attempts 1..failTimes with a retryable error. */
  failTimes: Schema.optional(Schema.Number),
  unrecoverable: Schema.optional(Schema.Boolean),
  die: Schema.optional(Schema.Boolean),
  nonJson: Schema.optional(Schema.Boolean)
})

class Flaky extends Data.TaggedError("Flaky")<{ readonly message: string }> {}

interface Run {
  readonly taskId: string
  readonly attempt: number
  readonly at: number
  readonly worker: string
}

/** What the test pipelines saw. */
class Probe {
  readonly runs: Array<Run> = []
  readonly interrupted: Array<string> = []
  readonly gate = Deferred.unsafeMake<void>(FiberId.none)
  running = 0
  maxRunning = 0
  runsOf = (taskId: string) => this.runs.filter((run) => run.taskId === taskId)
  open = Deferred.succeed(this.gate, undefined)
}

const testPipeline = (probe: Probe, worker = "A") =>
  Pipeline.make({
    name: "test",
    schema: TestData,
    run: (data, message) =>
      Effect.gen(function* () {
        probe.runs.push({
          taskId: message.taskId,
          attempt: message.attempt,
          at: yield* Clock.currentTimeMillis,
          worker
        })
        probe.running++
        probe.maxRunning = Math.max(probe.maxRunning, probe.running)
        return yield* Effect.gen(function* () {
          if (data.ms !== undefined) yield* Effect.sleep(data.ms)
          if (data.block) yield* Deferred.await(probe.gate)
          if (data.die) {
            yield* Effect.sync(() => {
              throw new Error("boom")
            })
          }
          if (data.unrecoverable)
            return yield* new Pipeline.UnrecoverableError({ message: "cannot ever work" })
          if (message.attempt <= (data.failTimes ?? 0)) {
            return yield* new Flaky({ message: `flaky on attempt ${message.attempt}` })
          }
          if (data.nonJson) return 10n as unknown
          return { worker, attempt: message.attempt }
        }).pipe(
          Effect.onInterrupt(() => Effect.sync(() => probe.interrupted.push(message.taskId))),
          Effect.ensuring(Effect.sync(() => probe.running--))
        )
      })
  })

interface Setup {
  readonly lease?: Duration.DurationInput
  readonly worker?: TaskWorkerOptions
}

/** A queue, a store, the test pipeline and a worker, all in memory. */
const env = (probe: Probe, setup: Setup = {}) =>
  TaskWorker.layer(setup.worker).pipe(
    Layer.provideMerge(
      Layer.mergeAll(
        MemoryQueue.layer({
          queueName: uniqueQueueName("worker"),
          leaseDuration: setup.lease ?? "30 seconds"
        }),
        MemoryTaskStore.layer(),
        Pipeline.Pipeline.layer(testPipeline(probe))
      )
    )
  )

/** A second worker on the queue and store in context, with its own pipeline (and optionally store). */
const startOther = (probe: Probe, name: string, options: TaskWorkerOptions = {}) =>
  Effect.flatMap(makeWorker(options), (worker) => worker.start).pipe(
    Effect.provide(Pipeline.Pipeline.layer(testPipeline(probe, name)))
  )

const recordOf = (taskId: string) =>
  Effect.flatMap(TaskStore, (store) => store.get(taskId)).pipe(Effect.map(Option.getOrThrow))

const stats = Effect.flatMap(QM.QueueManager, (queue) => queue.stats)

/** Lets background fibers run until `predicate` holds (no clock time passes). */
const until = (predicate: () => boolean) =>
  Effect.gen(function* () {
    for (let i = 0; i < 1000 && !predicate(); i++) yield* Effect.yieldNow()
    expect(predicate()).toBe(true)
  })

/** As `until`, for a condition read with an effect. */
const untilEffect = <E, R>(check: Effect.Effect<boolean, E, R>) =>
  Effect.gen(function* () {
    for (let i = 0; i < 1000; i++) {
      if (yield* check) return
      yield* Effect.yieldNow()
    }
    expect(yield* check).toBe(true)
  })

const statusIs = (taskId: string, status: string) =>
  Effect.flatMap(TaskStore, (store) => store.get(taskId)).pipe(
    Effect.map((record) => Option.isSome(record) && record.value.status === status)
  )

/** A memory queue that writes down the `max` of every `pullBatch` into `pulls`. */
const countingPulls = (pulls: Array<number>) =>
  Layer.effect(
    QM.QueueManager,
    Effect.map(MemoryQueue.make({ queueName: uniqueQueueName("worker") }), (queue) => ({
      ...queue,
      pullBatch: (max: number, timeout?: Duration.DurationInput) => {
        pulls.push(max)
        return queue.pullBatch(max, timeout)
      }
    }))
  )

/** The status of a task's record, `NONE` when it has none. */
const statusOf = (taskId: string) =>
  Effect.flatMap(TaskStore, (store) => store.get(taskId)).pipe(
    Effect.map((record) => (Option.isSome(record) ? record.value.status : "NONE"))
  )

/** Starts the worker in a scope of its own, to close (shut down) during the test. */
const startInOwnScope = Effect.gen(function* () {
  const scope = yield* Scope.make()
  yield* Scope.extend(TaskWorker.start, scope)
  return scope
})

describe("TaskWorker", () => {
  it.scoped("runs a task: PENDING, PROCESSING, COMPLETED with the result, then acks it", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      const store = yield* TaskStore
      yield* store.create("t1", 7)
      expect(yield* queue.push("t1", { ms: 100 }, 7)).toBe(true)
      yield* TaskWorker.start
      yield* untilEffect(statusIs("t1", "PROCESSING"))
      yield* TestClock.adjust("100 millis")
      yield* untilEffect(statusIs("t1", "COMPLETED"))
      const record = yield* recordOf("t1")
      expect(record).toMatchObject({
        status: "COMPLETED",
        priority: 7,
        attempts: 1,
        createdAt: 0,
        updatedAt: 100
      })
      expect(record.result).toEqual({ worker: "A", attempt: 1 })
      expect(yield* stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
    }).pipe(Effect.provide(env(probe)))
  })

  it.scoped("a task pushed without a record gets one when it starts", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.push("no-record", {}, 3)
      yield* TaskWorker.start
      yield* untilEffect(statusIs("no-record", "COMPLETED"))
      expect(yield* recordOf("no-record")).toMatchObject({ priority: 3, attempts: 1, result: { attempt: 1 } })
    }).pipe(Effect.provide(env(probe)))
  })

  it.scoped(
    "a delivery past maxAttempts whose earlier holders all died is dead-lettered without running",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.push("poison", {})
        // Three holders that vanish without an outcome: their leases end, the task comes back.
        for (let i = 1; i <= 3; i++) {
          const delivery = Option.getOrThrow(yield* queue.pull(Duration.zero))
          expect(delivery.message.attempt).toBe(i)
          yield* delivery.extend(Duration.zero)
        }
        yield* TaskWorker.start
        yield* untilEffect(statusIs("poison", "FAILED"))
        expect(probe.runs).toEqual([])
        const record = yield* recordOf("poison")
        expect(record.attempts).toBe(4)
        expect(record.error).toMatch(/^gave up after 3 attempts that ended without an outcome/)
        const [letter] = yield* Effect.flatMap(QM.QueueManager, (q) => q.deadLetters())
        expect(letter?.taskId).toBe("poison")
        expect(letter?.error).toBe(record.error)
      }).pipe(Effect.provide(env(probe, { worker: { maxAttempts: 3 } })))
    }
  )

  it.scoped(
    "retries after the default backoff (1 s, then 2 s): failing twice then succeeding ends COMPLETED, attempts 3",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.push("flaky", { failTimes: 2 })
        yield* TaskWorker.start
        yield* untilEffect(statusIs("flaky", "RETRYING"))
        expect(yield* recordOf("flaky")).toMatchObject({ attempts: 1, error: "Flaky: flaky on attempt 1" })
        expect(yield* stats).toMatchObject({ delayed: 1, inFlight: 0 })
        yield* TestClock.adjust("999 millis")
        expect(probe.runs).toHaveLength(1)
        yield* TestClock.adjust("1 millis")
        yield* until(() => probe.runs.length === 2)
        yield* untilEffect(statusIs("flaky", "RETRYING"))
        yield* TestClock.adjust("1999 millis")
        expect(probe.runs).toHaveLength(2)
        yield* TestClock.adjust("1 millis")
        yield* untilEffect(statusIs("flaky", "COMPLETED"))
        expect(probe.runs.map((run) => [run.attempt, run.at])).toEqual([
          [1, 0],
          [2, 1000],
          [3, 3000]
        ])
        const record = yield* recordOf("flaky")
        expect(record).toMatchObject({ status: "COMPLETED", attempts: 3, result: { attempt: 3 } })
        expect(record.error).toBeUndefined()
      }).pipe(Effect.provide(env(probe, { worker: { maxAttempts: 3 } })))
    }
  )

  it.scoped("backoff as a function of the failed attempt", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.push("f", { failTimes: 3 })
      yield* TaskWorker.start
      for (let i = 0; i < 60; i++) yield* TestClock.adjust("1 second")
      yield* untilEffect(statusIs("f", "COMPLETED"))
      // attempt n failed -> wait n * 7 s
      expect(probe.runs.map((run) => run.at)).toEqual([0, 7_000, 21_000, 42_000])
    }).pipe(
      Effect.provide(
        env(probe, { worker: { maxAttempts: 4, backoff: (attempt) => Duration.seconds(7 * attempt) } })
      )
    )
  })

  it.scoped(
    "backoff as a Schedule: its n-th delay follows the n-th failure; once it ends, no more retries",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.push("s", { failTimes: 2 })
        yield* queue.push("s2", { failTimes: 3 }, 1)
        yield* TaskWorker.start
        for (let i = 0; i < 60; i++) yield* TestClock.adjust("1 second")
        yield* untilEffect(statusIs("s", "COMPLETED"))
        expect(probe.runsOf("s").map((run) => run.at)).toEqual([0, 2_000, 5_000])
        // the schedule allows two retries although maxAttempts allows three
        yield* untilEffect(statusIs("s2", "FAILED"))
        expect(probe.runsOf("s2").map((run) => run.attempt)).toEqual([1, 2, 3])
        expect((yield* queue.deadLetters()).map((letter) => letter.taskId)).toEqual(["s2"])
      }).pipe(
        Effect.provide(
          env(probe, {
            worker: {
              maxAttempts: 4,
              // 2 s, 3 s, then the schedule ends
              backoff: Schedule.exponential("2 seconds", 1.5).pipe(Schedule.intersect(Schedule.recurs(2)))
            }
          })
        )
      )
    }
  )

  it.scoped(
    "after maxAttempts a task is FAILED and dead-lettered with its last error, while others complete",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.pushBatch([
          { taskId: "bad", data: { failTimes: 99 } },
          { taskId: "good-1", data: { ms: 10 } },
          { taskId: "good-2", data: { ms: 10 } },
          { taskId: "good-3", data: { ms: 10 } }
        ])
        yield* TaskWorker.start
        yield* TestClock.adjust("1 minute")
        yield* untilEffect(statusIs("bad", "FAILED"))
        expect(probe.runsOf("bad").map((run) => run.attempt)).toEqual([1, 2, 3])
        expect(yield* recordOf("bad")).toMatchObject({ attempts: 3, error: "Flaky: flaky on attempt 3" })
        const dead = yield* queue.deadLetters()
        expect(dead.map((letter) => [letter.taskId, letter.error, letter.attempts])).toEqual([
          ["bad", "Flaky: flaky on attempt 3", 3]
        ])
        for (const id of ["good-1", "good-2", "good-3"]) {
          expect(yield* recordOf(id)).toMatchObject({ status: "COMPLETED", attempts: 1 })
        }
        expect(yield* stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 1 })
      }).pipe(Effect.provide(env(probe, { worker: { concurrency: 2 } })))
    }
  )

  it.scoped(
    "permanent failures are FAILED and dead-lettered at once: bad data, UnrecoverableError, non-JSON result",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.pushBatch([
          { taskId: "schema", data: { ms: "soon" } },
          { taskId: "unrecoverable", data: { unrecoverable: true } },
          { taskId: "non-json", data: { nonJson: true } }
        ])
        yield* TaskWorker.start
        for (const id of ["schema", "unrecoverable", "non-json"]) yield* untilEffect(statusIs(id, "FAILED"))
        expect(yield* recordOf("schema")).toMatchObject({ attempts: 1 })
        expect((yield* recordOf("schema")).error).toMatch(/^invalid task data: .*ms/s)
        expect((yield* recordOf("unrecoverable")).error).toBe("UnrecoverableError: cannot ever work")
        expect((yield* recordOf("non-json")).error).toBe("the pipeline's result is not plain JSON")
        const dead = yield* queue.deadLetters()
        expect(dead.map((letter) => letter.taskId).sort()).toEqual(["non-json", "schema", "unrecoverable"])
        expect(probe.runsOf("schema")).toHaveLength(0)
        expect(probe.runsOf("unrecoverable")).toHaveLength(1)
        expect(yield* stats).toMatchObject({ delayed: 0, dead: 3 })
      }).pipe(Effect.provide(env(probe, { worker: { maxAttempts: 5 } })))
    }
  )

  it.scoped("a defect thrown inside a pipeline is a retryable failure and does not stop the worker", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.push("dies", { die: true }, 10)
      yield* queue.push("fine", {}, 1)
      yield* TaskWorker.start
      yield* untilEffect(statusIs("dies", "RETRYING"))
      expect((yield* recordOf("dies")).error).toBe("defect: boom")
      yield* untilEffect(statusIs("fine", "COMPLETED"))
      yield* TestClock.adjust("10 seconds")
      yield* untilEffect(statusIs("dies", "FAILED"))
      expect(probe.runsOf("dies")).toHaveLength(2)
      expect((yield* queue.deadLetters()).map((letter) => letter.error)).toEqual(["defect: boom"])
    }).pipe(Effect.provide(env(probe, { worker: { maxAttempts: 2 } })))
  })

  it.scoped("taskTimeout fails a run that takes too long (retryable), and interrupts it", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.push("slow", { ms: 60_000 })
      yield* TaskWorker.start
      yield* TestClock.adjust("4999 millis")
      expect(yield* recordOf("slow")).toMatchObject({ status: "PROCESSING" })
      yield* TestClock.adjust("1 millis")
      yield* untilEffect(statusIs("slow", "RETRYING"))
      expect((yield* recordOf("slow")).error).toBe("the task timed out after 5s")
      expect(probe.interrupted).toEqual(["slow"])
      yield* TestClock.adjust("1 second")
      yield* TestClock.adjust("5 seconds")
      yield* untilEffect(statusIs("slow", "FAILED"))
      expect(probe.runsOf("slow")).toHaveLength(2)
      expect((yield* queue.deadLetters()).map((letter) => letter.error)).toEqual([
        "the task timed out after 5s"
      ])
    }).pipe(Effect.provide(env(probe, { worker: { taskTimeout: "5 seconds", maxAttempts: 2 } })))
  })

  for (const prefetch of [0, undefined, 5]) {
    // Held at most: the run slots plus the prefetch (default: concurrency), claimed in pulls of
    // half of that, but at least the slots' worth.
    const window = 3 + (prefetch ?? 3)
    const perPull = Math.min(window, Math.max(3, Math.ceil(window / 2)))
    it.scoped(
      `never runs more than \`concurrency\` tasks at once; prefetch ${prefetch ?? "adaptive (concurrency at first)"}: holds at most ${window}, claimed ${perPull} at a time`,
      () => {
        const probe = new Probe()
        const pulls: Array<number> = []
        const countingQueue = countingPulls(pulls)
        return Effect.gen(function* () {
          const queue = yield* QM.QueueManager
          yield* queue.pushBatch(
            Array.from({ length: 20 }, (_, i) => ({ taskId: `c${i}`, data: { ms: 1000 } }))
          )
          yield* TaskWorker.start
          yield* until(() => probe.running === 3)
          expect(pulls[0]).toBe(perPull)
          yield* untilEffect(Effect.map(stats, (s) => s.inFlight === window))
          expect(yield* stats).toMatchObject({ inFlight: window, pending: 20 - window })
          // The prefetched tasks are recorded as started; the rest are untouched.
          for (let i = 0; i < window; i++) expect(yield* statusOf(`c${i}`)).toBe("PROCESSING")
          for (let i = window; i < 20; i++) expect(yield* statusOf(`c${i}`)).toBe("NONE")
          for (let i = 0; i < 7; i++) {
            yield* TestClock.adjust("1 second")
            yield* until(() => probe.runs.length === Math.min(20, 3 * (i + 2)))
            expect((yield* stats).inFlight).toBeLessThanOrEqual(window)
          }
          for (let i = 0; i < 20; i++) yield* untilEffect(statusIs(`c${i}`, "COMPLETED"))
          // Run in claim order (priority, then push order), never more than 3 at once.
          expect(probe.runs.map((run) => run.taskId)).toEqual(Array.from({ length: 20 }, (_, i) => `c${i}`))
          expect(probe.maxRunning).toBe(3)
          expect(Math.max(...pulls)).toBe(perPull)
        }).pipe(
          Effect.provide(
            TaskWorker.layer({ concurrency: 3, prefetch }).pipe(
              Layer.provideMerge(
                Layer.mergeAll(
                  countingQueue,
                  MemoryTaskStore.layer(),
                  Pipeline.Pipeline.layer(testPipeline(probe))
                )
              )
            )
          )
        )
      }
    )
  }

  it.scoped("the adaptive prefetch deepens for short tasks and shrinks to one for long ones", () => {
    const probe = new Probe()
    const pulls: Array<number> = []
    const countingQueue = countingPulls(pulls)
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.pushBatch(Array.from({ length: 60 }, (_, i) => ({ taskId: `short${i}`, data: {} })))
      yield* TaskWorker.start
      yield* untilEffect(Effect.map(stats, (s) => s.pending === 0 && s.inFlight === 0))
      // Instant runs: after the first claims (half of concurrency 1 + 1 each), claims grow to half
      // of 1 + maxAdaptivePrefetch, so that one is on its way while the slots run another.
      expect(pulls[0]).toBe(1)
      expect(Math.max(...pulls)).toBe(Math.ceil((1 + maxAdaptivePrefetch) / 2))
      pulls.length = 0
      yield* queue.pushBatch(
        Array.from({ length: 6 }, (_, i) => ({ taskId: `long${i}`, data: { ms: 5_000 } }))
      )
      for (let i = 0; i < 6; i++) {
        yield* until(() => probe.running === 1)
        yield* TestClock.adjust("5 seconds")
      }
      yield* untilEffect(Effect.map(stats, (s) => s.pending === 0 && s.inFlight === 0))
      // Five-second runs: what one slot starts within 100 ms is none, so the prefetch is one.
      expect(pulls.at(-1)).toBeLessThanOrEqual(2)
      expect(yield* stats).toMatchObject({ pending: 0, inFlight: 0 })
    }).pipe(
      Effect.provide(
        TaskWorker.layer({ concurrency: 1 }).pipe(
          Layer.provideMerge(
            Layer.mergeAll(
              countingQueue,
              MemoryTaskStore.layer(),
              Pipeline.Pipeline.layer(testPipeline(probe))
            )
          )
        )
      )
    )
  })

  it.scoped(
    "extends the lease of a running task: a task longer than the lease is not handed to another worker",
    () => {
      const probe = new Probe()
      const other = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.push("long", { ms: 20_000 })
        yield* TaskWorker.start
        yield* until(() => probe.runs.length === 1)
        yield* startOther(other, "B", { leaseRenewal: "1 second" })
        for (let i = 0; i < 19; i++) {
          yield* TestClock.adjust("1 second")
          expect(yield* stats).toMatchObject({ inFlight: 1, pending: 0 })
        }
        yield* TestClock.adjust("1 second")
        yield* untilEffect(statusIs("long", "COMPLETED"))
        expect(other.runs).toHaveLength(0)
        expect(yield* recordOf("long")).toMatchObject({ attempts: 1, result: { worker: "A" } })
      }).pipe(Effect.provide(env(probe, { lease: "3 seconds", worker: { leaseRenewal: "1 second" } })))
    }
  )

  it.scoped(
    "lease expiry takeover: B gets the task once A stops renewing; A's late result is discarded",
    () => {
      const probe = new Probe()
      const other = new Probe()
      const warnings: Array<string> = []
      const capture = Logger.make(({ logLevel, message }) => {
        if (logLevel._tag === "Warning") warnings.push(String(message))
      })
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        const queueName = queue.queueName
        yield* queue.push("contested", { block: true })
        // A renews far too rarely, as if paused: its 3-second lease runs out
        yield* TaskWorker.start
        yield* until(() => probe.runs.length === 1)
        yield* startOther(other, "B", { leaseRenewal: "1 second" })
        yield* TestClock.adjust("3 seconds")
        yield* until(() => other.runs.length === 1)
        expect(other.runs[0]).toMatchObject({ taskId: "contested", attempt: 2 })
        expect(yield* recordOf("contested")).toMatchObject({ status: "PROCESSING", attempts: 2 })
        // B is blocked on the same gate: open it; B completes, A's late result is discarded
        yield* probe.open
        yield* Deferred.succeed(other.gate, undefined)
        yield* untilEffect(statusIs("contested", "COMPLETED"))
        yield* until(() => warnings.some((w) => w.includes("discarded")))
        const record = yield* recordOf("contested")
        expect(record).toMatchObject({ attempts: 2, result: { worker: "B", attempt: 2 } })
        expect(yield* stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
        const discarded = yield* Metric.value(Metric.tagged(WorkerMetrics.tasksDiscarded, "queue", queueName))
        expect(discarded.count).toBe(1)
        const completed = yield* Metric.value(Metric.tagged(WorkerMetrics.tasksCompleted, "queue", queueName))
        expect(completed.count).toBe(1)
      }).pipe(
        Effect.provide(env(probe, { lease: "3 seconds", worker: { leaseRenewal: "1 hour" } })),
        Effect.provide(Logger.add(capture))
      )
    }
  )

  it.scoped(
    "lease expiry, other interleaving: A records first, so B settles the task without running it",
    () => {
      const probe = new Probe()
      const other = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        const store = yield* TaskStore
        const startGate = yield* Deferred.make<void>()
        const bStarts: Array<string> = []
        // B's store holds its `startMany` until A has finished
        const gatedStore: TaskStoreService = {
          ...store,
          startMany: (starts) =>
            Effect.zipRight(
              Effect.zipRight(
                Effect.sync(() => bStarts.push(...starts.map((start) => start.taskId))),
                Deferred.await(startGate)
              ),
              store.startMany(starts)
            )
        }
        yield* queue.push("raced", { block: true })
        yield* TaskWorker.start
        yield* until(() => probe.runs.length === 1)
        yield* startOther(other, "B").pipe(Effect.provideService(TaskStore, gatedStore))
        yield* TestClock.adjust("3 seconds")
        yield* until(() => bStarts.length === 1)
        yield* probe.open
        yield* untilEffect(statusIs("raced", "COMPLETED"))
        yield* Deferred.succeed(startGate, undefined)
        yield* untilEffect(Effect.map(stats, (s) => s.inFlight === 0))
        expect(other.runs).toHaveLength(0)
        expect(yield* recordOf("raced")).toMatchObject({ attempts: 1, result: { worker: "A", attempt: 1 } })
        expect(yield* stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
      }).pipe(Effect.provide(env(probe, { lease: "3 seconds", worker: { leaseRenewal: "1 hour" } })))
    }
  )

  it.scoped(
    "a delivery whose outcome was recorded but never settled (crash before ack) is settled without running",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        const store = yield* TaskStore
        yield* queue.pushBatch([
          { taskId: "done", data: {} },
          { taskId: "dead", data: {} }
        ])
        // a worker records both outcomes, then dies before acking / dead-lettering
        for (const [id, outcome] of [
          ["done", { status: "COMPLETED", result: "first" }],
          ["dead", { status: "FAILED", error: "gave up" }]
        ] as const) {
          const delivery = Option.getOrThrow(yield* queue.pull("0 millis"))
          expect(delivery.message.taskId).toBe(id)
          yield* store.start(id, { token: delivery.token, attempt: 1, priority: 5 })
          expect(yield* store.finish(id, delivery.token, outcome)).toBe(true)
        }
        yield* TestClock.adjust("30 seconds")
        yield* TaskWorker.start
        yield* untilEffect(Effect.map(stats, (s) => s.pending === 0 && s.inFlight === 0))
        expect(probe.runs).toHaveLength(0)
        expect(yield* recordOf("done")).toMatchObject({ status: "COMPLETED", attempts: 1, result: "first" })
        expect(yield* recordOf("dead")).toMatchObject({ status: "FAILED", error: "gave up" })
        expect((yield* queue.deadLetters()).map((letter) => [letter.taskId, letter.error])).toEqual([
          ["dead", "gave up"]
        ])
      }).pipe(Effect.provide(env(probe)))
    }
  )

  it.scoped(
    "graceful shutdown: stops pulling at once, lets running tasks finish, gives prefetched ones back unrun, leaves the rest queued",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.pushBatch(
          Array.from({ length: 5 }, (_, i) => ({ taskId: `s${i}`, data: { ms: 10_000 } }))
        )
        const scope = yield* startInOwnScope
        yield* until(() => probe.running === 2)
        yield* TestClock.adjust("1 second")
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("8999 millis")
        expect(closing.unsafePoll()).toBeNull()
        yield* TestClock.adjust("1 millis")
        yield* Fiber.join(closing)
        expect(probe.runs.map((run) => run.taskId)).toEqual(["s0", "s1"])
        expect(yield* recordOf("s0")).toMatchObject({ status: "COMPLETED" })
        expect(yield* recordOf("s1")).toMatchObject({ status: "COMPLETED" })
        expect(yield* stats).toEqual({ pending: 3, inFlight: 0, delayed: 0, dead: 0 })
        yield* TestClock.adjust("1 minute")
        expect(probe.runs).toHaveLength(2)
        // s2 and s3 were prefetched: given back at their place, their attempt not counted, their
        // records PENDING again.
        for (const id of ["s2", "s3"]) {
          expect(yield* recordOf(id)).toMatchObject({ status: "PENDING", attempts: 0 })
        }
        const next = yield* queue.pullBatch(3)
        expect(next.map((d) => [d.message.taskId, d.message.attempt])).toEqual([
          ["s2", 1],
          ["s3", 1],
          ["s4", 1]
        ])
      }).pipe(Effect.provide(env(probe, { worker: { concurrency: 2 } })))
    }
  )

  it.scoped(
    "shutdown deadline: a task running past maxShutdownWait is interrupted, FAILED 'shutdown timeout', dead-lettered",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        yield* queue.push("short", { ms: 2_000 })
        yield* queue.push("endless", { ms: 3_600_000 })
        const scope = yield* startInOwnScope
        yield* until(() => probe.running === 2)
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* TestClock.adjust("4999 millis")
        expect(closing.unsafePoll()).toBeNull()
        expect(yield* recordOf("short")).toMatchObject({ status: "COMPLETED" })
        yield* TestClock.adjust("1 millis")
        yield* Fiber.join(closing)
        expect(probe.interrupted).toEqual(["endless"])
        expect(yield* recordOf("endless")).toMatchObject({
          status: "FAILED",
          error: "shutdown timeout",
          attempts: 1
        })
        const dead = yield* queue.deadLetters()
        expect(dead.map((letter) => [letter.taskId, letter.error])).toEqual([["endless", "shutdown timeout"]])
        expect(yield* stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 1 })
      }).pipe(Effect.provide(env(probe, { worker: { concurrency: 2, maxShutdownWait: "5 seconds" } })))
    }
  )

  it.scoped("TaskWorker.run runs until interrupted, then shuts down gracefully", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.push("r1", { ms: 1_000 })
      const fiber = yield* Effect.fork(TaskWorker.run)
      yield* until(() => probe.running === 1)
      const stopping = yield* Effect.fork(Fiber.interrupt(fiber))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(stopping)
      expect(yield* recordOf("r1")).toMatchObject({ status: "COMPLETED" })
      yield* queue.push("r2", {})
      yield* TestClock.adjust("5 seconds")
      expect(probe.runs).toHaveLength(1)
    }).pipe(Effect.provide(env(probe)))
  })

  it.scoped("a backend outage: failed pulls are logged and retried with a capped exponential backoff", () => {
    const probe = new Probe()
    const attempts: Array<number> = []
    let failures = 6
    const flakyQueue = Layer.effect(
      QM.QueueManager,
      Effect.map(MemoryQueue.make({ queueName: uniqueQueueName("outage") }), (queue) => ({
        ...queue,
        pullBatch: (max: number, timeout?: Duration.DurationInput) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) => {
            attempts.push(now)
            if (failures-- > 0) {
              return failures === 2
                ? Effect.die(new Error("driver bug"))
                : Effect.fail(new QueueError({ message: "connection refused" }))
            }
            return queue.pullBatch(max, timeout)
          })
      }))
    )
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.push("after-outage", {})
      yield* TaskWorker.start
      yield* TestClock.adjust("10 seconds")
      yield* untilEffect(statusIs("after-outage", "COMPLETED"))
      // 100 ms doubling: 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 s between the six failures and the success
      expect(attempts.slice(0, 7)).toEqual([0, 100, 300, 700, 1500, 3100, 6300])
      const errors = yield* Metric.value(Metric.tagged(WorkerMetrics.pullErrors, "queue", queue.queueName))
      expect(errors.count).toBe(6)
    }).pipe(
      Effect.provide(
        TaskWorker.layer().pipe(
          Layer.provideMerge(
            Layer.mergeAll(flakyQueue, MemoryTaskStore.layer(), Pipeline.Pipeline.layer(testPipeline(probe)))
          )
        )
      )
    )
  })

  it.scoped(
    "a failing or interrupted store call never stops the worker: the task is given back and runs later",
    () => {
      const probe = new Probe()
      return Effect.gen(function* () {
        const queue = yield* QM.QueueManager
        const store = yield* TaskStore
        let calls = 0
        const brokenStore: TaskStoreService = {
          ...store,
          startMany: (starts) =>
            Effect.suspend(() => {
              calls++
              const first = (id: string) => starts.some((s) => s.taskId === id && s.lease.attempt === 1)
              if (first("interrupted")) return Effect.interrupt
              if (first("unavailable")) return Effect.fail(new QueueError({ message: "store unavailable" }))
              return store.startMany(starts)
            })
        }
        yield* makeWorker({ concurrency: 3 }).pipe(
          Effect.provideService(TaskStore, brokenStore),
          Effect.flatMap((worker) => worker.start)
        )
        yield* queue.push("unavailable", {})
        // Tried 5 times (at once, then after 50, 100, 200 ms), then given back with the 1 s
        // backoff; meanwhile other tasks start and run.
        yield* until(() => calls === 2)
        yield* queue.push("interrupted", {})
        yield* until(() => calls === 3)
        yield* queue.push("fine", {})
        yield* untilEffect(statusIs("fine", "COMPLETED"))
        yield* TestClock.adjust("2 seconds")
        yield* untilEffect(statusIs("unavailable", "COMPLETED"))
        expect(yield* recordOf("unavailable")).toMatchObject({ attempts: 2 })
        // "interrupted" was neither acked nor nacked: it comes back when its lease expires
        yield* TestClock.adjust("30 seconds")
        yield* untilEffect(statusIs("interrupted", "COMPLETED"))
        expect(yield* recordOf("interrupted")).toMatchObject({ attempts: 2 })
        expect(calls).toBe(2 + 1 + 1 + 3 + 1 + 1)
      }).pipe(Effect.provide(env(probe)))
    }
  )

  it.scoped("a malformed message on the queue is dead-lettered and the worker carries on", () => {
    const probe = new Probe()
    const backend = MemoryQueue.makeBackend("30 seconds")
    const queueLayer = Layer.succeed(
      QM.QueueManager,
      QM.make({ queueName: uniqueQueueName("broken"), backend, leaseDuration: "30 seconds" })
    )
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* backend.offer([{ id: "broken", priority: 10, body: "{not json" }])
      yield* queue.push("ok", {})
      yield* TaskWorker.start
      yield* untilEffect(statusIs("ok", "COMPLETED"))
      expect((yield* queue.deadLetters()).map((letter) => letter.taskId)).toEqual(["broken"])
      expect(probe.runs.map((run) => run.taskId)).toEqual(["ok"])
    }).pipe(
      Effect.provide(
        TaskWorker.layer().pipe(
          Layer.provideMerge(
            Layer.mergeAll(queueLayer, MemoryTaskStore.layer(), Pipeline.Pipeline.layer(testPipeline(probe)))
          )
        )
      )
    )
  })

  it.scoped("every log of a task carries its id and attempt: the pipeline's own and the worker's", () => {
    const lines: Array<{ readonly message: unknown; readonly annotations: Record<string, unknown> }> = []
    const capture = Logger.make(({ annotations, message }) => {
      lines.push({ message, annotations: Object.fromEntries(annotations) })
    })
    const logging = Pipeline.make({
      name: "logging",
      schema: Schema.Struct({ fail: Schema.Boolean }),
      run: ({ fail }) =>
        Effect.zipRight(
          Effect.logInfo("inside the pipeline"),
          fail ? Effect.fail(new Error("nope")) : Effect.succeed("ok")
        )
    })
    const messageOf = (line: (typeof lines)[number]) =>
      Array.isArray(line.message) ? line.message[0] : line.message
    const linesOf = (text: string) => lines.filter((line) => messageOf(line) === text)
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.pushBatch([
        { taskId: "fine", data: { fail: false } },
        { taskId: "broken", data: { fail: true } }
      ])
      yield* TaskWorker.start
      yield* untilEffect(statusIs("fine", "COMPLETED"))
      yield* untilEffect(statusIs("broken", "RETRYING"))
      yield* until(
        () =>
          linesOf("task completed").length === 1 && linesOf("task failed; it will be retried").length === 1
      )
      expect(linesOf("inside the pipeline").map((line) => line.annotations)).toEqual(
        expect.arrayContaining([
          expect.objectContaining({ taskId: "fine", attempt: 1 }),
          expect.objectContaining({ taskId: "broken", attempt: 1 })
        ])
      )
      expect(linesOf("task completed")[0]!.annotations).toMatchObject({ taskId: "fine", attempt: 1 })
      expect(linesOf("task completed")[0]!.annotations).toHaveProperty("durationMs")
      expect(linesOf("task failed; it will be retried")[0]!.annotations).toMatchObject({
        taskId: "broken",
        attempt: 1,
        error: "nope"
      })
    }).pipe(
      Effect.provide(
        TaskWorker.layer({ concurrency: 2 }).pipe(
          Layer.provideMerge(
            Layer.mergeAll(
              MemoryQueue.layer({ queueName: uniqueQueueName("worker") }),
              MemoryTaskStore.layer(),
              Pipeline.Pipeline.layer(logging)
            )
          )
        )
      ),
      Effect.provide(Logger.replace(Logger.defaultLogger, capture))
    )
  })

  it.scoped("a schema that decodes asynchronously: valid data runs, invalid data fails for good", () => {
    // The worker decodes without an effect where the schema allows; this one needs one.
    const Later = Schema.transformOrFail(Schema.Number, Schema.Number, {
      strict: true,
      decode: (n, _, ast) =>
        Effect.flatMap(
          Effect.promise(() => Promise.resolve(n)),
          (value) =>
            value >= 0 ? Effect.succeed(value * 2) : Effect.fail(new ParseResult.Type(ast, n, "negative"))
        ),
      encode: (n) => Effect.succeed(n / 2)
    })
    const doubled = Pipeline.make({
      schema: Schema.Struct({ n: Later }),
      run: ({ n }) => Effect.succeed({ n })
    })
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      yield* queue.pushBatch([
        { taskId: "async-ok", data: { n: 21 } },
        { taskId: "async-bad", data: { n: -1 } }
      ])
      yield* TaskWorker.start
      yield* untilEffect(statusIs("async-ok", "COMPLETED"))
      yield* untilEffect(statusIs("async-bad", "FAILED"))
      expect((yield* recordOf("async-ok")).result).toEqual({ n: 42 })
      expect(yield* recordOf("async-bad")).toMatchObject({ attempts: 1 })
      expect((yield* recordOf("async-bad")).error).toMatch(/^invalid task data: .*negative/s)
    }).pipe(
      Effect.provide(
        TaskWorker.layer().pipe(
          Layer.provideMerge(
            Layer.mergeAll(
              MemoryQueue.layer({ queueName: uniqueQueueName("worker") }),
              MemoryTaskStore.layer(),
              Pipeline.Pipeline.layer(doubled)
            )
          )
        )
      )
    )
  })

  it.effect(
    "workerConfig reads the environment: PREFETCH (0 allowed, negative refused), durations, defaults",
    () =>
      Effect.gen(function* () {
        const read = (env: Record<string, string>) =>
          Effect.withConfigProvider(
            Effect.either(workerConfig),
            ConfigProvider.fromMap(new Map(Object.entries(env)))
          )
        const set = yield* read({
          CONCURRENCY: "8",
          PREFETCH: "0",
          LEASE_DURATION: "90 seconds",
          TASK_TIMEOUT: "5"
        })
        expect(Either.getOrThrow(set)).toMatchObject({
          concurrency: 8,
          prefetch: 0,
          leaseRenewal: Duration.seconds(30),
          taskTimeout: Duration.seconds(5)
        })
        const defaults = Either.getOrThrow(yield* read({}))
        expect(defaults.prefetch).toBeUndefined()
        expect(defaults.concurrency).toBe(1)
        expect(Either.isLeft(yield* read({ PREFETCH: "-1" }))).toBe(true)
      })
  )

  it.scoped("counts started, completed, retried and failed tasks, and their durations", () => {
    const probe = new Probe()
    return Effect.gen(function* () {
      const queue = yield* QM.QueueManager
      const tagged = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) =>
        Metric.tagged(metric, "queue", queue.queueName)
      yield* queue.pushBatch([
        { taskId: "m-ok", data: { ms: 30 } },
        { taskId: "m-retry", data: { failTimes: 1 } },
        { taskId: "m-fail", data: { unrecoverable: true } }
      ])
      yield* TaskWorker.start
      yield* TestClock.adjust("30 millis")
      yield* TestClock.adjust("1 second")
      for (const id of ["m-ok", "m-retry"]) yield* untilEffect(statusIs(id, "COMPLETED"))
      yield* untilEffect(statusIs("m-fail", "FAILED"))
      expect((yield* Metric.value(tagged(WorkerMetrics.tasksStarted))).count).toBe(4)
      expect((yield* Metric.value(tagged(WorkerMetrics.tasksCompleted))).count).toBe(2)
      expect((yield* Metric.value(tagged(WorkerMetrics.tasksRetried))).count).toBe(1)
      expect((yield* Metric.value(tagged(WorkerMetrics.tasksFailed))).count).toBe(1)
      const durations = yield* Metric.value(tagged(WorkerMetrics.taskDuration))
      expect(durations.count).toBe(4)
      expect(durations.max).toBe(30)
    }).pipe(Effect.provide(env(probe, { worker: { concurrency: 3 } })))
  })

  it.effect("rejects nonsensical options", () =>
    Effect.gen(function* () {
      const exit = yield* Effect.exit(
        makeWorker({ concurrency: 0 }).pipe(
          Effect.provide(env(new Probe())),
          Effect.catchAllDefect((defect) => Effect.fail((defect as Error).message))
        )
      )
      expect(exit).toEqual(Exit.fail("TaskWorker: concurrency must be a positive integer, got 0"))
    })
  )
})

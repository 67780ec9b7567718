import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Fiber, FastCheck as fc, Layer, Option, TestClock, Tracer } from "effect"
import { MinHeap } from "../layers/internal/MinHeap.js"
import * as MemoryQueue from "../layers/MemoryQueue.js"
import { makeBackend } from "../layers/MemoryQueue.js"
import type { QueueBackend } from "../src/QueueBackend.js"
import * as QM from "../src/QueueManager.js"
import { conformance } from "./conformance.js"

const backends = new Map<string, QueueBackend>()

const backendFor = (queueName: string, leaseDuration: Parameters<typeof makeBackend>[0]) => {
  const backend = backends.get(queueName) ?? makeBackend(leaseDuration)
  backends.set(queueName, backend)
  return backend
}

conformance({
  name: "memory",
  layer: (queueName, { leaseDuration }) =>
    Layer.sync(QM.QueueManager, () =>
      QM.make({ queueName, backend: backendFor(queueName, leaseDuration), leaseDuration })
    ),
  plant: (queueName, id, priority, body) =>
    backendFor(queueName, "30 seconds").offer([{ id, priority, body }]),
  cleanup: (queueName) => Effect.sync(() => backends.delete(queueName))
})

// The same semantics through the backend's effects alone, as a backend without immediate operations is run.
conformance({
  name: "memory, effects only",
  layer: (queueName, { leaseDuration }) =>
    Layer.sync(QM.QueueManager, () =>
      QM.make({
        queueName,
        backend: { ...backendFor(queueName, leaseDuration), immediate: undefined },
        leaseDuration
      })
    ),
  plant: (queueName, id, priority, body) =>
    backendFor(queueName, "30 seconds").offer([{ id, priority, body }]),
  cleanup: (queueName) => Effect.sync(() => backends.delete(queueName))
})

describe("QueueManager spans", () => {
  /** A tracer that keeps every span it makes (the default tracer's spans, made by Effect's own). */
  const recording = Effect.map(Effect.tracer, (native) => {
    const spans: Array<Tracer.Span> = []
    const tracer = Tracer.make({
      span: (...args) => {
        const span = native.span(...args)
        spans.push(span)
        return span
      },
      context: (f) => f()
    })
    return { spans, tracer }
  })

  it.effect("a public operation is a span under the caller's when a tracer is installed", () =>
    Effect.gen(function* () {
      const { spans, tracer } = yield* recording
      const queue = yield* MemoryQueue.make({ queueName: "traced" })
      yield* Effect.gen(function* () {
        yield* queue.push("a", { n: 1 }, 7)
        const delivery = yield* queue.pull("1 second").pipe(Effect.flatten)
        yield* delivery.nack()
        const again = yield* queue.pull("1 second").pipe(Effect.flatten)
        yield* again.ack
        yield* queue.stats
      }).pipe(Effect.withSpan("caller"), Effect.withTracer(tracer))
      const caller = spans.find((span) => span.name === "caller")!
      const ours = spans.filter((span) => span !== caller)
      expect(ours.map((span) => span.name)).toEqual([
        "QueueManager.push",
        "QueueManager.pull",
        "QueueManager.nack",
        "QueueManager.pull",
        "QueueManager.ack",
        "QueueManager.stats"
      ])
      for (const span of ours) {
        expect(Option.getOrUndefined(span.parent)).toBe(caller)
        expect(span.status._tag).toBe("Ended")
        expect(span.attributes.get("queue.name")).toBe("traced")
        expect(span.attributes.get("queue.backend")).toBe("memory")
      }
      expect(ours[0]!.attributes.get("task.id")).toBe("a")
      expect(ours[4]!.attributes.get("task.id")).toBe("a")
    })
  )

  it.effect("a failed operation ends its span with the failure", () =>
    Effect.gen(function* () {
      const { spans, tracer } = yield* recording
      const queue = yield* MemoryQueue.make()
      const error = yield* queue.push("", { n: 1 }).pipe(Effect.flip, Effect.withTracer(tracer))
      expect(error._tag).toBe("InvalidTask")
      const [span] = spans
      expect(span?.name).toBe("QueueManager.push")
      expect(span?.status._tag === "Ended" && Exit.isFailure(span.status.exit)).toBe(true)
    })
  )
})

describe("memory queue timing", () => {
  it.effect("TestClock drives lease expiry and delayed requeue, also for a blocked pull", () =>
    Effect.gen(function* () {
      const queue = yield* MemoryQueue.make({ leaseDuration: "10 seconds" })
      yield* queue.push("a", { n: 1 })
      const first = yield* queue.pull("1 second").pipe(Effect.flatten)
      const waiting = yield* Effect.fork(queue.pull("1 minute"))
      yield* TestClock.adjust("9 seconds")
      expect(waiting.unsafePoll()).toBeNull()
      yield* TestClock.adjust("1 second")
      const second = yield* Fiber.join(waiting).pipe(Effect.flatten)
      expect(second.message.attempt).toBe(2)
      expect(yield* Effect.flip(first.ack)).toMatchObject({ _tag: "LeaseLost", taskId: "a" })
      yield* second.nack({ delay: "5 seconds" })
      expect(Option.isNone(yield* queue.pull(0))).toBe(true)
      yield* TestClock.adjust("5 seconds")
      const third = yield* queue.pull(0).pipe(Effect.flatten)
      expect(third.message.attempt).toBe(3)
      yield* third.ack
      expect(yield* queue.stats).toEqual({ pending: 0, inFlight: 0, delayed: 0, dead: 0 })
    })
  )
})

describe("MinHeap", () => {
  it.prop(
    "pops by key, then insertion order (or the insertion number given back)",
    [
      fc.array(
        fc.oneof(fc.integer({ min: 0, max: 5 }), fc.constant("pop" as const), fc.constant("again" as const))
      )
    ],
    ([ops]) => {
      const heap = new MinHeap<number>()
      const model: Array<{ key: number; seq: number; value: number }> = []
      const popped: Array<{ key: number; seq: number; value: number }> = []
      let value = 0
      for (const op of ops) {
        if (op === "pop") {
          model.sort((a, b) => a.key - b.key || a.seq - b.seq)
          const next = model.shift()
          expect(heap.pop()).toBe(next?.value)
          if (next !== undefined) popped.push(next)
        } else if (op === "again") {
          const back = popped.pop()
          if (back !== undefined) model.push({ ...back, seq: heap.push(back.key, back.value, back.seq) })
        } else {
          value++
          model.push({ key: op, value, seq: heap.push(op, value) })
        }
        expect(heap.size).toBe(model.length)
        expect(heap.peekKey()).toBe(model.length === 0 ? undefined : Math.min(...model.map((m) => m.key)))
      }
    }
  )
})

import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { ReadyBuffer } from "../layers/rabbitmq/ReadyBuffer.js"

/** A push (priority), a take of up to n, or a put back of the last item taken. */
type Step =
  | { readonly kind: "push"; readonly priority: number }
  | { readonly kind: "take"; readonly max: number }
  | { readonly kind: "putBack" }

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.integer({ min: -2, max: 12 }).map((priority) => ({ kind: "push" as const, priority })),
  fc.integer({ min: 0, max: 5 }).map((max) => ({ kind: "take" as const, max })),
  fc.constant({ kind: "putBack" as const })
)

interface Item {
  readonly seq: number
  readonly priority: number
}

describe("ReadyBuffer (the RabbitMQ feed's deliveries)", () => {
  it.prop(
    "takes the most urgent first, in arrival order within a priority; a put back goes first again",
    [fc.array(step, { maxLength: 60 })],
    ([steps]) => {
      const buffer = new ReadyBuffer<Item>(10)
      // The model: a list kept in take order.
      let model: Array<Item> = []
      const clamp = (p: number) => Math.min(10, Math.max(0, p))
      let seq = 0
      let lastTaken: Item | undefined
      for (const s of steps) {
        if (s.kind === "push") {
          const item = { seq: seq++, priority: clamp(s.priority) }
          buffer.push(s.priority, item)
          const at = model.findIndex((m) => m.priority < item.priority)
          model.splice(at === -1 ? model.length : at, 0, item)
        } else if (s.kind === "take") {
          const out: Array<Item> = []
          buffer.take(s.max, out)
          expect(out).toEqual(model.slice(0, s.max))
          model = model.slice(s.max)
          lastTaken = out.at(-1)
        } else if (lastTaken !== undefined) {
          buffer.putBack(lastTaken.priority, lastTaken)
          const at = model.findIndex((m) => m.priority <= lastTaken!.priority)
          model.splice(at === -1 ? model.length : at, 0, lastTaken)
          lastTaken = undefined
        }
        expect(buffer.size).toBe(model.length)
      }
      expect(buffer.takeAll()).toEqual(model)
      expect(buffer.size).toBe(0)
    }
  )
})

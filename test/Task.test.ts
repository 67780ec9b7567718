import { describe, expect, it } from "@effect/vitest"
import { Either, Equal, FastCheck as fc, Schema } from "effect"
import { encodeTask } from "../src/QueueManager.js"
import {
  isJsonValue,
  isTaskId,
  type JsonValue,
  maxDataBytes,
  type Priority,
  TaskId,
  TaskMessage,
  TaskRecord,
  type TaskStatus,
  unsafeTaskMessage,
  unsafeTaskRecord
} from "../src/Task.js"

const notJson = fc.oneof(
  fc.constant(undefined),
  fc.constant(Number.NaN),
  fc.constant(Number.POSITIVE_INFINITY),
  fc.bigInt(),
  fc.constant(() => 1),
  fc.constant(Symbol("s")),
  fc.date(),
  fc.constant(new Map())
)

/** Puts `bad` somewhere inside `value` (as an array item or an object property). */
const plant = (value: unknown, bad: unknown, key: string): unknown =>
  Array.isArray(value) ? [...value, bad] : { wrapper: value, [key]: bad }

describe("task validation", () => {
  it.prop("every JSON value is task data, and survives encoding", [fc.jsonValue()], ([value]) => {
    expect(isJsonValue(value)).toBe(true)
    const encoded = encodeTask({ taskId: "t", data: value, priority: 3 }, 1)
    expect(Either.isRight(encoded)).toBe(true)
    const body = JSON.parse(Either.getOrThrow(encoded).body)
    expect(body).toEqual({
      task_id: "t",
      data: JSON.parse(JSON.stringify(value)),
      priority: 3,
      enqueued_at: 1
    })
  })

  it.prop(
    "a value with anything non-JSON inside is rejected with a readable reason",
    [fc.jsonValue(), notJson, fc.string({ minLength: 1, maxLength: 5 })],
    ([value, bad, key]) => {
      const data = plant(value, bad, key)
      expect(isJsonValue(data)).toBe(false)
      const encoded = encodeTask({ taskId: "t", data, priority: 3 }, 1)
      expect(Either.isLeft(encoded) && encoded.left.message).toMatch(/^data: task data must be plain JSON/)
    }
  )

  it.prop(
    "priorities are exactly the integers 0..10",
    [fc.oneof(fc.integer({ min: -50, max: 50 }), fc.double())],
    ([priority]) => {
      const encoded = encodeTask({ taskId: "t", data: null, priority }, 1)
      const valid = Number.isInteger(priority) && priority >= 0 && priority <= 10
      expect(Either.isRight(encoded)).toBe(valid)
      if (!valid) expect(Either.isLeft(encoded) && encoded.left.message).toMatch(/^priority: /)
    }
  )

  const printable = fc.oneof(
    fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)),
    fc.constantFrom("é", "漢", "🎉", "_", "-", ":")
  )

  it.prop(
    "ids of 1 to 200 printable characters are accepted; empty, longer or control-laden ones are not",
    [fc.array(printable, { minLength: 1, maxLength: 200 }), fc.integer({ min: 0, max: 0x1f })],
    ([chars, control]) => {
      const id = chars.join("").slice(0, 200)
      expect(Either.isRight(encodeTask({ taskId: id, data: 1 }, 1))).toBe(true)
      const tainted = id.slice(0, 100) + String.fromCharCode(control) + id.slice(100)
      expect(Either.isLeft(encodeTask({ taskId: tainted.slice(0, 200), data: 1 }, 1))).toBe(true)
      expect(Either.isLeft(encodeTask({ taskId: id + "x".repeat(201 - id.length), data: 1 }, 1))).toBe(true)
    }
  )

  it("the size limit counts UTF-8 bytes of the encoded message", () => {
    const overhead = JSON.stringify({ task_id: "t", data: "", priority: 5, enqueued_at: 1 }).length
    const fits = "a".repeat(maxDataBytes - overhead)
    expect(Either.isRight(encodeTask({ taskId: "t", data: fits }, 1))).toBe(true)
    expect(Either.isLeft(encodeTask({ taskId: "t", data: `${fits}a` }, 1))).toBe(true)
    const wide = "é".repeat(Math.floor((maxDataBytes - overhead) / 2))
    expect(Either.isRight(encodeTask({ taskId: "t", data: wide }, 1))).toBe(true)
    expect(Either.isLeft(encodeTask({ taskId: "t", data: `${wide}é` }, 1))).toBe(true)
  })
})

describe("task messages and ids", () => {
  it.prop(
    "unsafeTaskMessage builds what the class constructor builds",
    [fc.string({ minLength: 1, maxLength: 20 }), fc.jsonValue(), fc.integer({ min: 0, max: 10 }), fc.nat()],
    ([id, data, priority, enqueuedAt]) => {
      const fields = {
        taskId: id as TaskId,
        data: data as JsonValue,
        priority: priority as Priority,
        enqueuedAt,
        attempt: 1
      }
      const made = new TaskMessage(fields, { disableValidation: true })
      const fast = unsafeTaskMessage(fields)
      expect(fast).toBeInstanceOf(TaskMessage)
      expect(Object.getPrototypeOf(fast)).toBe(Object.getPrototypeOf(made))
      expect(Reflect.ownKeys(fast)).toEqual(Reflect.ownKeys(made))
      expect(Equal.equals(fast, made)).toBe(true)
      expect(JSON.stringify(fast)).toBe(JSON.stringify(made))
    }
  )

  it.prop(
    "unsafeTaskRecord builds what the class constructor builds",
    [
      fc.string({ minLength: 1, maxLength: 20 }),
      fc.constantFrom<TaskStatus>("PENDING", "PROCESSING", "RETRYING", "COMPLETED", "FAILED"),
      fc.integer({ min: 0, max: 10 }),
      fc.nat(),
      fc.option(fc.jsonValue(), { nil: undefined }),
      fc.option(fc.string(), { nil: undefined })
    ],
    ([id, status, priority, attempts, result, error]) => {
      const fields = {
        taskId: id as TaskId,
        status,
        priority: priority as Priority,
        attempts,
        createdAt: 1,
        updatedAt: 2,
        ...(result === undefined ? {} : { result: result as JsonValue }),
        ...(error === undefined ? {} : { error })
      }
      const made = new TaskRecord(fields, { disableValidation: true })
      const fast = unsafeTaskRecord(fields)
      expect(fast).toBeInstanceOf(TaskRecord)
      expect(Reflect.ownKeys(fast)).toEqual(Reflect.ownKeys(made))
      expect(Equal.equals(fast, made)).toBe(true)
      expect(JSON.stringify(fast)).toBe(JSON.stringify(made))
    }
  )

  it.prop(
    "isTaskId agrees with the TaskId schema",
    [fc.oneof(fc.string({ maxLength: 210 }), fc.string({ unit: "binary", maxLength: 8 }), fc.anything())],
    ([id]) => {
      expect(isTaskId(id)).toBe(Schema.is(TaskId)(id))
    }
  )
})

describe("isJsonValue edges", () => {
  const nested = (depth: number, leaf: unknown): unknown => {
    let value = leaf
    for (let i = 0; i < depth; i++) value = [value]
    return value
  }

  it("refuses cycles at any depth and accepts shared (acyclic) references", () => {
    const cyclic: { a: { b: Record<string, unknown> } } = { a: { b: {} } }
    cyclic.a.b.back = cyclic
    const selfArray: Array<unknown> = []
    selfArray.push(selfArray)
    const shared = { x: 1 }
    expect(isJsonValue(cyclic)).toBe(false)
    expect(isJsonValue(selfArray)).toBe(false)
    expect(isJsonValue({ a: shared, b: [shared, shared] })).toBe(true)
  })

  it("accepts up to 257 levels of nesting", () => {
    expect(isJsonValue(nested(256, []))).toBe(true)
    expect(isJsonValue(nested(257, []))).toBe(false)
    expect(isJsonValue(nested(257, 1))).toBe(true)
    expect(isJsonValue(nested(258, 1))).toBe(false)
  })
})

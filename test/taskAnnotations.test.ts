import { describe, expect, it } from "@effect/vitest"
import { Equal, FastCheck as fc, Hash, HashMap } from "effect"
import { taskAnnotations } from "../src/internal/taskAnnotations.js"

/** Annotation values as loggers get them: strings, numbers, booleans. */
const value = fc.oneof(fc.string(), fc.integer(), fc.double({ noNaN: true }), fc.boolean())
const entries = fc.array(fc.tuple(fc.string({ maxLength: 12 }), value), { maxLength: 12 })

describe("taskAnnotations", () => {
  it.prop(
    "hashes and compares as the same entries in a map built from scratch",
    [entries, fc.string({ maxLength: 40 }), fc.integer({ min: 1, max: 1_000 })],
    ([base, taskId, attempt]) => {
      const baseMap = HashMap.fromIterable(base)
      const built = taskAnnotations(baseMap, taskId, attempt)
      const fresh = HashMap.fromIterable([
        ...base,
        ["taskId", taskId] as const,
        ["attempt", attempt] as const
      ])
      expect(Hash.hash(built)).toBe(Hash.hash(fresh))
      expect(Equal.equals(built, fresh)).toBe(true)
      expect(Equal.equals(fresh, built)).toBe(true)
      expect(HashMap.get(built, "taskId")._tag === "Some" && HashMap.unsafeGet(built, "taskId")).toBe(taskId)
      expect(HashMap.unsafeGet(built, "attempt")).toBe(attempt)
    }
  )

  it.prop(
    "a map that differs from it, by an entry or a value, does not compare equal",
    [entries, fc.string({ maxLength: 40 }), fc.integer({ min: 1, max: 1_000 })],
    ([base, taskId, attempt]) => {
      const built = taskAnnotations(HashMap.fromIterable(base), taskId, attempt)
      const otherAttempt = HashMap.fromIterable([
        ...base,
        ["taskId", taskId] as const,
        ["attempt", attempt + 1] as const
      ])
      const otherTask = HashMap.fromIterable([
        ...base,
        ["taskId", `${taskId}x`] as const,
        ["attempt", attempt] as const
      ])
      expect(Equal.equals(built, otherAttempt)).toBe(false)
      expect(Equal.equals(built, otherTask)).toBe(false)
    }
  )
})

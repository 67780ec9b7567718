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
    }
  )

  it.prop(
    "a base that already names a task (a worker started inside a task) has both replaced",
    [entries, fc.string({ maxLength: 40 }), fc.integer({ min: 1, max: 1_000 }), fc.string(), value],
    ([base, taskId, attempt, outerTask, outerAttempt]) => {
      const outer = [...base, ["taskId", outerTask] as const, ["attempt", outerAttempt] as const]
      const built = taskAnnotations(HashMap.fromIterable(outer), taskId, attempt)
      const fresh = HashMap.fromIterable([
        ...outer,
        ["taskId", taskId] as const,
        ["attempt", attempt] as const
      ])
      expect(Hash.hash(built)).toBe(Hash.hash(fresh))
      expect(Equal.equals(built, fresh)).toBe(true)
    }
  )
})

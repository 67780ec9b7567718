import { describe, expect, it } from "@effect/vitest"
import { FastCheck as fc } from "effect"
import { type LuaHelper, withHelpers } from "../layers/redis/luaHelpers.js"
import * as Scripts from "../layers/redis/scripts.js"

/** Helpers `h0..h(n-1)`, each calling the earlier ones its call list names, and a body calling `roots`. */
const program = fc.integer({ min: 0, max: 8 }).chain((n) =>
  fc.record({
    calls: fc.tuple(
      ...Array.from({ length: n }, (_, i) => fc.subarray(Array.from({ length: i }, (_, k) => k)))
    ),
    roots: fc.subarray(Array.from({ length: n }, (_, k) => k))
  })
)

const helperOf = (i: number, calls: ReadonlyArray<number>): LuaHelper => ({
  name: `h${i}`,
  lua: `local function h${i}()\n${calls.map((k) => `  h${k}()`).join("\n")}\nend`
})

/** The names of the `local function`s a script defines, in order. */
const defined = (lua: string) => [...lua.matchAll(/local function (\w+)/g)].map((m) => m[1])

describe("Lua helpers of the Redis scripts", () => {
  it.prop(
    "a script gets exactly the helpers it calls, directly or through others, in definition order",
    [program],
    ([{ calls, roots }]) => {
      const helpers = calls.map((c, i) => helperOf(i, c))
      const body = roots.map((k) => `h${k}()`).join("\n")
      const needed = new Set<number>()
      const visit = (i: number) => {
        if (needed.has(i)) return
        needed.add(i)
        for (const k of calls[i]!) visit(k)
      }
      for (const r of roots) visit(r)
      const expected = [...needed].sort((a, b) => a - b).map((i) => `h${i}`)
      const lua = withHelpers(helpers, body)
      expect(defined(lua)).toEqual(expected)
      expect(lua.endsWith(body)).toBe(true)
    }
  )

  it("a name inside a longer name is no call", () => {
    const helpers = [helperOf(0, []), { name: "wake", lua: "local function wake()\nend" }]
    expect(defined(withHelpers(helpers, "wakeAll()\nh0x()"))).toEqual([])
  })

  it("the queue's scripts define what they call and nothing else", () => {
    const byName = Object.fromEntries(Scripts.all.map((s) => [s.name, defined(s.lua)]))
    expect(byName.offer).toEqual(["wake"])
    expect(byName.deadLetters).toEqual([])
    expect(byName.claim).toContain("startRecord")
    expect(byName.claim).not.toContain("finishRecord")
    expect(byName.settle).toContain("finishRecord")
    expect(byName.ack).not.toContain("toDead")
  })

  it("the queue's scripts name the keys they use and read the clock only where they use it", () => {
    /** The keys a script names in its header, by the Lua variable they go by. */
    const named = (lua: string) => [...lua.matchAll(/^local (\w+) = prefix \.\. '/gm)].map((m) => m[1])
    const byName = Object.fromEntries(Scripts.all.map((s) => [s.name, s.lua]))
    expect(named(byName.offer!)).toEqual(["pending", "dead", "task", "errors", "seq", "marker"])
    expect(named(byName.deadLetters!)).toEqual(["dead", "task", "errors"])
    expect(byName.offer).not.toContain("TIME")
    expect(byName.deadLetters).not.toContain("TIME")
    expect(byName.claim).toContain("redis.call('TIME')")
    expect(byName.ack).toContain("redis.call('TIME')")
    for (const { name, lua } of Scripts.all) {
      // Every key variable the script's text uses is declared before it.
      for (const variable of [
        "pending",
        "inflight",
        "delayed",
        "dead",
        "task",
        "errors",
        "seq",
        "tokens",
        "marker",
        "dueKey"
      ]) {
        const body = lua.slice(lua.indexOf("\n", lua.lastIndexOf("prefix .. '")))
        if (new RegExp(`\\b${variable}\\b[,) ]`).test(body))
          expect(named(lua), `${name} uses ${variable}`).toContain(variable)
      }
    }
  })
})

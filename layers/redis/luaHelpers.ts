/**
 * Lua functions shared by the Redis scripts, each included only in the scripts that call it:
 * Redis runs a script's whole text on every call, so a `local function` the script never calls
 * still costs a closure per call.
 *
 * @since 0.1.0
 */

/** A Lua `local function` named `name`, defined by `lua`. */
export interface LuaHelper {
  readonly name: string
  readonly lua: string
}

const calls = (text: string, name: string) => new RegExp(`\\b${name}\\(`).test(text)

/**
 * `body` preceded by the helpers it calls, directly or through other helpers, in the order of
 * `helpers` (where a helper may only call those before it).
 */
export const withHelpers = (helpers: ReadonlyArray<LuaHelper>, body: string): string => {
  const needed: Array<LuaHelper> = []
  let text = body
  for (let i = helpers.length - 1; i >= 0; i--) {
    const helper = helpers[i]!
    if (calls(text, helper.name)) {
      needed.unshift(helper)
      text = `${text}\n${helper.lua}`
    }
  }
  return [...needed.map((helper) => helper.lua), body].join("\n")
}

/**
 * The Lua scripts of the Redis backend: every state change of a queue is one of these, run
 * atomically by Redis and called by SHA. Time is the server's (`TIME`), so every client agrees on
 * lease deadlines and delays.
 *
 * Each script gets one key, the queue's prefix `{q}:` (every key of the queue is that prefix and
 * one of {@link keyNames}; all share its hash slot), and names the keys it uses from it: one key
 * to send instead of ten, on the path of every call. See `layers/RedisQueue.ts` for the layout.
 *
 * @since 0.1.0
 */
import { script as named, type Script } from "./Connection.js"
import { type LuaHelper, withHelpers } from "./luaHelpers.js"
import { recordHelpers } from "./records.js"

/** The keys of one queue, each the queue's prefix and one of these names. */
export const keyNames = [
  "pending",
  "inflight",
  "delayed",
  "dead",
  "task",
  "error",
  "seq",
  "tokens",
  "marker",
  "due"
] as const

/** One key of a queue. */
export type KeyName = (typeof keyNames)[number]

/** Pending score band of one priority level: `(10 - priority) * 2^40 + sequence`. */
export const priorityBand = 2 ** 40

/** The `{q}:task` field of a task's body. */
export const bodyField = (id: string) => `b:${id}`

/**
 * The `{q}:task` field of a task's state: `attempts * 16 + priority`, written by its first claim
 * (until then, attempts 0 and the priority its pending score's).
 */
export const stateField = (id: string) => `s:${id}`

/** The `{q}:task` field of a task's lease token, while it is in flight. */
export const leaseField = (id: string) => `l:${id}`

/**
 * The `{q}:task` field of the pending score a task in flight was claimed from, where a release
 * puts it back; written and removed with its lease token.
 */
export const positionField = (id: string) => `p:${id}`

/** The Lua variable each key goes by in the scripts. */
const keyVariables: Record<KeyName, string> = {
  pending: "pending",
  inflight: "inflight",
  delayed: "delayed",
  dead: "dead",
  task: "task",
  error: "errors",
  seq: "seq",
  tokens: "tokens",
  marker: "marker",
  due: "dueKey"
}

const mentions = (lua: string, name: string) => new RegExp(`\\b${name}\\b`).test(lua)

/**
 * What a script begins with: the keys it names (each built from the one key it gets, the prefix)
 * and the server's clock (`now` in ms, `nowMicros`), where its text uses them. Only those: Redis
 * runs a script's whole text on every call, and a push reads no clock.
 */
const header = (lua: string): string => {
  const lines = ["local prefix = KEYS[1]"]
  for (const name of keyNames) {
    if (mentions(lua, keyVariables[name])) lines.push(`local ${keyVariables[name]} = prefix .. '${name}'`)
  }
  if (mentions(lua, "now") || mentions(lua, "nowMicros")) {
    lines.push(
      "local time = redis.call('TIME')",
      "local nowMicros = tonumber(time[1]) * 1000000 + tonumber(time[2])",
      "local now = math.floor(nowMicros / 1000)"
    )
  }
  if (mentions(lua, "dueAt")) lines.push("local dueAt = nil")
  return lines.join("\n")
}

// The functions the scripts share, each in the scripts that call it. \`maintain\` is the upkeep
// that puts expired leases and due delays back in pending (with a fresh sequence: the back of
// their priority). \`{q}:due\` holds a time by which the upkeep must look again (never later than
// the earliest lease deadline or delay): the upkeep costs one GET until then. Acks leave it
// early, which only makes the next look find nothing and set it afresh.
const helpers: ReadonlyArray<LuaHelper> = [
  {
    name: "wake",
    lua: `local function wake()
  redis.call('ZADD', marker, 0, 'wake')
end`
  },
  {
    name: "stateOf",
    lua: `local function stateOf(id)
  return tonumber(redis.call('HGET', task, 's:' .. id)) or 5
end`
  },
  {
    name: "toPending",
    lua: `local function toPending(id, p)
  p = p or stateOf(id) % 16
  redis.call('ZADD', pending, (10 - p) * ${priorityBand} + redis.call('INCR', seq), id)
end`
  },
  {
    name: "dueBy",
    lua: `-- A lease deadline or delay at time t: the upkeep must look by then.
local function dueBy(t)
  if dueAt == nil or t < dueAt then
    dueAt = t
    redis.call('SET', dueKey, t)
  end
end`
  },
  {
    name: "maintain",
    lua: `local function maintain()
  dueAt = tonumber(redis.call('GET', dueKey))
  if dueAt ~= nil and dueAt > now then return end
  local moved = false
  local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now)
  for i = 1, #expired do
    redis.call('ZREM', inflight, expired[i])
    redis.call('HDEL', task, 'l:' .. expired[i], 'p:' .. expired[i])
    toPending(expired[i])
    moved = true
  end
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now)
  for i = 1, #due do
    redis.call('ZREM', delayed, due[i])
    toPending(due[i])
    moved = true
  end
  if moved then wake() end
  dueAt = nil
  for _, key in ipairs({ inflight, delayed }) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
      local at = tonumber(first[2])
      if dueAt == nil or at < dueAt then dueAt = at end
    end
  end
  if dueAt == nil then redis.call('DEL', dueKey) else redis.call('SET', dueKey, dueAt) end
end`
  },
  {
    name: "holds",
    lua: `local function holds(id, token)
  return redis.call('HGET', task, 'l:' .. id) == token
end`
  },
  {
    name: "unlease",
    lua: `local function unlease(id)
  redis.call('ZREM', inflight, id)
  redis.call('HDEL', task, 'l:' .. id, 'p:' .. id)
end`
  },
  {
    name: "toDead",
    lua: `-- An unleased task goes to the dead letters with its error.
local function toDead(id, error)
  redis.call('ZADD', dead, nowMicros, id)
  redis.call('HSET', errors, id, error)
end`
  },
  {
    name: "removeAcked",
    lua: `-- Held leases whose tasks are done, gathered by a script in \`acked\` and removed together at its end.
local acked = {}
local function removeAcked()
  if #acked == 0 then return end
  local fields = {}
  for _, id in ipairs(acked) do
    fields[#fields + 1] = 'b:' .. id
    fields[#fields + 1] = 's:' .. id
    fields[#fields + 1] = 'l:' .. id
    fields[#fields + 1] = 'p:' .. id
  end
  redis.call('ZREM', inflight, unpack(acked))
  redis.call('HDEL', task, unpack(fields))
end`
  },
  ...recordHelpers
]

const script = (name: string, body: string): Script => {
  const lua = withHelpers(helpers, body)
  return named(name, `${header(lua)}\n${lua}`)
}

/**
 * ARGV: `id, priority, body` per task. Returns 1 (accepted) or 0 (already pending, delayed or in
 * flight) per task. A dead letter of the same id is replaced.
 */
export const offer = script(
  "offer",
  `
local out = {}
local fresh = {}
local seen = {}
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  local accepted = 1
  if seen[id] then
    accepted = 0
  elseif redis.call('HEXISTS', task, 'b:' .. id) == 1 then
    if redis.call('ZREM', dead, id) == 1 then
      redis.call('HDEL', errors, id)
      redis.call('HDEL', task, 's:' .. id)
    else
      accepted = 0
    end
  end
  seen[id] = true
  if accepted == 1 then fresh[#fresh + 1] = i end
  out[#out + 1] = accepted
end
if #fresh == 0 then return out end
-- One sequence block and one variadic call per key for the accepted tasks, 1,000 at a time.
local first = redis.call('INCRBY', seq, #fresh) - #fresh
for from = 1, #fresh, 1000 do
  local fields, scores = {}, {}
  for k = from, math.min(from + 999, #fresh) do
    local i = fresh[k]
    local id, p = ARGV[i], tonumber(ARGV[i + 1])
    fields[#fields + 1] = 'b:' .. id
    fields[#fields + 1] = ARGV[i + 2]
    scores[#scores + 1] = (10 - p) * ${priorityBand} + first + k
    scores[#scores + 1] = id
  end
  redis.call('HSET', task, unpack(fields))
  redis.call('ZADD', pending, unpack(scores))
end
wake()
return out
`
)

/**
 * ARGV: `max, leaseMillis[, recordPrefix, now]`. Reaps, promotes, then leases up to `max` pending
 * tasks, each keeping the pending score it came from ({@link positionField}). Returns
 * `{ waitMillis, id, body, attempt, token[, start], ... }`. `waitMillis`,
 * when the claim took fewer than `max` (nothing is pending now): how long until the next lease
 * deadline or delay may be due (-1: none); -2 when it took `max` (more may be pending). With a
 * record prefix, each lease's start is recorded in the task record `<recordPrefix><id>` (stamped
 * `now`) and `start` is what `startRecord` answered.
 */
export const claim = script(
  "claim",
  `
local recordPrefix = ARGV[3]
maintain()
local popped = redis.call('ZPOPMIN', pending, tonumber(ARGV[1]))
local out = { -1 }
if #popped == 0 then
  if dueAt ~= nil then out[1] = math.max(0, dueAt - now) end
  return out
end
local deadline = now + tonumber(ARGV[2])
local n = #popped / 2
local firstToken = redis.call('INCRBY', tokens, n) - n
local leased, fields = {}, {}
for k = 1, n do
  local id = popped[2 * k - 1]
  local token = tostring(firstToken + k)
  local got = redis.call('HMGET', task, 'b:' .. id, 's:' .. id)
  -- A task's first claim finds no state: attempts 0, and the priority is its pending score's.
  local state = (tonumber(got[2]) or (10 - math.floor(tonumber(popped[2 * k]) / ${priorityBand}))) + 16
  leased[#leased + 1] = deadline
  leased[#leased + 1] = id
  fields[#fields + 1] = 's:' .. id
  fields[#fields + 1] = state
  fields[#fields + 1] = 'l:' .. id
  fields[#fields + 1] = token
  fields[#fields + 1] = 'p:' .. id
  fields[#fields + 1] = popped[2 * k]
  out[#out + 1] = id
  out[#out + 1] = got[1] or ''
  out[#out + 1] = math.floor(state / 16)
  out[#out + 1] = token
  if recordPrefix then
    out[#out + 1] = startRecord(recordPrefix .. id, token, math.floor(state / 16), state % 16, ARGV[4])
  end
end
redis.call('ZADD', inflight, unpack(leased))
redis.call('HSET', task, unpack(fields))
dueBy(deadline)
-- Tasks may be left only when the claim took all it asked for: then pullers elsewhere are woken
-- (without looking: a claim that took the last task wakes someone for nothing, once).
if n == tonumber(ARGV[1]) then
  out[1] = -2
  wake()
else
  out[1] = math.max(0, dueAt - now)
end
return out
`
)

/**
 * ARGV: `recordPrefix, now`, then `id, token` per lease. Undoes claims whose caller never saw
 * them (interrupted) or never ran (released by a worker): back to pending at the place it was
 * claimed from (at the back of its priority for a lease of an older layout that kept no place),
 * the attempt not counted. With a record prefix (else `''`: a plain claim), each task's record
 * too, as the claim recorded its start: back to PENDING (`releaseRecord`). Returns how many it undid.
 */
export const release = script(
  "release",
  `
local recordPrefix, recordNow = ARGV[1], ARGV[2]
local undone = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if holds(id, ARGV[i + 1]) then
    local score = redis.call('HGET', task, 'p:' .. id)
    unlease(id)
    redis.call('HINCRBY', task, 's:' .. id, -16)
    if score then redis.call('ZADD', pending, score, id) else toPending(id) end
    if recordPrefix ~= '' then releaseRecord(recordPrefix .. id, ARGV[i + 1], recordNow) end
    undone = undone + 1
  end
end
if undone > 0 then wake() end
return undone
`
)

/**
 * ARGV: `id, token` per lease (the acks gathered in one event-loop turn). Returns 1 (done) or 0
 * (the token no longer holds the task) per lease.
 */
export const ack = script(
  "ack",
  `
maintain()
local out = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if holds(id, ARGV[i + 1]) then
    acked[#acked + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
removeAcked()
return out
`
)

/**
 * ARGV: `recordPrefix, now, retentionMillis`, then `id, token, status ("COMPLETED" | "FAILED"),
 * value (result JSON | error)` per lease. Per lease: the outcome recorded in `<recordPrefix><id>`
 * when the token still holds the record, then the lease acked (COMPLETED) or dead-lettered with
 * the error (FAILED). Returns 1 (settled), 0 (the record has another token: nothing changed) or
 * 2 (recorded, but the lease no longer held) per lease.
 */
export const settle = script(
  "settle",
  `
maintain()
local recordPrefix, recordNow, retention = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 4 do
  local id, token, status, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local field = status == 'COMPLETED' and 'result' or 'error'
  if finishRecord(recordPrefix .. id, token, status, field, value, recordNow, retention) == 0 then
    out[#out + 1] = 0
  elseif not holds(id, token) then
    out[#out + 1] = 2
  else
    if status == 'COMPLETED' then
      acked[#acked + 1] = id
    else
      unlease(id)
      toDead(id, value)
    end
    out[#out + 1] = 1
  end
end
removeAcked()
return out
`
)

/**
 * ARGV: `id, token, mode ("requeue" | "dead"), delayMillis, error`. Returns 1 when done, 0 when
 * the token no longer holds the task.
 */
export const nack = script(
  "nack",
  `
maintain()
local id = ARGV[1]
if not holds(id, ARGV[2]) then return 0 end
unlease(id)
local delay = tonumber(ARGV[4])
if ARGV[3] == 'dead' then
  toDead(id, ARGV[5])
elseif delay > 0 then
  redis.call('ZADD', delayed, now + delay, id)
  dueBy(now + delay)
  wake()
else
  toPending(id)
  wake()
end
return 1
`
)

/** ARGV: `id, token, leaseMillis`. Returns 1 when extended, 0 when the token no longer holds the task. */
export const extend = script(
  "extend",
  `
maintain()
local id = ARGV[1]
if not holds(id, ARGV[2]) then return 0 end
redis.call('ZADD', inflight, now + tonumber(ARGV[3]), id)
dueBy(now + tonumber(ARGV[3]))
return 1
`
)

/** No ARGV. Returns `{ pending, inFlight, delayed, dead }` after upkeep. */
export const stats = script(
  "stats",
  `
maintain()
return {
  redis.call('ZCARD', pending),
  redis.call('ZCARD', inflight),
  redis.call('ZCARD', delayed),
  redis.call('ZCARD', dead)
}
`
)

/** No ARGV. Removes pending and delayed tasks (after upkeep); returns how many. */
export const clear = script(
  "clear",
  `
maintain()
local removed = 0
for _, key in ipairs({ pending, delayed }) do
  while true do
    local ids = redis.call('ZRANGE', key, 0, 999)
    if #ids == 0 then break end
    local fields = {}
    for i = 1, #ids do
      fields[#fields + 1] = 'b:' .. ids[i]
      fields[#fields + 1] = 's:' .. ids[i]
    end
    redis.call('HDEL', task, unpack(fields))
    redis.call('ZREMRANGEBYRANK', key, 0, #ids - 1)
    removed = removed + #ids
  end
end
return removed
`
)

/** ARGV: `limit`. Returns `{ id, body, attempts, error, deadAtMillis, ... }`, oldest first. */
export const deadLetters = script(
  "deadLetters",
  `
local limit = tonumber(ARGV[1])
local out = {}
if limit <= 0 then return out end
local letters = redis.call('ZRANGE', dead, 0, limit - 1, 'WITHSCORES')
for i = 1, #letters, 2 do
  local id = letters[i]
  local got = redis.call('HMGET', task, 'b:' .. id, 's:' .. id)
  out[#out + 1] = id
  out[#out + 1] = got[1] or ''
  out[#out + 1] = math.floor((tonumber(got[2]) or 0) / 16)
  out[#out + 1] = redis.call('HGET', errors, id) or ''
  out[#out + 1] = math.floor(tonumber(letters[i + 1]) / 1000)
end
return out
`
)

/** ARGV: `id`. Moves a dead letter back to pending with attempts 0; returns 1, or 0 when none. */
export const retryDead = script(
  "retryDead",
  `
local id = ARGV[1]
if redis.call('ZREM', dead, id) == 0 then return 0 end
redis.call('HDEL', errors, id)
local p = stateOf(id) % 16
redis.call('HSET', task, 's:' .. id, p)
toPending(id, p)
wake()
return 1
`
)

/** Every script, for loading at start-up. */
export const all: ReadonlyArray<Script> = [
  offer,
  claim,
  release,
  ack,
  settle,
  nack,
  extend,
  stats,
  clear,
  deadLetters,
  retryDead
]

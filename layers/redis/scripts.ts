/**
 * The Lua scripts of the Redis backend: every state change of a queue is one of these, run
 * atomically by Redis and called by SHA. Time is the server's (`TIME`), so every client agrees on
 * lease deadlines and delays.
 *
 * Each script gets the same keys, in the order of {@link keyNames}; see `layers/RedisQueue.ts`
 * for the layout.
 *
 * @since 0.1.0
 */
import { script as named, type Script } from "./Connection.js"

/** The keys of one queue, in the order every script receives them as `KEYS`. */
export const keyNames = [
  "pending",
  "inflight",
  "delayed",
  "dead",
  "body",
  "priority",
  "attempts",
  "lease",
  "error",
  "seq",
  "tokens",
  "marker"
] as const

/** One key of a queue. */
export type KeyName = (typeof keyNames)[number]

/** Pending score band of one priority level: `(10 - priority) * 2^40 + sequence`. */
export const priorityBand = 2 ** 40

// Shared by every script: key names, the server's clock, and the upkeep that puts expired leases
// and due delays back in pending (with a fresh sequence: the back of their priority).
const prelude = `
local pending, inflight, delayed, dead = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local body, priority, attempts, lease, errors = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local seq, tokens, marker = KEYS[10], KEYS[11], KEYS[12]
local time = redis.call('TIME')
local nowMicros = tonumber(time[1]) * 1000000 + tonumber(time[2])
local now = math.floor(nowMicros / 1000)

local function wake()
  redis.call('ZADD', marker, 0, 'wake')
end

local function toPending(id, p)
  p = p or tonumber(redis.call('HGET', priority, id)) or 5
  redis.call('ZADD', pending, (10 - p) * ${priorityBand} + redis.call('INCR', seq), id)
end

local function maintain()
  local moved = false
  local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now)
  for i = 1, #expired do
    redis.call('ZREM', inflight, expired[i])
    redis.call('HDEL', lease, expired[i])
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
end

local function holds(id, token)
  return redis.call('HGET', lease, id) == token
end

local function unlease(id)
  redis.call('ZREM', inflight, id)
  redis.call('HDEL', lease, id)
end
`

const script = (name: string, body: string): Script => named(name, `${prelude}\n${body}`)

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
  elseif redis.call('HEXISTS', body, id) == 1 then
    if redis.call('ZREM', dead, id) == 1 then
      redis.call('HDEL', errors, id)
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
  local bodies, priorities, attempt, scores = {}, {}, {}, {}
  for k = from, math.min(from + 999, #fresh) do
    local i = fresh[k]
    local id, p = ARGV[i], tonumber(ARGV[i + 1])
    bodies[#bodies + 1] = id
    bodies[#bodies + 1] = ARGV[i + 2]
    priorities[#priorities + 1] = id
    priorities[#priorities + 1] = p
    attempt[#attempt + 1] = id
    attempt[#attempt + 1] = 0
    scores[#scores + 1] = (10 - p) * ${priorityBand} + first + k
    scores[#scores + 1] = id
  end
  redis.call('HSET', body, unpack(bodies))
  redis.call('HSET', priority, unpack(priorities))
  redis.call('HSET', attempts, unpack(attempt))
  redis.call('ZADD', pending, unpack(scores))
end
wake()
return out
`
)

/**
 * ARGV: `max, leaseMillis`. Reaps, promotes, then leases up to `max` pending tasks. Returns
 * `{ waitMillis, id, body, attempt, token, score, ... }`; `waitMillis` is only set (>= 0) when
 * nothing was claimed: how long until the next lease deadline or delay is due (-1: none).
 */
export const claim = script(
  "claim",
  `
maintain()
local popped = redis.call('ZPOPMIN', pending, tonumber(ARGV[1]))
local deadline = now + tonumber(ARGV[2])
local out = { -1 }
for i = 1, #popped, 2 do
  local id = popped[i]
  local token = tostring(redis.call('INCR', tokens))
  redis.call('HSET', lease, id, token)
  redis.call('ZADD', inflight, deadline, id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', body, id) or ''
  out[#out + 1] = redis.call('HINCRBY', attempts, id, 1)
  out[#out + 1] = token
  out[#out + 1] = popped[i + 1]
end
if #popped == 0 then
  local nextDue = -1
  for _, key in ipairs({ inflight, delayed }) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] then
      local due = tonumber(first[2])
      if nextDue < 0 or due < nextDue then nextDue = due end
    end
  end
  if nextDue >= 0 then out[1] = math.max(0, nextDue - now) end
elseif redis.call('EXISTS', pending) == 1 then
  wake()
end
return out
`
)

/**
 * ARGV: `id, token, score` per lease. Undoes claims whose caller never saw them (interrupted) or
 * never ran (released by a worker):
 * back to pending at the same place, the attempt not counted. Returns how many it undid.
 */
export const release = script(
  "release",
  `
local undone = 0
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  if holds(id, ARGV[i + 1]) then
    unlease(id)
    redis.call('HINCRBY', attempts, id, -1)
    redis.call('ZADD', pending, ARGV[i + 2], id)
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
local done = {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if holds(id, ARGV[i + 1]) then
    done[#done + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #done > 0 then
  redis.call('ZREM', inflight, unpack(done))
  for _, key in ipairs({ lease, body, priority, attempts }) do
    redis.call('HDEL', key, unpack(done))
  end
end
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
  redis.call('ZADD', dead, nowMicros, id)
  redis.call('HSET', errors, id, ARGV[5])
elseif delay > 0 then
  redis.call('ZADD', delayed, now + delay, id)
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
    redis.call('HDEL', body, unpack(ids))
    redis.call('HDEL', priority, unpack(ids))
    redis.call('HDEL', attempts, unpack(ids))
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
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', body, id) or ''
  out[#out + 1] = tonumber(redis.call('HGET', attempts, id)) or 0
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
redis.call('HSET', attempts, id, 0)
toPending(id)
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
  nack,
  extend,
  stats,
  clear,
  deadLetters,
  retryDead
]

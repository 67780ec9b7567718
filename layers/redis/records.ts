/**
 * Task records on Redis, as the Redis task store keeps them and as the Redis queue writes them
 * inside its own claim and completion scripts when both share a server and a queue name.
 *
 * The record of task `id` of queue `q` is the hash `{q}:task:<id>` with the fields `status`,
 * `priority`, `attempts`, `created_at`, `updated_at` (epoch ms), `result` (JSON) or `error`, and
 * `token` (the lease token of the delivery that owns it). A finished (COMPLETED or FAILED) record
 * expires after the retention. Only a RETRYING, COMPLETED or FAILED record has a `result` or an
 * `error`: every way into PENDING or PROCESSING clears them, so the scripts below delete them
 * only when the status they replace may hold one.
 *
 * @since 0.1.0
 */
import { Either, ParseResult, Schema } from "effect"
import { QueueError } from "../../src/Errors.js"
import { TaskData, TaskRecord, TaskStatus } from "../../src/Task.js"
import { type StartResult, started } from "../../src/TaskStore.js"
import { type Connection, keyPrefix } from "./Connection.js"
import type { LuaHelper } from "./luaHelpers.js"

/** The key prefix of a queue's records: `{<queueName>}:task:`. */
export const recordPrefix = (queueName: string): string => `${keyPrefix(queueName)}task:`

/** The key of a task's record: `{<queueName>}:task:<taskId>`. */
export const recordKey = (queueName: string, taskId: string): string => `${recordPrefix(queueName)}${taskId}`

/** Where a queue's records live: the connection's server and database, and the queue name (no credentials). */
export const location = (connection: Connection, queueName: string): string => {
  const { db, host, path, port } = connection.client.options
  return `redis ${path ?? `${host}:${port}`}/${db ?? 0} ${queueName}`
}

/**
 * Lua functions for a script that writes records (the key is built from a prefix passed in, so
 * both the store's scripts and the queue's can use them), for `withHelpers`:
 *
 * - `startRecord(key, token, attempt, priority, now)`: PROCESSING for the delivery holding
 *   `token` (created when missing); a finished record is left alone and its fields returned;
 *   else 1.
 * - `finishRecord(key, token, status, field, value, now, retention)`: the outcome, when the
 *   record's token is still `token` (1), else nothing (0). Finished records expire after
 *   `retention` ms.
 * - `releaseRecord(key, token, now)`: back to PENDING, the attempt not counted, when the record
 *   is PROCESSING for `token` (1), else nothing (0): a delivery given back unrun.
 */
export const recordHelpers: ReadonlyArray<LuaHelper> = [
  {
    name: "startRecord",
    lua: `local function startRecord(key, token, attempt, priority, now)
  local status = redis.call('HGET', key, 'status')
  if status == 'COMPLETED' or status == 'FAILED' then return redis.call('HGETALL', key) end
  if status then
    redis.call('HSET', key, 'status', 'PROCESSING', 'attempts', attempt, 'updated_at', now, 'token', token)
    if status == 'RETRYING' then redis.call('HDEL', key, 'result', 'error') end
  else
    redis.call('HSET', key, 'status', 'PROCESSING', 'priority', priority, 'attempts', attempt,
      'created_at', now, 'updated_at', now, 'token', token)
  end
  return 1
end`
  },
  {
    name: "finishRecord",
    lua: `local function finishRecord(key, token, status, field, value, now, retention)
  local held = redis.call('HMGET', key, 'token', 'status')
  if held[1] ~= token then return 0 end
  redis.call('HSET', key, 'status', status, 'updated_at', now, field, value)
  if held[2] ~= 'PROCESSING' then redis.call('HDEL', key, field == 'result' and 'error' or 'result') end
  if status == 'COMPLETED' or status == 'FAILED' then redis.call('PEXPIRE', key, retention) end
  return 1
end`
  },
  {
    name: "releaseRecord",
    lua: `local function releaseRecord(key, token, now)
  local held = redis.call('HMGET', key, 'token', 'status', 'attempts')
  if held[1] ~= token or held[2] ~= 'PROCESSING' then return 0 end
  local attempts = math.max(0, (tonumber(held[3]) or 1) - 1)
  redis.call('HSET', key, 'status', 'PENDING', 'attempts', attempts, 'updated_at', now, 'token', '')
  return 1
end`
  }
]

/** A record hash as stored. */
const RecordHash = Schema.Struct({
  status: TaskStatus,
  priority: Schema.NumberFromString,
  attempts: Schema.NumberFromString,
  created_at: Schema.NumberFromString,
  updated_at: Schema.NumberFromString,
  result: Schema.optional(Schema.parseJson(TaskData)),
  error: Schema.optional(Schema.String)
})

const decodeHash = Schema.decodeUnknownEither(RecordHash)
const decodeRecord = Schema.decodeUnknownEither(TaskRecord)

/** The record of `taskId` from its hash fields (`HGETALL`), or why it is malformed. */
const toRecord = (taskId: string, fields: Record<string, string>): Either.Either<TaskRecord, string> =>
  Either.flatMap(decodeHash(fields), (hash) =>
    decodeRecord({
      taskId,
      status: hash.status,
      priority: hash.priority,
      attempts: hash.attempts,
      createdAt: hash.created_at,
      updatedAt: hash.updated_at,
      ...(hash.result === undefined ? {} : { result: hash.result }),
      ...(hash.error === undefined ? {} : { error: hash.error })
    })
  ).pipe(Either.mapLeft((error) => ParseResult.TreeFormatter.formatErrorSync(error)))

/** `HGETALL`'s flat reply (as a script returns it) as an object. */
export const pairs = (flat: ReadonlyArray<string>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!
  return out
}

/** The record of `taskId` from its hash fields, or a `QueueError` saying why it is malformed. */
export const decoded = (
  taskId: string,
  fields: Record<string, string>
): Either.Either<TaskRecord, QueueError> =>
  Either.mapLeft(
    toRecord(taskId, fields),
    (reason) => new QueueError({ message: `the record of task ${taskId} is malformed: ${reason}` })
  )

/** What `startRecord` answered for one record: 1, or the fields of a finished record. */
export const startResult = (taskId: string, reply: unknown): Either.Either<StartResult, QueueError> =>
  Array.isArray(reply)
    ? Either.map(decoded(taskId, pairs(reply as ReadonlyArray<string>)), (record) => ({
        _tag: "Finished",
        record
      }))
    : Either.right(started)

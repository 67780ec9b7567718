/**
 * The Redis task store (ioredis): the records of a queue's tasks, shared by every process that
 * names the same queue on the same Redis.
 *
 * Layout: the record of task `id` of queue `q` is the hash `{q}:task:<id>` (the hash tag `{q}` of
 * the queue's other keys) with the fields `status`, `priority`, `attempts`, `created_at`,
 * `updated_at` (epoch ms), `result` (JSON) or `error`, and `token` (the lease token of the delivery
 * that owns it). Every transition is one Lua script, called by SHA: `create` fails on a known id,
 * `start` leaves finished records alone, `finish` checks the token, `reset` clears the outcome.
 * A finished (COMPLETED or FAILED) record expires after the retention. Times come from Effect's
 * `Clock`, like the memory store's.
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"
import {
  Clock,
  Config,
  type ConfigError,
  Duration,
  Effect,
  Either,
  Layer,
  Option,
  ParseResult,
  Redacted,
  Schema,
  type Scope
} from "effect"
import { Redis } from "ioredis"
import { DuplicateTask, QueueError } from "../src/Errors.js"
import * as QM from "../src/QueueManager.js"
import { type Priority, TaskData, type TaskId, TaskRecord, TaskStatus } from "../src/Task.js"
import {
  defaultRetention,
  type Outcome,
  type StartResult,
  started,
  TaskStore,
  type TaskStoreService
} from "../src/TaskStore.js"

/** Options of the Redis task store. */
export interface RedisTaskStoreOptions {
  /** Default `"tasks"`; every record key starts with `{<queueName>}`. */
  readonly queueName?: string | undefined
  /** Default `redis://127.0.0.1:6379`; may carry a password, hence `Redacted`. */
  readonly redisUrl?: string | Redacted.Redacted | undefined
  /** How long COMPLETED and FAILED records are kept; default 7 days. */
  readonly retention?: Duration.DurationInput | undefined
  /** Bound on connecting (at start-up and on each reconnection attempt); default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Bound on one Redis call once connected; default 5 seconds. */
  readonly commandTimeout?: Duration.DurationInput | undefined
}

/** The key of a task's record: `{<queueName>}:task:<taskId>`. */
export const recordKey = (queueName: string, taskId: string): string => `{${queueName}}:task:${taskId}`

interface Script {
  readonly name: string
  readonly lua: string
  readonly sha: string
}

const script = (name: string, lua: string): Script => ({
  name,
  lua,
  sha: createHash("sha1").update(lua).digest("hex")
})

/** ARGV: priority, now. 1 when created, 0 when the id is known. */
const createScript = script(
  "create",
  `if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'priority', ARGV[1], 'attempts', 0,
  'created_at', ARGV[2], 'updated_at', ARGV[2], 'token', '')
return 1`
)

/** ARGV: token, attempt, priority, now. 1 when started; the record's fields when it is finished. */
const startScript = script(
  "start",
  `local status = redis.call('HGET', KEYS[1], 'status')
if status == 'COMPLETED' or status == 'FAILED' then return redis.call('HGETALL', KEYS[1]) end
if status then
  redis.call('HSET', KEYS[1], 'status', 'PROCESSING', 'attempts', ARGV[2], 'updated_at', ARGV[4], 'token', ARGV[1])
  redis.call('HDEL', KEYS[1], 'result', 'error')
else
  redis.call('HSET', KEYS[1], 'status', 'PROCESSING', 'priority', ARGV[3], 'attempts', ARGV[2],
    'created_at', ARGV[4], 'updated_at', ARGV[4], 'token', ARGV[1])
end
return 1`
)

/** ARGV: token, status, now, field (result | error), value, retention ms. 1 when recorded, 0 when the token no longer holds. */
const finishScript = script(
  "finish",
  `if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3], ARGV[4], ARGV[5])
if ARGV[4] == 'result' then redis.call('HDEL', KEYS[1], 'error') else redis.call('HDEL', KEYS[1], 'result') end
if ARGV[2] == 'COMPLETED' or ARGV[2] == 'FAILED' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return 1`
)

/** ARGV: now. 1 when reset, 0 when unknown. */
const resetScript = script(
  "reset",
  `if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'attempts', 0, 'updated_at', ARGV[1], 'token', '')
redis.call('HDEL', KEYS[1], 'result', 'error')
redis.call('PERSIST', KEYS[1])
return 1`
)

const scripts = [createScript, startScript, finishScript, resetScript]

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

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** Where a URL points, without its credentials, for error messages. */
const hostOf = (url: string) => {
  try {
    return new URL(url).host || "redis"
  } catch {
    return "redis (unparsable URL)"
  }
}

/** Reconnects forever, backing off from 50 ms to 2 s. */
const retryStrategy = (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2_000)

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
const pairs = (flat: ReadonlyArray<string>): Record<string, string> => {
  const out: Record<string, string> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) out[flat[i]!] = flat[i + 1]!
  return out
}

/**
 * A task store on Redis. Opens one connection in the scope (closed when the scope closes), checks
 * it within the connect timeout and loads the scripts.
 */
export const make = (
  options: RedisTaskStoreOptions = {}
): Effect.Effect<TaskStoreService, QueueError, Scope.Scope> =>
  Effect.gen(function* () {
    const queueName = options.queueName ?? QM.defaults.queueName
    if (queueName.length === 0 || /[{}]/.test(queueName)) {
      return yield* new QueueError({
        message: `invalid queue name ${JSON.stringify(queueName)}: it must be non-empty, without { or }`
      })
    }
    const url =
      options.redisUrl === undefined
        ? Redacted.make(QM.defaults.redisUrl)
        : Redacted.isRedacted(options.redisUrl)
          ? options.redisUrl
          : Redacted.make(options.redisUrl)
    const where = hostOf(Redacted.value(url))
    const retentionMillis = Duration.toMillis(options.retention ?? defaultRetention)
    const connectMillis = Duration.toMillis(options.connectTimeout ?? Duration.seconds(5))
    let lastError: unknown

    const client = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = new Redis(Redacted.value(url), {
          lazyConnect: true,
          connectionName: `etq:${queueName.replace(/[^\x21-\x7e]/g, "_")}:store`,
          enableOfflineQueue: false,
          enableAutoPipelining: true,
          maxRetriesPerRequest: 1,
          connectTimeout: connectMillis,
          commandTimeout: Duration.toMillis(options.commandTimeout ?? Duration.seconds(5)),
          retryStrategy
        })
        // Without a listener an ioredis error event would crash the process; the calls see it anyway.
        client.on("error", (error: unknown) => {
          lastError = error
        })
        return client
      }),
      (client) =>
        (client.status === "ready"
          ? Effect.tryPromise(() => client.quit()).pipe(
              // Finalizers are uninterruptible: without this the timeout would wait for the reply.
              Effect.interruptible,
              Effect.timeout(Duration.seconds(1)),
              Effect.ignore
            )
          : Effect.void
        ).pipe(Effect.ensuring(Effect.sync(() => client.disconnect())))
    )

    const call = <A>(what: string, f: (client: Redis) => Promise<A>) =>
      Effect.tryPromise({
        try: () => f(client),
        catch: (cause) =>
          new QueueError({
            message: `Redis task store ${what} failed on ${where}: ${describe(cause)}`,
            cause
          })
      })

    yield* call("connect", (c) => c.connect()).pipe(
      Effect.mapError(
        (error) =>
          new QueueError({
            message: `cannot connect to Redis at ${where}: ${describe(lastError ?? error.cause)}`,
            cause: lastError ?? error.cause
          })
      ),
      Effect.timeoutFail({
        duration: Duration.millis(connectMillis),
        onTimeout: () =>
          new QueueError({
            message: `cannot connect to Redis at ${where}: no answer within ${connectMillis} ms`
          })
      })
    )
    yield* call("SCRIPT LOAD", (c) =>
      Promise.all(scripts.map((s) => c.script("LOAD", s.lua) as Promise<string>))
    )

    // By SHA; after a SCRIPT FLUSH, EVAL runs (and caches) the script again.
    const run = (s: Script, key: string, args: ReadonlyArray<string | number>) =>
      call(s.name, (c) =>
        c
          .evalsha(s.sha, 1, key, ...args)
          .catch((error: unknown) =>
            error instanceof Error && error.message.startsWith("NOSCRIPT")
              ? c.eval(s.lua, 1, key, ...args)
              : Promise.reject(error)
          )
      )

    const malformed = (taskId: string, reason: string) =>
      new QueueError({ message: `the record of task ${taskId} is malformed: ${reason}` })

    const decoded = (taskId: string, fields: Record<string, string>) =>
      Either.match(toRecord(taskId, fields), {
        onLeft: (reason) => Effect.fail(malformed(taskId, reason)),
        onRight: Effect.succeed
      })

    const key = (taskId: string) => recordKey(queueName, taskId)

    return {
      create: (taskId, priority) =>
        Effect.gen(function* () {
          const now = yield* Clock.currentTimeMillis
          const created = yield* run(createScript, key(taskId), [priority, now])
          if (created !== 1) {
            return yield* new DuplicateTask({ taskId, message: `task ${taskId} is already known` })
          }
          return new TaskRecord(
            {
              taskId: taskId as TaskId,
              status: "PENDING",
              priority: priority as Priority,
              attempts: 0,
              createdAt: now,
              updatedAt: now
            },
            { disableValidation: true }
          )
        }),
      get: (taskId) =>
        Effect.flatMap(
          call("HGETALL", (c) => c.hgetall(key(taskId))),
          (fields) =>
            Object.keys(fields).length === 0
              ? Effect.succeed(Option.none())
              : Effect.map(decoded(taskId, fields), Option.some)
        ),
      start: (taskId, lease) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.flatMap(
            run(startScript, key(taskId), [lease.token, lease.attempt, lease.priority, now]),
            (reply): Effect.Effect<StartResult, QueueError> =>
              Array.isArray(reply)
                ? Effect.map(decoded(taskId, pairs(reply as ReadonlyArray<string>)), (record) => ({
                    _tag: "Finished",
                    record
                  }))
                : Effect.succeed(started)
          )
        ),
      finish: (taskId, token, outcome: Outcome) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.map(
            run(finishScript, key(taskId), [
              token,
              outcome.status,
              now,
              ...(outcome.status === "COMPLETED"
                ? ["result", JSON.stringify(outcome.result)]
                : ["error", outcome.error]),
              retentionMillis
            ]),
            (reply) => reply === 1
          )
        ),
      reset: (taskId) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.map(run(resetScript, key(taskId), [now]), (reply) => reply === 1)
        )
    } satisfies TaskStoreService
  })

/** Provides `TaskStore` on Redis; the connection lives as long as the layer. */
export const layer = (options: RedisTaskStoreOptions = {}): Layer.Layer<TaskStore, QueueError> =>
  Layer.scoped(TaskStore, make(options))

/** As {@link layer}, configured by `QUEUE_NAME`, `REDIS_URL` and `TASK_RETENTION`. */
export const layerConfig: Layer.Layer<TaskStore, QueueError | ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(
    Config.all({
      queueName: Config.string("QUEUE_NAME").pipe(Config.withDefault(QM.defaults.queueName)),
      redisUrl: Config.redacted("REDIS_URL").pipe(Config.withDefault(Redacted.make(QM.defaults.redisUrl))),
      retention: Config.duration("TASK_RETENTION").pipe(Config.withDefault(defaultRetention))
    }),
    layer
  )
)

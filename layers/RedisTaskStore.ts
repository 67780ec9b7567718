/**
 * The Redis task store (ioredis): the records of a queue's tasks, shared by every process that
 * names the same queue on the same Redis.
 *
 * Layout: the record of task `id` of queue `q` is the hash `{q}:task:<id>` (the hash tag `{q}` of
 * the queue's other keys; see `layers/redis/records.ts`). Every transition is one Lua script,
 * called by SHA: `create` fails on a known id, `start` leaves finished records alone, `finish`
 * checks the token, `reset` clears the outcome. A finished (COMPLETED or FAILED) record expires
 * after the retention. Times come from Effect's `Clock`, like the memory store's.
 *
 * @since 0.1.0
 */
import {
  Clock,
  Config,
  type ConfigError,
  Duration,
  Effect,
  Layer,
  Option,
  Redacted,
  type Scope
} from "effect"
import { DuplicateTask, type QueueError } from "../src/Errors.js"
import * as QM from "../src/QueueManager.js"
import { type Priority, type TaskId, TaskRecord } from "../src/Task.js"
import { defaultRetention, type Outcome, TaskStore, type TaskStoreService } from "../src/TaskStore.js"
import * as Connection from "./redis/Connection.js"
import { withHelpers } from "./redis/luaHelpers.js"
import * as Records from "./redis/records.js"

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
export const recordKey = Records.recordKey

/** ARGV: priority, now. 1 when created, 0 when the id is known. */
const createScript = Connection.script(
  "create",
  `if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'priority', ARGV[1], 'attempts', 0,
  'created_at', ARGV[2], 'updated_at', ARGV[2], 'token', '')
return 1`
)

/**
 * KEYS: one record per start (the starts gathered in one event-loop turn). ARGV: now, then
 * token, attempt, priority per key. Per key: 1 when started; the record's fields when it is finished.
 */
const startScript = Connection.script(
  "start",
  withHelpers(
    Records.recordHelpers,
    `local out = {}
for i = 1, #KEYS do
  out[i] = startRecord(KEYS[i], ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1], ARGV[1])
end
return out`
  )
)

/**
 * KEYS: one record per outcome (those gathered in one event-loop turn). ARGV: now, retention ms,
 * then token, status, field (result | error), value per key. Per key: 1 when recorded, 0 when the
 * token no longer holds.
 */
const finishScript = Connection.script(
  "finish",
  withHelpers(
    Records.recordHelpers,
    `local out = {}
for i = 1, #KEYS do
  local at = 4 * i - 1
  out[i] = finishRecord(KEYS[i], ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[1], ARGV[2])
end
return out`
  )
)

/** ARGV: token, now. 1 when given back (PENDING, the attempt not counted), 0 when the token no longer holds. */
const releaseScript = Connection.script(
  "release",
  withHelpers(Records.recordHelpers, `return releaseRecord(KEYS[1], ARGV[1], ARGV[2])`)
)

/** ARGV: now. 1 when reset, 0 when unknown. */
const resetScript = Connection.script(
  "reset",
  `if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'attempts', 0, 'updated_at', ARGV[1], 'token', '')
redis.call('HDEL', KEYS[1], 'result', 'error')
redis.call('PERSIST', KEYS[1])
return 1`
)

const scripts = [createScript, startScript, finishScript, releaseScript, resetScript]

/** The most starts or outcomes gathered into one script call. */
const maxBatch = 256

/** A start, as the batched script takes it. */
interface StartCall {
  readonly key: string
  readonly token: string
  readonly attempt: number
  readonly priority: number
  readonly now: number
}

/** An outcome, as the batched script takes it. */
interface FinishCall {
  readonly key: string
  readonly token: string
  readonly outcome: Outcome
  readonly now: number
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
    yield* Connection.checkQueueName(queueName)
    const retentionMillis = Duration.toMillis(options.retention ?? defaultRetention)
    const connection = yield* Connection.connect({
      url: Connection.resolveUrl(options.redisUrl),
      name: `${Connection.connectionNamePrefix(queueName)}store`,
      connectMillis: Duration.toMillis(options.connectTimeout ?? Duration.seconds(5)),
      commandMillis: Duration.toMillis(options.commandTimeout ?? Duration.seconds(5)),
      close: "quit",
      label: "Redis task store"
    })
    yield* Connection.loadScripts(connection, scripts)
    const run = (s: Connection.Script, key: string, args: ReadonlyArray<string | number>) =>
      connection.evalScript(s, [key], args)

    // Starts and outcomes recorded in the same event-loop turn (by concurrent tasks) go to Redis
    // as one script call each (two from `Connection.splitAt` on); the clock of the turn's first
    // call stamps them all.
    const callKeys = (calls: ReadonlyArray<StartCall | FinishCall>) => calls.map((c) => c.key)
    const startArgs = (calls: ReadonlyArray<StartCall>) => [
      calls[0]!.now,
      ...calls.flatMap((c) => [c.token, c.attempt, c.priority])
    ]
    const finishArgs = (calls: ReadonlyArray<FinishCall>) => [
      calls[0]!.now,
      retentionMillis,
      ...calls.flatMap(({ outcome, token }) =>
        outcome.status === "COMPLETED"
          ? [token, outcome.status, "result", JSON.stringify(outcome.result)]
          : [token, outcome.status, "error", outcome.error]
      )
    ]
    const replies = (reply: unknown) => reply as ReadonlyArray<unknown>
    const startBatch = connection.batched({
      script: startScript,
      max: maxBatch,
      keys: callKeys,
      args: startArgs,
      outputs: replies
    })
    const finishBatch = connection.batched({
      script: finishScript,
      max: maxBatch,
      keys: callKeys,
      args: finishArgs,
      outputs: replies
    })

    const key = (taskId: string) => recordKey(queueName, taskId)

    return {
      shared: { location: Records.location(connection, queueName), retentionMillis },
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
          connection.run("HGETALL", (c) => c.hgetall(key(taskId))),
          (fields) =>
            Object.keys(fields).length === 0
              ? Effect.succeed(Option.none())
              : Effect.map(Records.decoded(taskId, fields), Option.some)
        ),
      start: (taskId, lease) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.flatMap(
            startBatch({
              key: key(taskId),
              token: lease.token,
              attempt: lease.attempt,
              priority: lease.priority,
              now
            }),
            (reply) => Records.startResult(taskId, reply)
          )
        ),
      startMany: (starts) =>
        starts.length === 0
          ? Effect.succeed([])
          : Effect.flatMap(Clock.currentTimeMillis, (now) =>
              Effect.flatMap(
                Effect.suspend(() => {
                  const calls = starts.map(({ lease, taskId }) => ({
                    key: key(taskId),
                    token: lease.token,
                    attempt: lease.attempt,
                    priority: lease.priority,
                    now
                  }))
                  return connection.evalScript(startScript, callKeys(calls), startArgs(calls))
                }),
                (reply) =>
                  Effect.forEach(replies(reply), (one, i) => Records.startResult(starts[i]!.taskId, one))
              )
            ),
      finish: (taskId, token, outcome: Outcome) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.map(finishBatch({ key: key(taskId), token, outcome, now }), (reply) => reply === 1)
        ),
      release: (taskId, token) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.map(run(releaseScript, key(taskId), [token, now]), (reply) => reply === 1)
        ),
      finishMany: (outcomes) =>
        outcomes.length === 0
          ? Effect.succeed([])
          : Effect.flatMap(Clock.currentTimeMillis, (now) =>
              Effect.map(
                Effect.suspend(() => {
                  const calls = outcomes.map(({ outcome, taskId, token }) => ({
                    key: key(taskId),
                    token,
                    outcome,
                    now
                  }))
                  return connection.evalScript(finishScript, callKeys(calls), finishArgs(calls))
                }),
                (reply) => replies(reply).map((one) => one === 1)
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

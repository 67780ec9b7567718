/**
 * The Redis backend (ioredis): the memory backend's semantics, shared by every process that
 * names the same queue on the same Redis.
 *
 * Layout: every key of queue `q` starts with the hash tag `{q}`, so the scripts also run on
 * Redis Cluster.
 *
 * - `{q}:pending` ZSET id -> `(10 - priority) * 2^40 + sequence` (lower is sooner; FIFO inside a
 *   priority); `{q}:seq` the sequence counter.
 * - `{q}:inflight` ZSET id -> lease deadline (server ms); `{q}:lease` HASH id -> lease token;
 *   `{q}:tokens` the token counter.
 * - `{q}:delayed` ZSET id -> ready time (server ms).
 * - `{q}:dead` ZSET id -> dead time (server µs, oldest first); `{q}:error` HASH id -> last error.
 * - `{q}:body`, `{q}:priority`, `{q}:attempts` HASH id -> the task, kept until it is acked.
 * - `{q}:marker` ZSET: the wake-up that blocked pullers wait on with `BZPOPMIN`.
 *
 * Every state change is one Lua script (`layers/redis/scripts.ts`) called by SHA, timed by the
 * server's `TIME`. A pull that finds nothing waits on the marker: one fiber per layer runs
 * `BZPOPMIN` on a dedicated connection while any local puller waits, and wakes them all when a
 * marker arrives; a claim that leaves tasks pending sets the marker again, so one batch push
 * wakes pullers in every process.
 *
 * @since 0.1.0
 */
import {
  Clock,
  Config,
  type ConfigError,
  Deferred,
  Duration,
  Effect,
  Exit,
  FiberId,
  Layer,
  Redacted,
  type Scope
} from "effect"
import { Redis, type RedisOptions } from "ioredis"
import { LeaseLost, QueueError } from "../src/Errors.js"
import type { QueueBackend, RawDeadLetter, RawLease, RawNack, RawTask } from "../src/QueueBackend.js"
import * as QM from "../src/QueueManager.js"
import * as Scripts from "./redis/scripts.js"

/** Options of the Redis backend. */
export interface RedisQueueOptions {
  /** Default `"tasks"`; every key of the queue starts with `{<queueName>}`. */
  readonly queueName?: string | undefined
  /** Default `redis://127.0.0.1:6379`; may carry a password, hence `Redacted`. */
  readonly redisUrl?: string | Redacted.Redacted | undefined
  /** Default 30 seconds. */
  readonly leaseDuration?: Duration.DurationInput | undefined
  /** Bound on connecting (at start-up and on each reconnection attempt); default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Bound on one Redis call once connected; default 5 seconds. */
  readonly commandTimeout?: Duration.DurationInput | undefined
}

/** The Redis keys of a queue, all under the hash tag `{<queueName>}`. */
export const keys = (queueName: string): Record<Scripts.KeyName, string> =>
  Object.fromEntries(Scripts.keyNames.map((name) => [name, `{${queueName}}:${name}`])) as Record<
    Scripts.KeyName,
    string
  >

/** The pending score of a task: lower is pulled sooner. */
export const pendingScore = (priority: number, sequence: number): number =>
  (10 - priority) * Scripts.priorityBand + sequence

/** The `CLIENT SETNAME` prefix of a queue's connections (`etq:<queue>:cmd`, `etq:<queue>:block`). */
export const connectionNamePrefix = (queueName: string): string =>
  `etq:${queueName.replace(/[^\x21-\x7e]/g, "_")}:`

/** How long one `BZPOPMIN` blocks before the waiting fiber looks again; short, so none outlives its puller for long. */
const blockSeconds = 1

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** Where a URL points, without its credentials, for error messages. */
const hostOf = (url: string) => {
  try {
    return new URL(url).host || "redis"
  } catch {
    return "redis (unparsable URL)"
  }
}

/** A connection with its guarded command runner. */
interface Connection {
  readonly client: Redis
  /** Runs one call; fails with `QueueError` on an error, on a timeout, or as soon as the connection drops. */
  readonly run: <A>(what: string, call: (client: Redis) => Promise<A>) => Effect.Effect<A, QueueError>
}

/** Reconnects forever, backing off from 50 ms to 2 s with jitter. */
const retryStrategy = (times: number) =>
  Math.min(50 * 2 ** Math.min(times, 6), 2_000) * (0.75 + Math.random() / 2)

/** Opens a connection in the scope; it is closed (quit, else disconnect) when the scope closes. */
const connect = (
  url: Redacted.Redacted,
  name: string,
  timeouts: { readonly connect: number; readonly command: number },
  close: "quit" | "disconnect",
  autoPipelining: boolean
): Effect.Effect<Connection, QueueError, Scope.Scope> =>
  Effect.gen(function* () {
    const where = hostOf(Redacted.value(url))
    let lastError: unknown
    // Rejections of the calls waiting on this connection: a dropped connection fails them at once
    // (their outcome is unknown), instead of leaving them to ioredis, which would drop them.
    const waiting = new Set<(error: Error) => void>()
    const options: RedisOptions = {
      lazyConnect: true,
      connectionName: name,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 1,
      // Calls issued in the same event-loop turn leave in one write (one round trip); each
      // caller still gets its own reply.
      enableAutoPipelining: autoPipelining,
      connectTimeout: timeouts.connect,
      commandTimeout: timeouts.command,
      retryStrategy
    }
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = new Redis(Redacted.value(url), options)
        // Without a listener, an ioredis error event would crash the process; the calls see it anyway.
        client.on("error", (error: unknown) => {
          lastError = error
        })
        client.on("close", () => {
          for (const reject of waiting) reject(new Error("the connection to Redis closed before it replied"))
          waiting.clear()
        })
        return client
      }),
      // QUIT lets the replies in flight arrive; a blocked BZPOPMIN would only delay it, so the
      // blocking connection is simply dropped.
      (client) =>
        (close === "quit" && client.status === "ready"
          ? Effect.tryPromise(() => client.quit()).pipe(
              // Finalizers are uninterruptible: without this the timeout would wait for the reply.
              Effect.interruptible,
              Effect.timeout(Duration.seconds(1)),
              Effect.catchAll(() => Effect.void)
            )
          : Effect.void
        ).pipe(Effect.ensuring(Effect.sync(() => client.disconnect())))
    )
    yield* Effect.tryPromise({
      try: () => client.connect(),
      catch: (cause) =>
        new QueueError({
          message: `cannot connect to Redis at ${where}: ${describe(lastError ?? cause)}`,
          cause: lastError ?? cause
        })
    }).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(timeouts.connect),
        onTimeout: () =>
          new QueueError({
            message: `cannot connect to Redis at ${where}: no answer within ${timeouts.connect} ms`,
            ...(lastError === undefined ? {} : { cause: lastError })
          })
      })
    )
    const run = <A>(what: string, call: (client: Redis) => Promise<A>) =>
      Effect.tryPromise({
        try: () =>
          new Promise<A>((resolve, reject) => {
            waiting.add(reject)
            const settle = () => waiting.delete(reject)
            let promise: Promise<A>
            try {
              promise = call(client)
            } catch (error) {
              settle()
              return reject(error)
            }
            promise.then(
              (value) => {
                settle()
                resolve(value)
              },
              (error) => {
                settle()
                reject(error)
              }
            )
          }),
        catch: (cause) =>
          new QueueError({ message: `Redis ${what} failed on ${where}: ${describe(cause)}`, cause })
      })
    return { client, run }
  })

const isNoScript = (error: unknown) => error instanceof Error && error.message.startsWith("NOSCRIPT")

const lost = (id: string) =>
  new LeaseLost({
    taskId: id,
    message: `the lease on task ${id} is no longer held (expired, or the task moved on)`
  })

/** A claim as the script returns it: the leases, or how long until something is due (-1: nothing). */
interface Claimed {
  readonly leases: ReadonlyArray<RawLease & { readonly score: string }>
  readonly waitMillis: number
}

/**
 * The raw operations of one queue on Redis. Opens two connections in the scope (commands, and
 * the blocking wait for new tasks), checks them within the connect timeout and loads the scripts.
 */
export const makeBackend = (
  options: RedisQueueOptions = {}
): Effect.Effect<QueueBackend, QueueError, Scope.Scope> =>
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
    const leaseMillis = Duration.toMillis(options.leaseDuration ?? QM.defaults.leaseDuration)
    const connectMillis = Duration.toMillis(options.connectTimeout ?? Duration.seconds(5))
    const commandMillis = Duration.toMillis(options.commandTimeout ?? Duration.seconds(5))
    const names = connectionNamePrefix(queueName)
    const key = keys(queueName)
    const keyList = Scripts.keyNames.map((name) => key[name])

    const [commands, blocking] = yield* Effect.all(
      [
        connect(url, `${names}cmd`, { connect: connectMillis, command: commandMillis }, "quit", true),
        connect(
          url,
          `${names}block`,
          { connect: connectMillis, command: blockSeconds * 1000 + commandMillis },
          "disconnect",
          false
        )
      ],
      { concurrency: 2 }
    )

    // Load once; calls go by SHA and fall back to EVAL (which caches again) after a SCRIPT FLUSH.
    yield* commands.run("SCRIPT LOAD", (c) =>
      Promise.all(Scripts.all.map((s) => c.script("LOAD", s.lua) as Promise<string>))
    )

    const evalScript = (script: Scripts.Script, args: ReadonlyArray<string | number>) =>
      commands.run(script.name, (c) =>
        c
          .evalsha(script.sha, keyList.length, ...keyList, ...args)
          .catch((error: unknown) =>
            isNoScript(error)
              ? c.eval(script.lua, keyList.length, ...keyList, ...args)
              : Promise.reject(error)
          )
      )

    // --- waking blocked pullers -------------------------------------------------------------
    // A generation ends (its deferred completes) whenever a marker arrives. A puller takes the
    // current generation before its claim, so a marker that lands during the claim still wakes
    // it; the blocking fiber only waits for Redis while the current generation has waiters.
    interface Generation {
      readonly woken: Deferred.Deferred<void>
      waiters: number
    }
    const generation = (): Generation => ({ woken: Deferred.unsafeMake<void>(FiberId.none), waiters: 0 })
    let current = generation()
    let someoneWaits = Deferred.unsafeMake<void>(FiberId.none)
    const wakeAll = () => {
      const ended = current
      current = generation()
      Deferred.unsafeDone(ended.woken, Exit.void)
    }
    const waitFor = (gen: Generation, millis: number) =>
      gen !== current
        ? Effect.void // woken while it claimed: claim again at once
        : Effect.acquireUseRelease(
            Effect.sync(() => {
              if (gen.waiters++ === 0) {
                Deferred.unsafeDone(someoneWaits, Exit.void)
                someoneWaits = Deferred.unsafeMake<void>(FiberId.none)
              }
            }),
            () => Effect.race(Deferred.await(gen.woken), Effect.sleep(Duration.millis(Math.max(0, millis)))),
            () =>
              Effect.sync(() => {
                gen.waiters--
              })
          )

    let failures = 0
    const blockOnce = Effect.gen(function* () {
      if (current.waiters === 0) yield* Deferred.await(someoneWaits)
      const popped = yield* blocking.run("BZPOPMIN", (c) => c.bzpopmin(key.marker, blockSeconds))
      failures = 0
      if (popped === null) return
      if (current.waiters > 0) return wakeAll()
      // Nobody here waits any more: give the marker back for pullers elsewhere.
      yield* commands.run("ZADD marker", (c) => c.zadd(key.marker, 0, "wake"))
    }).pipe(
      Effect.catchAll((error) => {
        wakeAll()
        failures++
        return Effect.logWarning("waiting for new tasks failed; retrying").pipe(
          Effect.annotateLogs({ error: error.message }),
          Effect.zipRight(Effect.sleep(Duration.millis(Math.min(100 * 2 ** Math.min(failures, 5), 2_000))))
        )
      })
    )
    yield* blockOnce.pipe(
      Effect.forever,
      Effect.annotateLogs({ module: "RedisQueue", queue: queueName }),
      Effect.interruptible,
      Effect.forkScoped
    )

    // --- operations ---------------------------------------------------------------------------
    const parseClaim = (reply: unknown): Claimed => {
      const r = reply as ReadonlyArray<string | number>
      const leases: Array<RawLease & { readonly score: string }> = []
      for (let i = 1; i + 4 < r.length; i += 5) {
        leases.push({
          id: String(r[i]),
          body: String(r[i + 1]),
          attempt: Number(r[i + 2]),
          token: String(r[i + 3]),
          score: String(r[i + 4])
        })
      }
      return { leases, waitMillis: Number(r[0]) }
    }

    const release = (leases: Claimed["leases"]) =>
      evalScript(
        Scripts.release,
        leases.flatMap((l) => [l.id, l.token, l.score])
      ).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("could not give back interrupted claims; their leases will expire").pipe(
            Effect.annotateLogs({ error: error.message, queue: queueName })
          )
        )
      )

    // The claim is atomic for its caller: if the caller is interrupted while Redis answers, the
    // tasks go straight back where they were, their attempt not counted.
    const claimOnce = (max: number) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(evalScript(Scripts.claim, [max, leaseMillis]), (reply) => {
          const claimed = parseClaim(reply)
          if (claimed.leases.length === 0) return Effect.succeed(claimed)
          return restore(Effect.succeed(claimed)).pipe(Effect.onInterrupt(() => release(claimed.leases)))
        })
      )

    const claim = (max: number, timeout: Duration.Duration) =>
      Effect.gen(function* () {
        const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(timeout)
        for (;;) {
          const gen = current
          const claimed = yield* claimOnce(max)
          if (claimed.leases.length > 0) {
            return claimed.leases.map(
              ({ id, body, attempt, token }): RawLease => ({ id, body, attempt, token })
            )
          }
          const remaining = deadline - (yield* Clock.currentTimeMillis)
          if (remaining <= 0) return []
          yield* waitFor(gen, claimed.waitMillis < 0 ? remaining : Math.min(remaining, claimed.waitMillis))
        }
      })

    const withLease = (script: Scripts.Script, id: string, args: ReadonlyArray<string | number>) =>
      Effect.flatMap(evalScript(script, args), (held) => (held === 1 ? Effect.void : Effect.fail(lost(id))))

    const offer = (tasks: ReadonlyArray<RawTask>) =>
      Effect.map(
        evalScript(
          Scripts.offer,
          tasks.flatMap((t) => [t.id, t.priority, t.body])
        ),
        (reply) => (reply as ReadonlyArray<number>).map((accepted) => accepted === 1)
      )

    const nack = (id: string, token: string, options: RawNack) =>
      withLease(Scripts.nack, id, [
        id,
        token,
        options.requeue ? "requeue" : "dead",
        Math.max(0, Math.ceil(options.delayMillis)),
        options.error ?? "dead-lettered"
      ])

    const deadLetters = (limit: number) =>
      Effect.map(evalScript(Scripts.deadLetters, [Math.floor(limit)]), (reply) => {
        const r = reply as ReadonlyArray<string | number>
        const out: Array<RawDeadLetter> = []
        for (let i = 0; i + 4 < r.length; i += 5) {
          out.push({
            id: String(r[i]),
            body: String(r[i + 1]),
            attempts: Number(r[i + 2]),
            error: String(r[i + 3]),
            deadAt: Number(r[i + 4])
          })
        }
        return out
      })

    return {
      kind: "redis",
      offer,
      claim,
      ack: (id, token) => withLease(Scripts.ack, id, [id, token]),
      nack,
      extend: (id, token, millis) =>
        withLease(Scripts.extend, id, [id, token, Math.max(0, Math.ceil(millis))]),
      stats: Effect.map(evalScript(Scripts.stats, []), (reply) => {
        const [pending, inFlight, delayed, dead] = reply as ReadonlyArray<number>
        return { pending: pending!, inFlight: inFlight!, delayed: delayed!, dead: dead! }
      }),
      clear: Effect.map(evalScript(Scripts.clear, []), Number),
      deadLetters,
      retryDead: (id) => Effect.map(evalScript(Scripts.retryDead, [id]), (reply) => reply === 1)
    } satisfies QueueBackend
  })

/** A `QueueManager` on a Redis queue, its connections held by the scope. */
export const make = (
  options: RedisQueueOptions = {}
): Effect.Effect<QM.QueueManagerService, QueueError, Scope.Scope> =>
  Effect.map(makeBackend(options), (backend) =>
    QM.make({
      queueName: options.queueName ?? QM.defaults.queueName,
      backend,
      leaseDuration: options.leaseDuration ?? QM.defaults.leaseDuration
    })
  )

/** Provides `QueueManager` on a Redis queue; the connections live as long as the layer. */
export const layer = (options: RedisQueueOptions = {}): Layer.Layer<QM.QueueManager, QueueError> =>
  Layer.scoped(QM.QueueManager, make(options))

/** As {@link layer}, configured by `QUEUE_NAME`, `REDIS_URL` (redacted) and `LEASE_DURATION`. */
export const layerConfig: Layer.Layer<QM.QueueManager, QueueError | ConfigError.ConfigError> =
  Layer.unwrapEffect(
    Effect.map(
      Config.all({
        queueName: Config.string("QUEUE_NAME").pipe(Config.withDefault(QM.defaults.queueName)),
        redisUrl: Config.redacted("REDIS_URL").pipe(Config.withDefault(Redacted.make(QM.defaults.redisUrl))),
        leaseDuration: Config.duration("LEASE_DURATION").pipe(Config.withDefault(QM.defaults.leaseDuration))
      }),
      layer
    )
  )

/**
 * One ioredis connection held by a scope, shared by the Redis queue and the Redis task store:
 * bounded connect, reconnection with backoff, calls that fail with `QueueError` (at once when the
 * connection drops), Lua scripts called by SHA, and calls made in the same event-loop turn sent
 * as one script call, or two from {@link splitAt} on ({@link batched}).
 *
 * @since 0.1.0
 */
import { createHash } from "node:crypto"
import { Duration, Effect, Redacted, type Scope } from "effect"
import { Redis, type RedisOptions } from "ioredis"
import { QueueError } from "../../src/Errors.js"
import * as QM from "../../src/QueueManager.js"

/**
 * From this many calls gathered in one turn, `batched` sends two flushes instead of one: Redis
 * runs the second while this process handles the first's reply. With one flush, callers that
 * call again as soon as they are answered (producers, pullers) and Redis take turns, each idle
 * while the other works.
 */
export const splitAt = 8

/** A Lua script with its SHA1, as `EVALSHA` wants it. */
export interface Script {
  readonly name: string
  readonly lua: string
  readonly sha: string
}

/** A script from its Lua source. */
export const script = (name: string, lua: string): Script => ({
  name,
  lua,
  sha: createHash("sha1").update(lua).digest("hex")
})

/** What opening a connection takes. */
export interface ConnectOptions {
  readonly url: Redacted.Redacted
  /** `CLIENT SETNAME`, so an operator can tell the connections apart. */
  readonly name: string
  readonly connectMillis: number
  readonly commandMillis: number
  /** `quit` lets the replies in flight arrive first; `disconnect` drops the connection (a blocked one). */
  readonly close: "quit" | "disconnect"
  /** Says what failed in error messages: `Redis <what> failed` (default) or e.g. `Redis task store <what> failed`. */
  readonly label?: string | undefined
}

/** A connection with its guarded command runner. */
export interface Connection {
  readonly client: Redis
  /** Where it points, without credentials, for messages. */
  readonly where: string
  /** Runs one call; fails with `QueueError` on an error, on a timeout, or as soon as the connection drops. */
  readonly run: <A>(what: string, call: (client: Redis) => Promise<A>) => Effect.Effect<A, QueueError>
  /** Runs a loaded script by SHA (by source after a `SCRIPT FLUSH`). */
  readonly evalScript: (
    script: Script,
    keys: ReadonlyArray<string>,
    args: ReadonlyArray<string | number>
  ) => Effect.Effect<unknown, QueueError>
  /**
   * Calls made in the same event-loop turn, sent as one script call: each caller passes one input
   * and gets its own output; the inputs gathered until the turn's microtasks have run go out
   * together (at most `max` at a time; in two halves from {@link splitAt} inputs), and the reply
   * answers one output per input, in order. A failed call fails every caller of it with
   * `QueueError`. A caller interrupted while it waits does not withdraw its input.
   */
  readonly batched: <I, O>(options: Batched<I, O>) => (input: I) => Effect.Effect<O, QueueError>
}

/** What {@link Connection.batched} sends and how it reads the reply. */
export interface Batched<I, O> {
  readonly script: Script
  readonly max: number
  /** The keys and the arguments of one call for these inputs. */
  readonly keys: (inputs: ReadonlyArray<I>) => ReadonlyArray<string>
  readonly args: (inputs: ReadonlyArray<I>) => ReadonlyArray<string | number>
  /** One output per input, in order, from the script's reply. */
  readonly outputs: (reply: unknown, inputs: ReadonlyArray<I>) => ReadonlyArray<O>
}

/** The message of an unknown failure. */
export const describe = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** Where a URL points, without its credentials, for error messages. */
export const hostOf = (url: string): string => {
  try {
    return new URL(url).host || "redis"
  } catch {
    return "redis (unparsable URL)"
  }
}

/** The URL option as a `Redacted`, the default when absent. */
export const resolveUrl = (url: string | Redacted.Redacted | undefined): Redacted.Redacted =>
  url === undefined
    ? Redacted.make(QM.defaults.redisUrl)
    : Redacted.isRedacted(url)
      ? url
      : Redacted.make(url)

/** Fails unless the queue name can be a Redis hash tag (non-empty, without `{` or `}`). */
export const checkQueueName = (queueName: string): Effect.Effect<void, QueueError> =>
  queueName.length === 0 || /[{}]/.test(queueName)
    ? Effect.fail(
        new QueueError({
          message: `invalid queue name ${JSON.stringify(queueName)}: it must be non-empty, without { or }`
        })
      )
    : Effect.void

/** The prefix of every Redis key of a queue: the hash tag `{<queueName>}` and a colon. */
export const keyPrefix = (queueName: string): string => `{${queueName}}:`

/** The `CLIENT SETNAME` prefix of a queue's connections (`etq:<queue>:cmd`, `etq:<queue>:block`, `etq:<queue>:store`). */
export const connectionNamePrefix = (queueName: string): string =>
  `etq:${queueName.replace(/[^\x21-\x7e]/g, "_")}:`

/** Reconnects forever, backing off from 50 ms to 2 s with jitter. */
const retryStrategy = (times: number) =>
  Math.min(50 * 2 ** Math.min(times, 6), 2_000) * (0.75 + Math.random() / 2)

const isNoScript = (error: unknown) => error instanceof Error && error.message.startsWith("NOSCRIPT")

/** A call as the connection's watch list sees it: something to fail. */
interface Failable {
  fail(error: unknown): void
}

/**
 * One call waiting on a connection, answered exactly once: by its reply, or by a failure (the
 * connection dropped, the command timed out). Its place in `waiting` is its "not answered yet".
 * A class rather than closures: this is on the path of every command, and a closure bound to a
 * name costs a `__name` call each time it is made under tsx's `keepNames`.
 */
class Call<A> implements Failable {
  constructor(
    private readonly waiting: Map<Failable, number>,
    private readonly ok: (value: A) => void,
    private readonly ko: (error: unknown) => void
  ) {}
  /** Answers with the reply, unless it was answered already. */
  reply(value: A): void {
    if (this.waiting.delete(this)) this.ok(value)
  }
  /** Answers with the failure, unless it was answered already. */
  fail(error: unknown): void {
    if (this.waiting.delete(this)) this.ko(error)
  }
}

/** Opens a connection in the scope, checked within the connect timeout; closed when the scope closes. */
export const connect = (options: ConnectOptions): Effect.Effect<Connection, QueueError, Scope.Scope> =>
  Effect.gen(function* () {
    const where = hostOf(Redacted.value(options.url))
    const label = options.label ?? "Redis"
    let lastError: unknown
    // The calls waiting on this connection, each with the sweep it was made in. A dropped
    // connection fails them at once (their outcome is unknown), instead of leaving them to
    // ioredis, which would drop them; a sweep every `sweepMillis` fails those older than the
    // command timeout. One timer for the connection: ioredis's own `commandTimeout` sets and
    // clears a timer per command.
    const waiting = new Map<Failable, number>()
    const sweepMillis = Math.min(500, Math.max(10, Math.ceil(options.commandMillis / 10)))
    const overdueAfter = Math.ceil(options.commandMillis / sweepMillis)
    let sweeps = 0
    const sweep = () => {
      sweeps++
      // Oldest first: the first call still in time ends the sweep.
      for (const [call, since] of waiting) {
        // Made during sweep `since`: at least (sweeps - since - 1) sweeps ago.
        if (sweeps - since - 1 < overdueAfter) break
        call.fail(new Error(`no answer within ${options.commandMillis} ms`))
      }
    }
    const redisOptions: RedisOptions = {
      lazyConnect: true,
      connectionName: options.name,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 1,
      connectTimeout: options.connectMillis,
      retryStrategy
    }
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = new Redis(Redacted.value(options.url), redisOptions)
        // Without a listener, an ioredis error event would crash the process; the calls see it anyway.
        client.on("error", (error: unknown) => {
          lastError = error
        })
        client.on("close", () => {
          for (const call of waiting.keys())
            call.fail(new Error("the connection to Redis closed before it replied"))
        })
        const sweeper = setInterval(sweep, sweepMillis)
        sweeper.unref()
        return { client, sweeper }
      }),
      ({ client, sweeper }) =>
        (options.close === "quit" && client.status === "ready"
          ? Effect.tryPromise(() => client.quit()).pipe(
              // Finalizers are uninterruptible: without this the timeout would wait for the reply.
              Effect.interruptible,
              Effect.timeout(Duration.seconds(1)),
              Effect.ignore
            )
          : Effect.void
        ).pipe(
          Effect.ensuring(
            Effect.sync(() => {
              clearInterval(sweeper)
              client.disconnect()
            })
          )
        )
    ).pipe(Effect.map(({ client }) => client))
    yield* Effect.tryPromise({
      try: () => client.connect(),
      catch: (cause) =>
        new QueueError({
          message: `cannot connect to Redis at ${where}: ${describe(lastError ?? cause)}`,
          cause: lastError ?? cause
        })
    }).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(options.connectMillis),
        onTimeout: () =>
          new QueueError({
            message: `cannot connect to Redis at ${where}: no answer within ${options.connectMillis} ms`,
            ...(lastError === undefined ? {} : { cause: lastError })
          })
      })
    )
    const failure = (what: string, cause: unknown) =>
      new QueueError({ message: `${label} ${what} failed on ${where}: ${describe(cause)}`, cause })
    /**
     * Makes one call: `ok` gets its reply or `ko` its failure, exactly one of them, `ko` at once
     * when the connection drops and after the command timeout. Plain callbacks, not promises or
     * effects: this is on the path of every command.
     */
    const send = <A>(call: () => Promise<A>, ok: (value: A) => void, ko: (error: unknown) => void): void => {
      const waiter = new Call(waiting, ok, ko)
      waiting.set(waiter, sweeps)
      let reply: Promise<A>
      try {
        reply = call()
      } catch (error) {
        waiter.fail(error)
        return
      }
      reply.then(
        (value) => waiter.reply(value),
        (error: unknown) => waiter.fail(error)
      )
    }
    /** Runs a script by SHA, by source after a `SCRIPT FLUSH` (which caches it again). */
    const sendScript = (
      s: Script,
      keys: ReadonlyArray<string>,
      args: ReadonlyArray<string | number>,
      ok: (reply: unknown) => void,
      ko: (error: unknown) => void
    ) =>
      send(
        () => client.evalsha(s.sha, keys.length, ...keys, ...args),
        ok,
        (error) =>
          isNoScript(error)
            ? send(() => client.eval(s.lua, keys.length, ...keys, ...args), ok, ko)
            : ko(error)
      )
    const run = <A>(what: string, call: (client: Redis) => Promise<A>) =>
      Effect.async<A, QueueError>((resume) =>
        send(
          () => call(client),
          (value) => resume(Effect.succeed(value)),
          (error) => resume(Effect.fail(failure(what, error)))
        )
      )
    const evalScript = (s: Script, keys: ReadonlyArray<string>, args: ReadonlyArray<string | number>) =>
      Effect.async<unknown, QueueError>((resume) =>
        sendScript(
          s,
          keys,
          args,
          (reply) => resume(Effect.succeed(reply)),
          (error) => resume(Effect.fail(failure(s.name, error)))
        )
      )
    const batched = <I, O>(options: Batched<I, O>) => {
      interface Waiter {
        readonly input: I
        readonly resume: (effect: Effect.Effect<O, QueueError>) => void
      }
      let pending: Array<Waiter> = []
      const failAll = (waiters: ReadonlyArray<Waiter>, cause: unknown) => {
        const error = Effect.fail(failure(options.script.name, cause))
        for (const waiter of waiters) waiter.resume(error)
      }
      const flush = (waiters: ReadonlyArray<Waiter>) => {
        const inputs = waiters.map((waiter) => waiter.input)
        let keys: ReadonlyArray<string>
        let args: ReadonlyArray<string | number>
        try {
          keys = options.keys(inputs)
          args = options.args(inputs)
        } catch (error) {
          failAll(waiters, error)
          return
        }
        sendScript(
          options.script,
          keys,
          args,
          (reply) => {
            let outputs: ReadonlyArray<O>
            try {
              outputs = options.outputs(reply, inputs)
            } catch (error) {
              failAll(waiters, error)
              return
            }
            for (let i = 0; i < waiters.length; i++) waiters[i]!.resume(Effect.succeed(outputs[i] as O))
          },
          (error) => failAll(waiters, error)
        )
      }
      const flushAll = () => {
        const all = pending
        pending = []
        const size = Math.min(options.max, all.length >= splitAt ? Math.ceil(all.length / 2) : all.length)
        for (let i = 0; i < all.length; i += size) flush(all.slice(i, i + size))
      }
      return (input: I): Effect.Effect<O, QueueError> =>
        Effect.async<O, QueueError>((resume) => {
          if (pending.push({ input, resume }) === 1) queueMicrotask(flushAll)
        })
    }
    return { client, where, run, batched, evalScript }
  })

/** Loads scripts, so later calls can go by SHA. */
export const loadScripts = (connection: Connection, scripts: ReadonlyArray<Script>) =>
  connection.run("SCRIPT LOAD", (c) =>
    Promise.all(scripts.map((s) => c.script("LOAD", s.lua) as Promise<string>))
  )

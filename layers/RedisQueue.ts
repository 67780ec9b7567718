/**
 * The Redis backend (ioredis): the memory backend's semantics, shared by every process that
 * names the same queue on the same Redis.
 *
 * Layout: every key of queue `q` starts with the hash tag `{q}`, so the scripts also run on
 * Redis Cluster.
 *
 * - `{q}:pending` ZSET id -> `(10 - priority) * 2^40 + sequence` (lower is sooner; FIFO inside a
 *   priority); `{q}:seq` the sequence counter.
 * - `{q}:inflight` ZSET id -> lease deadline (server ms); `{q}:tokens` the lease token counter.
 * - `{q}:delayed` ZSET id -> ready time (server ms).
 * - `{q}:due` a time (server ms) by which the scripts' upkeep must next look for expired leases
 *   and due delays (never later than the earliest of them); until then the upkeep is one `GET`.
 * - `{q}:dead` ZSET id -> dead time (server µs, oldest first); `{q}:error` HASH id -> last error.
 * - `{q}:task` HASH, three fields per task: `b:<id>` the body and `s:<id>` its state
 *   (`attempts * 16 + priority`), kept until it is acked; `l:<id>` the lease token while in flight.
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
  Context,
  Deferred,
  Duration,
  Effect,
  Either,
  Exit,
  FiberId,
  Layer,
  Redacted,
  type Scope
} from "effect"
import { LeaseLost, type QueueError } from "../src/Errors.js"
import type {
  QueueBackend,
  RawDeadLetter,
  RawLease,
  RawNack,
  RawRecording,
  RawStartedLease,
  RawTask
} from "../src/QueueBackend.js"
import * as QM from "../src/QueueManager.js"
import type { SharedRecords } from "../src/TaskStore.js"
import * as Connection from "./redis/Connection.js"
import * as Records from "./redis/records.js"
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

/** The prefix of every key of a queue: the hash tag `{<queueName>}` and a colon. */
export const keyPrefix = Connection.keyPrefix

/** The Redis keys of a queue, all under the hash tag `{<queueName>}`. */
export const keys = (queueName: string): Record<Scripts.KeyName, string> =>
  Object.fromEntries(Scripts.keyNames.map((name) => [name, `${keyPrefix(queueName)}${name}`])) as Record<
    Scripts.KeyName,
    string
  >

/** The pending score of a task: lower is pulled sooner. */
export const pendingScore = (priority: number, sequence: number): number =>
  (10 - priority) * Scripts.priorityBand + sequence

/** The `CLIENT SETNAME` prefix of a queue's connections (`etq:<queue>:cmd`, `etq:<queue>:block`). */
export const connectionNamePrefix = Connection.connectionNamePrefix

/** How long one `BZPOPMIN` blocks before the waiting fiber looks again; short, so none outlives its puller for long. */
const blockSeconds = 1

/** The most calls of one kind gathered into one script call. */
const maxBatch = 256

const lost = (id: string) =>
  new LeaseLost({
    taskId: id,
    message: `the lease on task ${id} is no longer held (expired, or the task moved on)`
  })

/**
 * A claim as the script returns it: the leases and, when it took fewer than it asked for, how
 * long until something is due (-1: nothing); -2 when it took all it asked for.
 */
interface Claimed {
  readonly leases: ReadonlyArray<ClaimedLease>
  readonly waitMillis: number
}

/** A lease as claimed and, when the claim recorded it, the start script's reply. */
interface ClaimedLease extends RawLease {
  readonly start: unknown
}

/**
 * A puller waiting for a marker (its generation ends) or for its timer, whichever comes first; it
 * is in `waiters` until then. A class rather than closures: waiting is on the path of every task
 * that arrives to an idle worker.
 */
class Sleeper {
  private readonly timer: ReturnType<typeof setTimeout>
  constructor(
    private readonly waiters: Set<Sleeper>,
    private readonly resume: (effect: Effect.Effect<void>) => void,
    millis: number
  ) {
    this.timer = setTimeout(() => this.wake(), Math.max(0, millis))
    waiters.add(this)
  }
  /** Resumes the puller, once. */
  wake(): void {
    clearTimeout(this.timer)
    if (this.waiters.delete(this)) this.resume(Effect.void)
  }
  /** The puller was interrupted: stop waiting without resuming it. */
  cancel(): void {
    clearTimeout(this.timer)
    this.waiters.delete(this)
  }
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
    yield* Connection.checkQueueName(queueName)
    const url = Connection.resolveUrl(options.redisUrl)
    const leaseMillis = Duration.toMillis(options.leaseDuration ?? QM.defaults.leaseDuration)
    const connectMillis = Duration.toMillis(options.connectTimeout ?? Duration.seconds(5))
    const commandMillis = Duration.toMillis(options.commandTimeout ?? Duration.seconds(5))
    const names = connectionNamePrefix(queueName)
    const key = keys(queueName)
    /** The one key every script gets: the queue's prefix. */
    const keyList = [keyPrefix(queueName)]

    const [commands, blocking] = yield* Effect.all(
      [
        Connection.connect({
          url,
          name: `${names}cmd`,
          connectMillis,
          commandMillis,
          close: "quit"
        }),
        Connection.connect({
          url,
          name: `${names}block`,
          connectMillis,
          commandMillis: blockSeconds * 1000 + commandMillis,
          close: "disconnect"
        })
      ],
      { concurrency: 2 }
    )

    // Load once; calls go by SHA and fall back to EVAL (which caches again) after a SCRIPT FLUSH.
    yield* Connection.loadScripts(commands, Scripts.all)

    const evalScript = (script: Connection.Script, args: ReadonlyArray<string | number>) =>
      commands.evalScript(script, keyList, args)

    // Acks and single pushes made in the same event-loop turn (by concurrent workers or
    // producers) go to Redis as one script call (two from `Connection.splitAt` callers on).
    const ackBatch = commands.batched({
      script: Scripts.ack,
      max: maxBatch,
      keys: () => keyList,
      args: (leases: ReadonlyArray<readonly [string, string]>) => leases.flat(),
      outputs: (reply) => reply as ReadonlyArray<number>
    })
    const offerBatch = commands.batched({
      script: Scripts.offer,
      max: maxBatch,
      keys: () => keyList,
      args: (calls: ReadonlyArray<ReadonlyArray<RawTask>>) =>
        calls.flatMap((tasks) => tasks.flatMap((t) => [t.id, t.priority, t.body])),
      outputs: (reply, calls) => {
        const accepted = reply as ReadonlyArray<number>
        let at = 0
        return calls.map((tasks) => {
          const mine = accepted.slice(at, at + tasks.length).map((a) => a === 1)
          at += tasks.length
          return mine
        })
      }
    })

    // --- waking blocked pullers -------------------------------------------------------------
    // A generation ends (its waiters wake) whenever a marker arrives. A puller takes the current
    // generation before its claim, so a marker that lands during the claim still wakes it; the
    // blocking fiber only waits for Redis while the current generation has waiters. A waiter is
    // a callback and a timer, not a race of two fibers: waiting is on the path of every task
    // that arrives to an idle worker.
    interface Generation {
      readonly waiters: Set<Sleeper>
    }
    const generation = (): Generation => ({ waiters: new Set() })
    let current = generation()
    let someoneWaits = Deferred.unsafeMake<void>(FiberId.none)
    const wakeAll = () => {
      const ended = current
      current = generation()
      for (const sleeper of ended.waiters) sleeper.wake()
    }
    /** Waits until `gen` ends or `millis` pass (real time: leases and delays run on Redis's clock anyway). */
    const waitFor = (gen: Generation, millis: number) =>
      gen !== current
        ? Effect.void // woken while it claimed: claim again at once
        : Effect.async<void>((resume) => {
            if (gen.waiters.size === 0) {
              Deferred.unsafeDone(someoneWaits, Exit.void)
              someoneWaits = Deferred.unsafeMake<void>(FiberId.none)
            }
            const sleeper = new Sleeper(gen.waiters, resume, millis)
            return Effect.sync(() => sleeper.cancel())
          })

    let failures = 0
    const blockOnce = Effect.gen(function* () {
      if (current.waiters.size === 0) yield* Deferred.await(someoneWaits)
      const popped = yield* blocking.run("BZPOPMIN", (c) => c.bzpopmin(key.marker, blockSeconds))
      failures = 0
      if (popped === null) return
      if (current.waiters.size > 0) return wakeAll()
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
    /** A claim script's reply: `stride` 5 when it recorded the starts (each lease then carries its `start` reply). */
    const parseClaim = (reply: unknown, stride: 4 | 5): Claimed => {
      const r = reply as ReadonlyArray<unknown>
      const leases: Array<ClaimedLease> = []
      for (let i = 1; i + stride - 1 < r.length; i += stride) {
        leases.push({
          id: String(r[i]),
          body: String(r[i + 1]),
          attempt: Number(r[i + 2]),
          token: String(r[i + 3]),
          start: stride === 5 ? r[i + 4] : undefined
        })
      }
      return { leases, waitMillis: Number(r[0]) }
    }

    /** Deals the leases of one merged claim out to its callers in order, the most urgent to the first. */
    const deal = ({ leases, waitMillis }: Claimed, maxes: ReadonlyArray<number>) => {
      let at = 0
      return maxes.map((max): Claimed => {
        const mine = leases.slice(at, at + max)
        at += max
        return { leases: mine, waitMillis }
      })
    }

    const recordPrefix = Records.recordPrefix(queueName)

    /** Gives back the leases of an interrupted claim; `recorded`: the claim recorded their starts, stamped `now`. */
    const release = (leases: Claimed["leases"], recorded: boolean, now: number) =>
      evalScript(Scripts.release, [
        recorded ? recordPrefix : "",
        now,
        ...leases.flatMap((l) => [l.id, l.token])
      ]).pipe(
        Effect.catchAll((error) =>
          Effect.logWarning("could not give back interrupted claims; their leases will expire").pipe(
            Effect.annotateLogs({ error: error.message, queue: queueName })
          )
        )
      )

    // The claim is atomic for its caller: if the caller is interrupted while Redis answers, the
    // tasks go straight back where they were, their attempt not counted.
    // Claims made in the same event-loop turn (concurrent pullers) are one script call (two from
    // `Connection.splitAt` on): its leases are dealt out in order, the most urgent to the first
    // caller.
    const claimBatch = commands.batched({
      script: Scripts.claim,
      max: maxBatch,
      keys: () => keyList,
      args: (maxes: ReadonlyArray<number>) => [maxes.reduce((sum, max) => sum + max, 0), leaseMillis],
      outputs: (reply, maxes) => deal(parseClaim(reply, 4), maxes)
    })
    const claimOnce = (claimed: Effect.Effect<Claimed, QueueError>, recorded: boolean, clock: Clock.Clock) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(claimed, (claimed) => {
          if (claimed.leases.length === 0) return Effect.succeed(claimed)
          return restore(Effect.succeed(claimed)).pipe(
            Effect.onInterrupt(() => release(claimed.leases, recorded, clock.unsafeCurrentTimeMillis()))
          )
        })
      )

    /**
     * Left by the last claim that took fewer tasks than it asked for: nothing was pending then.
     * Until its generation ends (a marker arrived) or `until` passes (a lease deadline or a delay
     * may be due), a claim that may wait waits for a marker before it asks Redis: the claim an idle
     * worker makes after each task would find nothing.
     */
    let drained: { readonly gen: Generation; readonly until: number } | undefined

    /**
     * Claims with `once` until it gets leases or `timeout` passes, waiting for a marker in between
     * (and first, while the queue is known to be drained); `recorded`: `once` records the starts
     * (an interrupted claim then resets the records too).
     */
    const claimWith = (
      once: (now: number) => Effect.Effect<Claimed, QueueError>,
      timeout: Duration.Duration,
      recorded: boolean
    ) =>
      Effect.withFiberRuntime<ReadonlyArray<ClaimedLease>, QueueError>((fiber) => {
        const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
        return attempt(
          once,
          recorded,
          clock,
          clock.unsafeCurrentTimeMillis() + Duration.toMillis(timeout),
          true
        )
      })

    /**
     * One attempt of {@link claimWith}, by `deadline` (`first`: no wait before it yet). Defined
     * once, not as a closure per claim: a closure bound to a name costs a `__name` call each
     * time it is made under tsx's `keepNames`.
     */
    const attempt = (
      once: (now: number) => Effect.Effect<Claimed, QueueError>,
      recorded: boolean,
      clock: Clock.Clock,
      deadline: number,
      first: boolean
    ): Effect.Effect<ReadonlyArray<ClaimedLease>, QueueError> => {
      const gen = current
      const now = clock.unsafeCurrentTimeMillis()
      if (first && drained !== undefined && drained.gen === gen && now < drained.until && now < deadline) {
        return Effect.flatMap(waitFor(gen, Math.min(deadline, drained.until) - now), () =>
          attempt(once, recorded, clock, deadline, false)
        )
      }
      return Effect.flatMap(claimOnce(once(now), recorded, clock), (claimed) => {
        drained =
          claimed.waitMillis === -2
            ? undefined
            : { gen, until: claimed.waitMillis < 0 ? Number.POSITIVE_INFINITY : now + claimed.waitMillis }
        if (claimed.leases.length > 0) return Effect.succeed(claimed.leases)
        const remaining = deadline - clock.unsafeCurrentTimeMillis()
        if (remaining <= 0) return Effect.succeed([])
        return Effect.flatMap(
          waitFor(gen, claimed.waitMillis < 0 ? remaining : Math.min(remaining, claimed.waitMillis)),
          () => attempt(once, recorded, clock, deadline, false)
        )
      })
    }

    const claim = (max: number, timeout: Duration.Duration) =>
      claimWith(() => claimBatch(max), timeout, false)

    /**
     * A claim that records its starts in the task records, stamped `now`. It goes to Redis at
     * once, not gathered with the turn's other claims: a worker's fetcher is its only caller, and
     * sent before the settle of the batch that just ran (which the settler sends in the same turn),
     * its reply comes back while Redis still runs that settle, so the next batch starts sooner.
     */
    const recordingClaim = (max: number) => (now: number) =>
      Effect.map(evalScript(Scripts.claim, [max, leaseMillis, recordPrefix, now]), (reply) =>
        parseClaim(reply, 5)
      )

    /**
     * Claims and settlements that write the task records too, when `records` are this queue's own
     * (a Redis task store on the same server, database and queue name).
     */
    const recording = (records: SharedRecords): RawRecording | undefined =>
      records.location !== Records.location(commands, queueName)
        ? undefined
        : {
            claim: (max, timeout) =>
              Effect.flatMap(claimWith(recordingClaim(max), timeout, true), (leases) => {
                // A plain loop: a claim of 80 would otherwise be 80 effects run one after another.
                const started: Array<RawStartedLease> = []
                for (const lease of leases) {
                  const start = Records.startResult(lease.id, lease.start)
                  if (Either.isLeft(start)) return Effect.fail(start.left)
                  started.push({
                    id: lease.id,
                    body: lease.body,
                    attempt: lease.attempt,
                    token: lease.token,
                    start: start.right
                  })
                }
                return Effect.succeed(started)
              }),
            settle: (endings, now) =>
              Effect.map(
                evalScript(Scripts.settle, [
                  recordPrefix,
                  now,
                  records.retentionMillis,
                  ...endings.flatMap((ending) =>
                    ending.status === "COMPLETED"
                      ? [ending.id, ending.token, ending.status, ending.result]
                      : [ending.id, ending.token, ending.status, ending.error]
                  )
                ]),
                (reply) =>
                  (reply as ReadonlyArray<number>).map((r) =>
                    r === 1 ? "settled" : r === 0 ? "discarded" : "expired"
                  )
              )
          }

    const withLease = (script: Connection.Script, id: string, args: ReadonlyArray<string | number>) =>
      Effect.flatMap(evalScript(script, args), (held) => (held === 1 ? Effect.void : Effect.fail(lost(id))))

    const offer = (tasks: ReadonlyArray<RawTask>) => offerBatch(tasks)

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
      recording,
      ack: (id, token) =>
        Effect.flatMap(ackBatch([id, token]), (acked) => (acked === 1 ? Effect.void : Effect.fail(lost(id)))),
      ackMany: (leases) =>
        Effect.map(
          evalScript(
            Scripts.ack,
            leases.flatMap(({ id, token }) => [id, token])
          ),
          (reply) => (reply as ReadonlyArray<number>).map((held) => held === 1)
        ),
      nack,
      release: (id, token) =>
        Effect.flatMap(evalScript(Scripts.release, ["", 0, id, token]), (undone) =>
          undone === 1 ? Effect.void : Effect.fail(lost(id))
        ),
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

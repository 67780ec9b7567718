/**
 * The RabbitMQ backend (amqplib): one durable priority queue per task queue, publisher confirms,
 * manual acks, delayed requeue through TTL queues, dead letters in a queue of their own.
 *
 * Topology (see `layers/rabbitmq/Topology.ts`): `<q>` (durable, `x-max-priority: 10`),
 * `<q>.dead`, and 24 delay bucket queues `<q>.delay.<ms>` that dead-letter back into `<q>`, all
 * declared idempotently on every (re)connection, and again when a publish finds one deleted
 * (publishes are mandatory, so the broker returns them instead of dropping them).
 *
 * Claims: a claim that may wait takes from a standing consumer (the feed) on a channel of its
 * own, started by the first such claim with a prefetch that grows, in powers of two, to what the
 * process's claims hold and ask for; its deliveries wait in the process, by priority, until a
 * claim takes them. The feed stops after a second with no claim, giving back what no claim took
 * (as the same attempt), and at shutdown. A claim that may not wait and finds nothing delivered
 * is a `basic.get` (manual ack) on one of 4 claim channels. A lease token names the connection,
 * the channel and the delivery tag: once that channel is gone the token is refused with
 * `LeaseLost`, and nothing is ever acked on another channel. Attempts travel in the
 * `x-attempt` header; a message the broker redelivers (its holder died) is published again with
 * the next attempt number and the original acked once the copy is confirmed.
 *
 * How it differs from the memory and Redis backends (documented in the README):
 *
 * - **No idempotent push.** RabbitMQ cannot look a message up by id, so `offer` answers `true`
 *   for every task and a task pushed twice is delivered twice; the task store rejects duplicate
 *   submissions. Likewise pushing the id of a dead letter leaves that dead letter in place.
 * - **No lease expiry.** A pulled task stays with its holder until it is acked or nacked, or its
 *   holder's channel closes (process death, lost connection): then the broker hands it out again,
 *   counted as the next attempt. `extend` succeeds while the holder's channel lives and does
 *   nothing else.
 * - **Order.** The broker hands the feed the most urgent ready tasks of the whole queue (priority,
 *   then push order), across processes, and a claim takes the most urgent the feed holds. The feed
 *   holds at most its prefetch, less what the process's claims hold: a more urgent task pushed
 *   later can start after those (as with a worker's prefetch). A requeued or delayed task, or one
 *   whose holder died, re-enters at the back of its priority. A claim interrupted while it holds
 *   tasks puts them back in the feed (or, from `basic.get`, gives them back to the broker, which
 *   marks them redelivered: they count one attempt more). If the connection dies, the broker
 *   hands out again what the feed held, as the next attempt.
 * - **Delays** are exact unless an older, longer delay of the same bucket is ahead of them (then
 *   late by less than half the bucket, at most 2^30 ms); at most 2^31 ms (about 24.8 days).
 * - **Counts.** `inFlight` counts the leases held by this process only; `pending` counts ready
 *   messages in `<q>`. `clear` removes ready and delayed tasks, not those another process holds.
 * - **Dead letters** are read by taking them with manual acks and giving them back (closing the
 *   channel), so concurrent readers in other processes may briefly not see each other's; and
 *   `retryDead` scans the dead-letter queue.
 *
 * @since 0.1.0
 */
import type * as Amqp from "amqplib"
import { connect as amqpConnect } from "amqplib"
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
  Schedule,
  type Scope
} from "effect"
import { LeaseLost, QueueError } from "../src/Errors.js"
import type {
  QueueBackend,
  QueueStats,
  RawDeadLetter,
  RawLease,
  RawNack,
  RawTask
} from "../src/QueueBackend.js"
import * as QM from "../src/QueueManager.js"
import { ReadyBuffer } from "./rabbitmq/ReadyBuffer.js"
import * as Topology from "./rabbitmq/Topology.js"

/** Options of the RabbitMQ backend. */
export interface RabbitMqQueueOptions {
  /** Default `"tasks"`: the name of the main queue; the others are `<queueName>.dead` and `<queueName>.delay.<ms>`. */
  readonly queueName?: string | undefined
  /** Default `amqp://guest:guest@127.0.0.1:5672`; may carry a password, hence `Redacted`. */
  readonly rabbitmqUrl?: string | Redacted.Redacted | undefined
  /** The default of `Delivery.extend`; RabbitMQ has no lease expiry, so it changes nothing else. */
  readonly leaseDuration?: Duration.DurationInput | undefined
  /** Bound on connecting (at start-up and on each reconnection attempt); default 5 seconds. */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Bound on waiting for a connection or for a publisher confirm; default 10 seconds. */
  readonly operationTimeout?: Duration.DurationInput | undefined
}

/** The `connection_name` client property of a queue's connection (shown by `rabbitmqctl list_connections`). */
export const connectionName = (queueName: string): string => `etq:${queueName}`

/** How many channels claims spread their `basic.get`s over; the feed's channel comes after them. */
const claimChannels = 4

/** The feed's prefetch never goes past this (AMQP allows up to 65,535). */
const maxFeedPrefetch = 4096

/** A feed with no claim for this long (checked every second) stops and gives back what it holds. */
const feedIdleMillis = 1_000

/** Reconnects forever, backing off from 100 ms to 5 s with jitter. */
const reconnectSchedule = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("5 seconds")),
  Schedule.jittered
)

const describe = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** Where a URL points, without its credentials, for error messages. */
const hostOf = (url: string) => {
  try {
    return new URL(url).host || "rabbitmq"
  } catch {
    return "rabbitmq (unparsable URL)"
  }
}

/** A 10-second heartbeat unless the URL asks for another, so a dead peer is noticed in about 20 seconds. */
const withHeartbeat = (url: string) => {
  try {
    const parsed = new URL(url)
    if (!parsed.searchParams.has("heartbeat")) parsed.searchParams.set("heartbeat", "10")
    return parsed.toString()
  } catch {
    return url
  }
}

/**
 * Makes amqplib hand the frames its channels queued in one event-loop turn to the socket as one
 * write: its multiplexer writes each frame on its own, and with `noDelay` (which request/reply
 * round trips need) every ack would be a system call and a packet of its own. Reaches into
 * amqplib's connection (`muxer`, `stream`); when their shape is not the expected one it changes
 * nothing.
 */
const coalesceWrites = (model: Amqp.ChannelModel) => {
  const connection: unknown = (model as { readonly connection?: unknown }).connection
  const { muxer, stream } = (connection ?? {}) as {
    readonly muxer?: { _readIncoming?: unknown }
    readonly stream?: { cork?: unknown; uncork?: unknown }
  }
  if (muxer === undefined || stream === undefined) return
  const flush = muxer._readIncoming
  const { cork, uncork } = stream
  if (typeof flush !== "function" || typeof cork !== "function" || typeof uncork !== "function") return
  muxer._readIncoming = function (this: unknown) {
    cork.call(stream)
    try {
      return flush.call(this)
    } finally {
      uncork.call(stream)
    }
  }
}

/** A non-negative integer header, 0 when absent or unreadable. */
const countHeader = (headers: Amqp.MessagePropertyHeaders | undefined, name: string): number => {
  const value = headers?.[name]
  const n = typeof value === "number" ? value : typeof value === "string" ? Number(value) : Number.NaN
  return Number.isSafeInteger(n) && n >= 0 ? n : 0
}

const stringHeader = (headers: Amqp.MessagePropertyHeaders | undefined, name: string): string | undefined => {
  const value = headers?.[name]
  return typeof value === "string" ? value : Buffer.isBuffer(value) ? value.toString("utf8") : undefined
}

/** A claim channel (`basic.get`s and the acks of what they took), or the feed's channel. */
interface Lane {
  readonly index: number
  readonly channel: Amqp.Channel
  /** Claims running on this lane, to spread the next one. */
  busy: number
}

/** The standing consumer claims take from, with what it delivered and no claim took yet. */
interface Feed {
  readonly lane: Lane
  /** The live consumer and its per-consumer prefetch; none before a claim waits, or after a stop. */
  consumer: { readonly tag: string; readonly prefetch: number } | undefined
  /** Delivered, not yet claimed: unacked at the broker, pending for this process. */
  readonly ready: ReadyBuffer<Held>
  /** Deliveries of this feed leased to claimers and not yet settled. */
  leased: number
  /** Delivery tags of the feed's channel not yet acked or nacked, in delivery order (ascending). */
  readonly outstanding: Set<number>
  /** Tags to ack at the end of this turn (see `flushAcks`). */
  due: Array<number>
  /** What the claims running on the feed still ask for (the sum of their `max`, less what they took). */
  wanted: number
  /** When a claim last started (epoch ms), for the idle stop. */
  lastClaim: number
  /** Serializes starting, growing and stopping the consumer. */
  readonly lock: Effect.Semaphore
}

/** One connection with its channels; dies as a whole when any of them closes. */
class Session {
  alive = true
  cause: unknown = undefined
  causeIsGeneric = false
  readonly closed = Deferred.unsafeMake<void>(FiberId.none)
  publisher: Amqp.ConfirmChannel | undefined = undefined
  lanes: Array<Lane> = []
  feed: Feed | undefined = undefined
  /** Mandatory publishes the broker returned (no queue), by routing key and message id, not yet confirmed. */
  readonly returned = new Map<string, number>()
  /** Wake-ups of the claims waiting on the feed, called on a delivery and when the session dies. */
  readonly waiters = new Set<() => void>()
  constructor(
    readonly id: number,
    readonly connection: Amqp.ChannelModel
  ) {}
}

/** Wakes the claims waiting on a session's feed. */
const wakeAll = (session: Session) => {
  for (const wake of session.waiters) wake()
  session.waiters.clear()
}

/** Wakes the claim that has waited longest on a session's feed: one per delivery, not a herd. */
const wakeOne = (session: Session) => {
  for (const wake of session.waiters) {
    session.waiters.delete(wake)
    return wake()
  }
}

/** A delivery this process holds: leased to a claimer (or being taken by a claim). */
interface Held {
  readonly id: string
  readonly token: string
  readonly session: Session
  readonly lane: Lane
  readonly message: Amqp.Message
  /** The attempt this delivery is. */
  readonly attempt: number
  readonly priority: number
}

/** A message to publish with a confirm: the task `id` goes into `messageId` (or `x-task-id`). */
interface Outgoing {
  readonly routingKey: string
  readonly id: string
  readonly content: Buffer
  readonly options: Amqp.Options.Publish
}

/** `messageId` is an AMQP short string (at most 255 bytes); longer task ids travel in a header. */
const maxMessageIdBytes = 255

/** A task id of at most this many UTF-16 units is at most 255 bytes of UTF-8 without measuring it. */
const surelyShortId = Math.floor(maxMessageIdBytes / 3)

/** The publish options of a message: persistent, mandatory, its own, and its task id. */
const publishOptions = (message: Outgoing): Amqp.Options.Publish => {
  const options: Amqp.Options.Publish = { persistent: true, mandatory: true, ...message.options }
  const { id } = message
  if (id.length <= surelyShortId || Buffer.byteLength(id, "utf8") <= maxMessageIdBytes) options.messageId = id
  else options.headers = { ...options.headers, [Topology.header.taskId]: id }
  return options
}

/** The task id a message carries (`""` when it has none). */
const taskIdOf = (message: Amqp.Message): string =>
  stringHeader(message.properties.headers, Topology.header.taskId) ??
  (typeof message.properties.messageId === "string" ? message.properties.messageId : "")

/** What amqplib's `ack` reads of a message: its delivery tag. */
const deliveryOf = (deliveryTag: number) => ({ fields: { deliveryTag } }) as Amqp.Message

const returnKey = (routingKey: string, id: string) => `${routingKey}\u0000${id}`

/** A confirm that did not come in time. */
class Overdue extends Error {
  constructor() {
    super("no confirm in time")
  }
}

/**
 * Deadlines of the promises waiting for the broker, failed by a sweep every second. One timer
 * for all: an `Effect.timeout` per publish would cost a fiber and a timer each.
 */
class Deadlines {
  private readonly waiting = new Set<{ readonly deadline: number; readonly fail: (error: Error) => void }>()
  /** Runs `f`, failing it with `Overdue` if it has not settled by `deadline` (epoch ms). */
  watch<A>(deadline: number, f: () => Promise<A>): Promise<A> {
    return new Promise<A>((resolve, reject) => {
      const entry = { deadline, fail: reject }
      this.waiting.add(entry)
      f().then(
        (value) => {
          this.waiting.delete(entry)
          resolve(value)
        },
        (error: unknown) => {
          this.waiting.delete(entry)
          reject(error)
        }
      )
    })
  }
  /** Fails what is overdue at `now`. */
  sweep(now: number) {
    for (const entry of this.waiting) {
      if (entry.deadline <= now) {
        this.waiting.delete(entry)
        entry.fail(new Overdue())
      }
    }
  }
}

/** The broker returned a mandatory message: no queue of that name. */
class Unroutable extends Error {
  constructor(readonly queue: string) {
    super(`no queue ${queue} to route it to`)
  }
}

const lost = (id: string) =>
  new LeaseLost({
    taskId: id,
    message: `the lease on task ${id} is no longer held (acked, nacked, or its channel to RabbitMQ closed)`
  })

/**
 * The raw operations of one queue on RabbitMQ. Connects within the connect timeout (failing with
 * `QueueError` otherwise), declares the topology, and keeps the connection in the scope:
 * reconnecting with backoff whenever it or one of its channels closes, closing channels before
 * the connection when the scope closes.
 */
export const makeBackend = (
  options: RabbitMqQueueOptions = {}
): Effect.Effect<QueueBackend, QueueError, Scope.Scope> =>
  Effect.gen(function* () {
    const queueName = options.queueName ?? QM.defaults.queueName
    const url = Redacted.isRedacted(options.rabbitmqUrl)
      ? options.rabbitmqUrl
      : Redacted.make(options.rabbitmqUrl ?? QM.defaults.rabbitmqUrl)
    const where = hostOf(Redacted.value(url))
    const names = Topology.names(queueName)
    const connectMillis = Duration.toMillis(options.connectTimeout ?? Duration.seconds(5))
    const operationMillis = Duration.toMillis(options.operationTimeout ?? Duration.seconds(10))

    const leases = new Map<string, Held>()
    const overdue = new Deadlines()
    let sessions = 0
    let blocked: string | undefined
    let lastError: unknown
    const state: { current: Session | undefined; ready: Deferred.Deferred<void> } = {
      current: undefined,
      ready: Deferred.unsafeMake<void>(FiberId.none)
    }

    const call = <A>(what: string, f: () => Promise<A>) =>
      Effect.tryPromise({
        try: f,
        catch: (cause) =>
          new QueueError({ message: `RabbitMQ ${what} failed on ${where}: ${describe(cause)}`, cause })
      })

    /** The declaration of a queue of the topology. */
    const declarationOf = (queue: string) =>
      queue === names.main
        ? Topology.mainQueueOptions(queueName)
        : queue === names.dead
          ? Topology.deadQueueOptions
          : Topology.delayQueueOptions(queueName)

    /**
     * Declares queues of the topology (idempotent, so it also tells their counts), spread over the
     * session's channels so the round trips overlap.
     */
    const declareAll = (session: Session, queues: ReadonlyArray<string>) => {
      const channels: Array<Amqp.Channel> = [session.publisher!, ...session.lanes.map((lane) => lane.channel)]
      return call("queue.declare", () =>
        Promise.all(
          queues.map((queue, i) => channels[i % channels.length]!.assertQueue(queue, declarationOf(queue)))
        )
      )
    }

    /** Marks a session dead (idempotent): its leases are gone, its waiting claims wake up. */
    const kill = (session: Session, cause: unknown, generic = false) => {
      if (!session.alive) {
        // A channel's bare "closed" may come first; the connection's own error says why.
        if (session.causeIsGeneric && !generic) {
          session.cause = cause
          session.causeIsGeneric = false
          lastError = cause
        }
        return
      }
      session.causeIsGeneric = generic
      session.alive = false
      session.cause = cause
      lastError = cause
      for (const [token, held] of leases) if (held.session === session) leases.delete(token)
      wakeAll(session)
      Deferred.unsafeDone(session.closed, Exit.void)
    }

    const watch = (session: Session, emitter: Amqp.Channel | Amqp.ChannelModel, what: string) => {
      emitter.on("error", (error: unknown) => kill(session, error))
      emitter.on("close", (error?: unknown) =>
        error === undefined ? kill(session, new Error(`the ${what} closed`), true) : kill(session, error)
      )
    }

    const connectOnce = Effect.tryPromise({
      try: (signal) =>
        amqpConnect(withHeartbeat(Redacted.value(url)), {
          noDelay: true,
          timeout: connectMillis,
          clientProperties: { connection_name: connectionName(queueName) }
        }).then((connection) => {
          coalesceWrites(connection)
          if (signal.aborted) {
            connection.on("error", () => {})
            connection.close().catch(() => {})
            throw new Error("connection attempt abandoned")
          }
          return connection
        }),
      catch: (cause) => {
        lastError = cause
        return new QueueError({
          message: `cannot connect to RabbitMQ at ${where}: ${describe(cause)}`,
          cause
        })
      }
    })

    const closeQuietly = (what: string, close: () => Promise<void>) =>
      call(`closing the ${what}`, close).pipe(
        // Finalizers are uninterruptible: without this the timeout would wait for the reply.
        Effect.interruptible,
        Effect.timeout(Duration.seconds(2)),
        Effect.ignore
      )

    /** Closes the channels, then the connection; what is already closed is skipped. */
    const closeSession = (session: Session) =>
      Effect.gen(function* () {
        const channels = [
          ...session.lanes.map((lane) => lane.channel),
          ...(session.feed ? [session.feed.lane.channel] : []),
          ...(session.publisher ? [session.publisher] : [])
        ]
        yield* Effect.forEach(channels, (channel) => closeQuietly("channel", () => channel.close()), {
          concurrency: "unbounded",
          discard: true
        })
        yield* closeQuietly("connection", () => session.connection.close())
        kill(session, new Error("closed by the queue"))
      })

    /** Opens the channels and declares the main and dead-letter queues. */
    const setup = (session: Session) =>
      Effect.gen(function* () {
        const { connection } = session
        const publisher = yield* call("opening a channel", () => connection.createConfirmChannel())
        watch(session, publisher, "publisher channel")
        publisher.on("return", (message: Amqp.Message) => {
          const key = returnKey(message.fields.routingKey, taskIdOf(message))
          session.returned.set(key, (session.returned.get(key) ?? 0) + 1)
        })
        session.publisher = publisher
        for (let index = 0; index < claimChannels; index++) {
          const channel = yield* call("opening a channel", () => connection.createChannel())
          watch(session, channel, "claim channel")
          session.lanes.push({ index, channel, busy: 0 })
        }
        const feedChannel = yield* call("opening a channel", () => connection.createChannel())
        watch(session, feedChannel, "feed channel")
        session.feed = {
          lane: { index: claimChannels, channel: feedChannel, busy: 0 },
          consumer: undefined,
          ready: new ReadyBuffer(Topology.maxPriority),
          leased: 0,
          outstanding: new Set(),
          due: [],
          wanted: 0,
          lastClaim: 0,
          lock: Effect.unsafeMakeSemaphore(1)
        }
        yield* call(`declaring queue ${names.main}`, () =>
          publisher.assertQueue(names.main, Topology.mainQueueOptions(queueName))
        )
        yield* call(`declaring queue ${names.dead}`, () =>
          publisher.assertQueue(names.dead, Topology.deadQueueOptions)
        )
        yield* declareAll(session, Topology.delayBuckets.map(names.delay))
      })

    /** Connects, opens the channels, declares the topology; closes what it opened if it fails or is interrupted. */
    const openSession: Effect.Effect<Session, QueueError> = Effect.uninterruptibleMask((restore) =>
      Effect.gen(function* () {
        const connection = yield* restore(connectOnce)
        const session = new Session(++sessions, connection)
        watch(session, connection, "connection")
        connection.on("blocked", (reason: string) => {
          blocked = reason
        })
        connection.on("unblocked", () => {
          blocked = undefined
        })
        yield* restore(setup(session)).pipe(Effect.onError(() => closeSession(session)))
        return session
      })
    ).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(connectMillis),
        onTimeout: () =>
          new QueueError({
            message: `cannot connect to RabbitMQ at ${where}: no answer within ${connectMillis} ms`,
            ...(lastError === undefined ? {} : { cause: lastError })
          })
      })
    )

    const install = (session: Session) => {
      state.current = session
      lastError = undefined
      const ready = state.ready
      state.ready = Deferred.unsafeMake<void>(FiberId.none)
      Deferred.unsafeDone(ready, Exit.void)
    }

    /** The live session, waiting for a reconnection until `deadline` (epoch ms). */
    const connected = (deadline: number): Effect.Effect<Session, QueueError> =>
      Effect.gen(function* () {
        for (;;) {
          const ready = state.ready
          const current = state.current
          if (current?.alive) return current
          const now = yield* Clock.currentTimeMillis
          if (now >= deadline) {
            return yield* new QueueError({
              message: `not connected to RabbitMQ at ${where}${lastError === undefined ? "" : `: ${describe(lastError)}`}`,
              ...(lastError === undefined ? {} : { cause: lastError })
            })
          }
          yield* Deferred.await(ready).pipe(Effect.timeoutOption(Duration.millis(deadline - now)))
        }
      })

    const connectedSoon = Effect.flatMap(Clock.currentTimeMillis, (now) => connected(now + operationMillis))

    // The first connection belongs to the layer's scope; the supervisor below replaces it when it dies.
    // At shutdown the feed gives back what no claim took before the channels close.
    yield* Effect.acquireRelease(Effect.interruptible(openSession).pipe(Effect.tap(install)), () =>
      Effect.suspend(() =>
        state.current === undefined
          ? Effect.void
          : Effect.zipRight(
              stopFeed(state.current).pipe(
                Effect.interruptible,
                Effect.timeout(Duration.millis(operationMillis)),
                Effect.ignore
              ),
              closeSession(state.current)
            )
      )
    )

    yield* Effect.gen(function* () {
      const session = state.current!
      yield* Deferred.await(session.closed)
      yield* Effect.logWarning(`lost the connection to RabbitMQ at ${where}; reconnecting`).pipe(
        Effect.annotateLogs({ cause: describe(session.cause) })
      )
      yield* closeSession(session)
      const next = yield* openSession.pipe(
        Effect.tapError((error) => Effect.logWarning(`reconnecting to RabbitMQ failed: ${error.message}`)),
        Effect.retry(reconnectSchedule)
      )
      install(next)
      yield* Effect.logInfo(`reconnected to RabbitMQ at ${where}`)
    }).pipe(
      Effect.forever,
      Effect.annotateLogs({ module: "RabbitMqQueue", queue: queueName }),
      Effect.interruptible,
      Effect.forkScoped
    )

    /**
     * Publishes the messages and waits for all their confirms; resolves with those the broker
     * returned unroutable (a mandatory message comes back before its confirm), rejects with the
     * first refusal once every confirm is in. One promise for the lot, not one per message.
     */
    const publishEach = (session: Session, messages: ReadonlyArray<Outgoing>) =>
      new Promise<Array<Outgoing>>((resolve, reject) => {
        const publisher = session.publisher!
        const unroutable: Array<Outgoing> = []
        let refusal: Error | undefined
        let left = messages.length
        if (left === 0) return resolve(unroutable)
        for (const message of messages) {
          publisher.publish(
            "",
            message.routingKey,
            message.content,
            publishOptions(message),
            (error: unknown) => {
              const key = session.returned.size > 0 ? returnKey(message.routingKey, message.id) : undefined
              const returned = key === undefined ? 0 : (session.returned.get(key) ?? 0)
              if (returned > 0) {
                if (returned === 1) session.returned.delete(key!)
                else session.returned.set(key!, returned - 1)
                unroutable.push(message)
              } else if (error) {
                refusal ??= error instanceof Error ? error : new Error("the broker refused it")
              }
              if (--left === 0) {
                if (refusal === undefined) resolve(unroutable)
                else reject(refusal)
              }
            }
          )
        }
      })

    /**
     * Publishes every message, then waits for all their confirms at once. A queue deleted behind
     * the backend's back makes its messages come back unroutable: it is declared again and they
     * are published once more, so nothing confirmed is ever dropped.
     */
    const publishAll = (session: Session, what: string, messages: ReadonlyArray<Outgoing>) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        Effect.tryPromise({
          try: () =>
            overdue.watch(now + operationMillis, async () => {
              const unroutable = await publishEach(session, messages)
              if (unroutable.length === 0) return
              const queues = [...new Set(unroutable.map((message) => message.routingKey))]
              await Promise.all(
                queues.map((queue) => session.publisher!.assertQueue(queue, declarationOf(queue)))
              )
              const again = await publishEach(session, unroutable)
              if (again.length > 0) throw new Unroutable(again[0]!.routingKey)
            }),
          catch: (cause) =>
            new QueueError({
              message:
                cause instanceof Overdue
                  ? `RabbitMQ did not confirm the ${what} within ${operationMillis} ms${
                      blocked === undefined ? "" : ` (the connection is blocked: ${blocked})`
                    }; it may or may not have been enqueued`
                  : `RabbitMQ did not accept the ${what} on ${where}: ${describe(cause)}`,
              cause
            })
        })
      )

    /** A copy of a held message for another queue, with these headers instead of its own. */
    const copyOf = (
      held: Held,
      routingKey: string,
      headers: Record<string, unknown>,
      extra: Amqp.Options.Publish = {}
    ): Outgoing => ({
      routingKey,
      id: held.id,
      content: held.message.content,
      options: {
        ...extra,
        priority: held.priority,
        contentType: held.message.properties.contentType ?? "application/json",
        headers
      }
    })

    /** A received message, as this process holds it. */
    const received = (session: Session, lane: Lane, message: Amqp.Message): Held => ({
      id: taskIdOf(message),
      token: `${session.id}.${lane.index}.${message.fields.deliveryTag}`,
      session,
      lane,
      message,
      attempt: countHeader(message.properties.headers, Topology.header.attempt) + 1,
      priority: Math.min(Topology.maxPriority, Math.max(0, Number(message.properties.priority) || 0))
    })

    /** Takes a received message into the lease table. */
    const hold = (session: Session, lane: Lane, message: Amqp.Message): Held => {
      const held = received(session, lane, message)
      leases.set(held.token, held)
      return held
    }

    /**
     * Sends the feed's acks of this turn: those that lead its outstanding deliveries as one ack
     * with `multiple` (the broker's work per ack is what bounds a drain: a multiple ack made bare
     * amqplib's drain 1.5x as fast here), the others one by one.
     */
    const flushAcks = (feed: Feed) => {
      const due = feed.due
      feed.due = []
      const dueTags = new Set(due)
      let upTo = -1
      for (const tag of feed.outstanding) {
        if (!dueTags.has(tag)) break
        upTo = tag
      }
      try {
        if (upTo >= 0) feed.lane.channel.ack(deliveryOf(upTo), true)
        for (const tag of due) if (tag > upTo) feed.lane.channel.ack(deliveryOf(tag))
      } catch {}
      for (const tag of due) feed.outstanding.delete(tag)
    }

    /** Acks a delivery of the feed at the end of this turn, with the turn's other acks. */
    const ackLater = (feed: Feed, held: Held) => {
      if (feed.due.push(held.message.fields.deliveryTag) === 1) queueMicrotask(() => flushAcks(feed))
      return true
    }

    /** Nacks a delivery of the feed at once; it leaves the outstanding ones. */
    const nackNow = (feed: Feed, held: Held, requeue: boolean) => {
      feed.outstanding.delete(held.message.fields.deliveryTag)
      try {
        feed.lane.channel.nack(held.message, false, requeue)
        return true
      } catch {
        return false
      }
    }

    /** Acks a held message on the channel that delivered it; `false` when that channel is gone. */
    const settle = (held: Held, requeue?: boolean): boolean => {
      leases.delete(held.token)
      if (!held.session.alive) return false
      const feed = held.session.feed
      if (feed !== undefined && held.lane === feed.lane) {
        feed.leased--
        return requeue === undefined ? ackLater(feed, held) : nackNow(feed, held, requeue)
      }
      try {
        if (requeue === undefined) held.lane.channel.ack(held.message)
        else held.lane.channel.nack(held.message, false, requeue)
        return true
      } catch {
        return false
      }
    }

    /**
     * A redelivered message (its holder died) counts as the next attempt: it goes back at the
     * back of its priority with its attempt header raised, then the original is acked.
     */
    const bump = (held: Held) =>
      publishAll(held.session, `requeue of redelivered task ${held.id}`, [
        copyOf(held, names.main, { [Topology.header.attempt]: held.attempt })
      ]).pipe(
        Effect.interruptible,
        Effect.matchCauseEffect({
          onFailure: (cause) => {
            settle(held, true)
            return Effect.logWarning("could not requeue a redelivered task; the broker keeps it").pipe(
              Effect.annotateLogs({ taskId: held.id, cause: String(cause) })
            )
          },
          onSuccess: () => Effect.sync(() => settle(held))
        })
      )

    /** Takes one task with `basic.get` (the most urgent ready one), if there is one. */
    const getOne = (session: Session, lane: Lane, out: Array<Held>) =>
      Effect.gen(function* () {
        while (out.length === 0 && session.alive) {
          // A message the broker sent must reach the lease table, so get + hold is one step.
          const taken = yield* Effect.uninterruptible(
            Effect.flatMap(
              call("basic.get", () => lane.channel.get(names.main, { noAck: false })),
              (message) => {
                if (message === false) return Effect.succeed(false)
                const held = hold(session, lane, message)
                return message.fields.redelivered
                  ? Effect.as(bump(held), true)
                  : Effect.sync(() => {
                      out.push(held)
                      return true
                    })
              }
            )
          )
          if (taken === false) return
        }
      })

    /**
     * Starts the feed's consumer, or replaces it by one with a larger prefetch, so that the feed
     * can hold at once what the process's claims hold and ask for: the next power of two at or
     * above that, at most 4096. Deliveries of a replaced consumer stay valid (same
     * channel), and those no claim took stay in the feed. Not interruptible: a consumer the broker
     * registered is always recorded.
     */
    const ensureConsumer = (session: Session, feed: Feed) =>
      feed.consumer !== undefined && feed.consumer.prefetch >= feed.leased + feed.wanted
        ? Effect.void
        : feed.lock.withPermits(1)(
            Effect.gen(function* () {
              const current = feed.consumer
              const demand = feed.leased + feed.wanted
              if (!session.alive || (current !== undefined && current.prefetch >= demand)) return
              let prefetch = 1
              while (prefetch < Math.min(demand, maxFeedPrefetch)) prefetch *= 2
              const { channel } = feed.lane
              yield* call("basic.qos", () => channel.prefetch(prefetch, false))
              const self = { tag: "" }
              const { consumerTag } = yield* call("basic.consume", () =>
                channel.consume(
                  names.main,
                  (message) => {
                    if (message === null) {
                      // The broker cancelled it (its queue was deleted): the next claim starts another.
                      if (feed.consumer?.tag === self.tag) feed.consumer = undefined
                    } else {
                      const held = received(session, feed.lane, message)
                      feed.outstanding.add(message.fields.deliveryTag)
                      feed.ready.push(held.priority, held)
                      return wakeOne(session)
                    }
                    wakeAll(session)
                  },
                  { noAck: false }
                )
              )
              self.tag = consumerTag
              feed.consumer = { tag: consumerTag, prefetch }
              if (current !== undefined) {
                yield* call("basic.cancel", () => channel.cancel(current.tag))
              }
            }).pipe(Effect.uninterruptible)
          )

    /**
     * Stops the feed's consumer and hands what it holds and no claim took to `f`, all under the
     * feed's lock: after the broker's reply to the cancel, every delivery it made is in the feed.
     * Claims that come in meanwhile start the next consumer afterwards.
     */
    const pauseFeed = <A, E>(session: Session, f: (unclaimed: Array<Held>) => Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        const feed = session.feed!
        return feed.lock.withPermits(1)(
          Effect.gen(function* () {
            const consumer = feed.consumer
            feed.consumer = undefined
            if (consumer !== undefined && session.alive) {
              yield* call("basic.cancel", () => feed.lane.channel.cancel(consumer.tag)).pipe(
                Effect.interruptible,
                Effect.timeout(Duration.millis(operationMillis)),
                Effect.ignore
              )
            }
            return yield* f(feed.ready.takeAll())
          }).pipe(Effect.ensuring(Effect.sync(() => wakeAll(session))), Effect.uninterruptible)
        )
      })

    /**
     * Stops the feed and gives back what no claim took: a copy of each, the same attempt (the
     * next one if the broker had redelivered it), then the original is acked. If the copies cannot
     * be published the originals go back to the broker, redelivered.
     */
    const stopFeed = (session: Session) =>
      pauseFeed(session, (unclaimed) =>
        Effect.gen(function* () {
          if (unclaimed.length === 0 || !session.alive) return
          const copies = unclaimed.map((held) =>
            copyOf(held, names.main, {
              [Topology.header.attempt]: held.message.fields.redelivered ? held.attempt : held.attempt - 1
            })
          )
          const returned = yield* Effect.exit(
            publishAll(session, `return of ${unclaimed.length} unclaimed tasks`, copies).pipe(
              Effect.interruptible,
              Effect.timeout(Duration.millis(operationMillis))
            )
          )
          const feed = session.feed!
          for (const held of unclaimed) {
            if (Exit.isSuccess(returned)) ackLater(feed, held)
            else nackNow(feed, held, true)
          }
        })
      )

    /** Moves up to `max` of the feed's deliveries into `out`, leased. */
    const takeReady = (feed: Feed, max: number, out: Array<Held>) => {
      const from = out.length
      feed.ready.take(max, out)
      for (let i = from; i < out.length; i++) leases.set(out[i]!.token, out[i]!)
      feed.leased += out.length - from
    }

    /**
     * Waits until the feed delivers (one wake-up per delivery) or the session dies, at most
     * `millis`. An interrupted claim passes a wake-up on while deliveries wait.
     */
    const arrival = (session: Session, feed: Feed, millis: number) =>
      Effect.async<void>((resume) => {
        if (!session.alive) return resume(Effect.void)
        // One plain timer: `Effect.timeout` would cost a fiber per wait.
        const timer = setTimeout(() => {
          session.waiters.delete(wake)
          resume(Effect.void)
        }, millis)
        const wake = () => {
          clearTimeout(timer)
          resume(Effect.void)
        }
        session.waiters.add(wake)
        return Effect.sync(() => {
          clearTimeout(timer)
          session.waiters.delete(wake)
          // Interrupted, perhaps just after its wake-up: what woke it goes to the next claim.
          if (feed.ready.size > 0) wakeOne(session)
        })
      })

    /**
     * Gives back what an unfinished claim holds: the feed's deliveries go back into the feed
     * (ahead of the others of their priority), those of `basic.get` to the broker (redelivered).
     */
    const releaseAll = (out: Array<Held>) =>
      Effect.sync(() => {
        for (const held of out) {
          if (leases.get(held.token) !== held) continue
          const feed = held.session.feed
          if (feed !== undefined && held.lane === feed.lane && held.session.alive) {
            leases.delete(held.token)
            feed.leased--
            feed.ready.putBack(held.priority, held)
          } else {
            settle(held, true)
          }
        }
        out.length = 0
      })

    /**
     * Runs the redelivered ones through `bump`, one at a time, each leaving `out` once bumped:
     * interrupted midway, the claim still gives back the rest.
     */
    const bumpRedelivered = (out: Array<Held>) =>
      Effect.forEach(
        out.filter((held) => held.message.fields.redelivered),
        (held) =>
          Effect.uninterruptible(
            Effect.zipRight(
              bump(held),
              Effect.sync(() => {
                out.splice(out.indexOf(held), 1)
              })
            )
          ),
        { discard: true }
      )

    const toLease = (held: Held): RawLease => ({
      id: held.id,
      body: held.message.content.toString("utf8"),
      attempt: held.attempt,
      token: held.token
    })

    /**
     * Takes what the feed holds, up to `max`. With nothing there, a claim that may wait starts (or
     * grows) the feed's consumer and waits for its deliveries; one that may not asks the broker
     * for the head of the queue with `basic.get`.
     */
    const claim = (
      max: number,
      timeout: Duration.Duration
    ): Effect.Effect<ReadonlyArray<RawLease>, QueueError> => {
      const out: Array<Held> = []
      return Effect.gen(function* () {
        const deadline = (yield* Clock.currentTimeMillis) + Duration.toMillis(timeout)
        for (;;) {
          const session = yield* connected(deadline)
          const feed = session.feed!
          const round = Effect.gen(function* () {
            const now = yield* Clock.currentTimeMillis
            feed.lastClaim = now
            if (deadline <= now) {
              takeReady(feed, max, out)
              if (out.length === 0) {
                const lane = session.lanes.reduce((a, b) => (b.busy < a.busy ? b : a))
                lane.busy++
                yield* getOne(session, lane, out).pipe(Effect.ensuring(Effect.sync(() => lane.busy--)))
              }
            } else {
              // What this claim still asks for counts toward the feed's prefetch (what it took is leased).
              let asked = max
              feed.wanted += asked
              const take = () => {
                const before = out.length
                takeReady(feed, max, out)
                feed.wanted -= out.length - before
                asked -= out.length - before
              }
              yield* Effect.gen(function* () {
                yield* ensureConsumer(session, feed)
                take()
                if (out.length === 0) {
                  yield* arrival(session, feed, deadline - now)
                  take()
                }
              }).pipe(Effect.ensuring(Effect.sync(() => (feed.wanted -= asked))))
            }
            yield* bumpRedelivered(out)
          }).pipe(
            // A session that died under the claim: wait for the next one until the deadline.
            Effect.catchAll((error) => (session.alive ? Effect.fail(error) : Effect.void))
          )
          yield* round
          // Leases of a session that died meanwhile are gone.
          const live = out.filter((held) => leases.get(held.token) === held)
          out.length = 0
          out.push(...live)
          if (out.length > 0 || (yield* Clock.currentTimeMillis) >= deadline) {
            const leased = out.slice().sort((a, b) => b.priority - a.priority)
            out.length = 0
            return leased.map(toLease)
          }
        }
      }).pipe(Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : releaseAll(out))))
    }

    /** The held delivery behind a token, if it still holds. */
    const holding = (id: string, token: string) => {
      const held = leases.get(token)
      return held !== undefined && held.id === id && held.session.alive ? held : undefined
    }

    /** Acks the delivery behind a token; `false` when it is no longer held. */
    const ackHeld = (id: string, token: string) => {
      const held = holding(id, token)
      return held !== undefined && settle(held)
    }

    /**
     * Gives a held message back: a copy goes where `options` say (requeued with this attempt
     * counted, or not counted when `release`; delayed; dead), then the original is acked.
     */
    const giveBack = (
      id: string,
      token: string,
      options: RawNack & { readonly release?: boolean }
    ): Effect.Effect<void, QueueError | LeaseLost> =>
      Effect.gen(function* () {
        const delay = Math.ceil(options.delayMillis)
        if (options.requeue && delay > Topology.maxDelayMillis) {
          return yield* new QueueError({
            message: `a delay of ${delay} ms is over RabbitMQ's maximum of ${Topology.maxDelayMillis} ms`
          })
        }
        const held = holding(id, token)
        if (held === undefined) return yield* lost(id)
        const { session } = held
        const now = yield* Clock.currentTimeMillis
        const outgoing = !options.requeue
          ? copyOf(held, names.dead, {
              [Topology.header.error]: options.error ?? "dead-lettered",
              [Topology.header.attempts]: held.attempt,
              [Topology.header.deadAt]: now
            })
          : delay > 0
            ? copyOf(
                held,
                names.delay(Topology.bucketFor(delay)),
                { [Topology.header.attempt]: held.attempt, [Topology.header.delay]: delay },
                { expiration: String(delay) }
              )
            : copyOf(held, names.main, {
                [Topology.header.attempt]: options.release === true ? held.attempt - 1 : held.attempt
              })
        const publish = publishAll(
          session,
          `${options.release === true ? "release" : "nack"} of task ${id}`,
          [outgoing]
        )
        // While the copy is published the lease is settling: a concurrent ack or nack finds it gone.
        leases.delete(token)
        yield* publish.pipe(
          Effect.onExit((exit) =>
            Effect.sync(() => {
              // A failed publish leaves the lease with its holder, who may try again.
              if (Exit.isFailure(exit) && session.alive) leases.set(token, held)
            })
          ),
          Effect.catchTag(
            "QueueError",
            (error): Effect.Effect<never, QueueError | LeaseLost> =>
              session.alive ? Effect.fail(error) : Effect.fail(lost(id))
          )
        )
        // The copy is safe; if the original's channel died meanwhile the broker hands it out again too.
        if (!settle(held)) return yield* lost(id)
      })

    /**
     * The tasks pending for this process: ready in `<q>`, and delivered to the feed and not
     * claimed. While the feed's consumer has room the broker may be delivering as it counts, so a
     * task can be missed or counted twice for a moment (the README says so).
     */
    const pendingOf = (session: Session) =>
      call(`declaring queue ${names.main}`, () =>
        session
          .publisher!.assertQueue(names.main, declarationOf(names.main))
          .then((reply) => reply.messageCount + (session.feed?.ready.size ?? 0))
      )

    const stats: Effect.Effect<QueueStats, QueueError> = Effect.gen(function* () {
      const session = yield* connectedSoon
      const [pending, [dead, ...delays]] = yield* Effect.all(
        [pendingOf(session), declareAll(session, [names.dead, ...Topology.delayBuckets.map(names.delay)])],
        { concurrency: "unbounded" }
      )
      let inFlight = 0
      for (const held of leases.values()) if (held.session.alive) inFlight++
      return {
        pending,
        inFlight,
        delayed: delays.reduce((sum, reply) => sum + reply.messageCount, 0),
        dead: dead!.messageCount
      }
    })

    // The feed stops first: what it holds and no claim took is pending too, and is acked away.
    const clear: Effect.Effect<number, QueueError> = Effect.flatMap(connectedSoon, (session) =>
      pauseFeed(session, (unclaimed) =>
        Effect.gen(function* () {
          const publisher = session.publisher!
          const delays = yield* declareAll(session, Topology.delayBuckets.map(names.delay))
          const purged = yield* call("queue.purge", () =>
            Promise.all([
              publisher.purgeQueue(names.main),
              ...delays
                .filter((reply) => reply.messageCount > 0)
                .map((reply) => publisher.purgeQueue(reply.queue))
            ])
          )
          for (const held of unclaimed) ackLater(session.feed!, held)
          return purged.reduce((sum, reply) => sum + reply.messageCount, unclaimed.length)
        })
      )
    )

    // Reading dead letters takes them from the queue for a moment; one reader at a time per process.
    const deadLock = yield* Effect.makeSemaphore(1)

    /** Runs `f` on a channel of its own; closing it gives back whatever `f` took and did not ack. */
    const withDeadChannel = <A>(
      f: (session: Session, channel: Amqp.Channel) => Effect.Effect<A, QueueError>
    ) =>
      deadLock.withPermits(1)(
        Effect.flatMap(connectedSoon, (session) =>
          Effect.acquireUseRelease(
            call("opening a channel", () => session.connection.createChannel()).pipe(
              Effect.tap((channel) =>
                Effect.sync(() => {
                  channel.on("error", () => {})
                  channel.on("close", () => {})
                })
              )
            ),
            (channel) => f(session, channel),
            (channel) => closeQuietly("channel", () => channel.close())
          )
        )
      )

    const toDeadLetter = (message: Amqp.Message): RawDeadLetter => {
      const headers = message.properties.headers
      const death = Array.isArray(headers?.["x-death"])
        ? (headers["x-death"][0] as unknown as Record<string, unknown>)
        : undefined
      const deathTime = death?.time as { value?: unknown } | undefined
      return {
        id: taskIdOf(message),
        body: message.content.toString("utf8"),
        attempts:
          countHeader(headers, Topology.header.attempts) || countHeader(headers, Topology.header.attempt) + 1,
        error:
          stringHeader(headers, Topology.header.error) ??
          `dead-lettered by RabbitMQ (${typeof death?.reason === "string" ? death.reason : "unknown reason"})`,
        deadAt:
          countHeader(headers, Topology.header.deadAt) ||
          (typeof deathTime?.value === "number" ? deathTime.value * 1000 : 0)
      }
    }

    const deadLetters = (limit: number) =>
      withDeadChannel((_, channel) =>
        Effect.gen(function* () {
          const out: Array<RawDeadLetter> = []
          while (out.length < limit) {
            const message = yield* call("basic.get", () => channel.get(names.dead, { noAck: false }))
            if (message === false) break
            out.push(toDeadLetter(message))
          }
          return out
        })
      )

    const retryDead = (id: string) =>
      withDeadChannel((session, channel) =>
        Effect.gen(function* () {
          for (;;) {
            const message = yield* call("basic.get", () => channel.get(names.dead, { noAck: false }))
            if (message === false) return false
            if (taskIdOf(message) !== id) continue
            yield* publishAll(session, `retry of dead letter ${id}`, [
              {
                routingKey: names.main,
                id,
                content: message.content,
                options: {
                  priority: Math.min(
                    Topology.maxPriority,
                    Math.max(0, Number(message.properties.priority) || 0)
                  ),
                  contentType: message.properties.contentType ?? "application/json",
                  headers: { [Topology.header.attempt]: 0 }
                }
              }
            ])
            yield* Effect.try({
              try: () => channel.ack(message),
              catch: (cause) =>
                new QueueError({
                  message: `dead letter ${id} was requeued but could not be removed from ${names.dead}: ${describe(cause)}`,
                  cause
                })
            })
            return true
          }
        })
      )

    // Once a second: fail overdue confirms, and stop a feed no claim has used for a while.
    yield* Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      overdue.sweep(now)
      const session = state.current
      const feed = session?.feed
      if (
        session?.alive === true &&
        feed?.consumer !== undefined &&
        feed.wanted === 0 &&
        now - feed.lastClaim >= feedIdleMillis
      ) {
        yield* stopFeed(session)
      }
    }).pipe(
      Effect.catchAllCause((cause) => Effect.logWarning("stopping an idle RabbitMQ feed failed", cause)),
      Effect.repeat(Schedule.spaced("1 second")),
      Effect.annotateLogs({ module: "RabbitMqQueue", queue: queueName }),
      Effect.interruptible,
      Effect.forkScoped
    )

    const backend: QueueBackend = {
      kind: "rabbitmq",
      offer: (tasks: ReadonlyArray<RawTask>) =>
        Effect.gen(function* () {
          const session = yield* connectedSoon
          yield* publishAll(
            session,
            tasks.length === 1 ? `push of task ${tasks[0]!.id}` : `push of ${tasks.length} tasks`,
            tasks.map((task) => ({
              routingKey: names.main,
              id: task.id,
              content: Buffer.from(task.body, "utf8"),
              options: { priority: task.priority, contentType: "application/json" }
            }))
          )
          return tasks.map(() => true)
        }),
      claim,
      ack: (id, token) => Effect.suspend(() => (ackHeld(id, token) ? Effect.void : Effect.fail(lost(id)))),
      // Acks are frames the broker does not answer: a batch of them is one loop, not an effect each.
      ackMany: (acks) => Effect.sync(() => acks.map(({ id, token }) => ackHeld(id, token))),
      nack: giveBack,
      release: (id, token) =>
        giveBack(id, token, { requeue: true, delayMillis: 0, error: undefined, release: true }),
      extend: (id, token) => (holding(id, token) === undefined ? Effect.fail(lost(id)) : Effect.void),
      stats,
      clear,
      deadLetters,
      retryDead
    }
    return backend
  })

/** A `QueueManager` on a RabbitMQ queue, its connection held by the scope. */
export const make = (
  options: RabbitMqQueueOptions = {}
): Effect.Effect<QM.QueueManagerService, QueueError, Scope.Scope> =>
  Effect.map(makeBackend(options), (backend) =>
    QM.make({
      queueName: options.queueName ?? QM.defaults.queueName,
      backend,
      leaseDuration: options.leaseDuration ?? QM.defaults.leaseDuration
    })
  )

/** Provides `QueueManager` on a RabbitMQ queue; the connection lives as long as the layer. */
export const layer = (options: RabbitMqQueueOptions = {}): Layer.Layer<QM.QueueManager, QueueError> =>
  Layer.scoped(QM.QueueManager, make(options))

/** As {@link layer}, configured by `QUEUE_NAME`, `RABBITMQ_URL` (redacted) and `LEASE_DURATION`. */
export const layerConfig: Layer.Layer<QM.QueueManager, QueueError | ConfigError.ConfigError> =
  Layer.unwrapEffect(
    Effect.map(
      Config.all({
        queueName: Config.string("QUEUE_NAME").pipe(Config.withDefault(QM.defaults.queueName)),
        rabbitmqUrl: Config.redacted("RABBITMQ_URL").pipe(
          Config.withDefault(Redacted.make(QM.defaults.rabbitmqUrl))
        ),
        leaseDuration: Config.duration("LEASE_DURATION").pipe(Config.withDefault(QM.defaults.leaseDuration))
      }),
      layer
    )
  )

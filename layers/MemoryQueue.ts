/**
 * The embedded backend: a queue in this process's memory, with exactly the semantics of the
 * Redis backend (priorities, FIFO inside a priority, leases with tokens, delayed requeue, dead
 * letters). Leases and delays are timed by Effect's `Clock`, so `TestClock` drives them in tests.
 * Its tasks live as long as the layer: nothing survives the process.
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
  Exit,
  type Fiber,
  FiberId,
  Layer
} from "effect"
import { LeaseLost } from "../src/Errors.js"
import type { QueueBackend, RawDeadLetter, RawLease, RawNack, RawTask } from "../src/QueueBackend.js"
import * as QM from "../src/QueueManager.js"
import { maxPriority } from "../src/Task.js"
import { MinHeap } from "./internal/MinHeap.js"

/** Options of the memory backend. */
export interface MemoryQueueOptions {
  /** Default `"tasks"`; only names the queue in logs and spans. */
  readonly queueName?: string | undefined
  /** Default 30 seconds. */
  readonly leaseDuration?: Duration.DurationInput | undefined
}

type State = "pending" | "inflight" | "delayed" | "dead"

interface Entry {
  readonly id: string
  readonly priority: number
  readonly body: string
  attempts: number
  state: State
  /** Bumped on every transition; a heap node of an older version is stale. */
  version: number
  token: string
  error: string
  deadAt: number
  /** Its place in pending (insertion number), where a release puts it back. */
  seq: number
}

interface Node {
  readonly entry: Entry
  readonly version: number
}

const isLive = (node: Node, state: State) => node.version === node.entry.version && node.entry.state === state

/** The time by the fiber's `Clock` (a `TestClock` in tests), read without an effect of its own. */
const clockMillis = (fiber: Fiber.RuntimeFiber<unknown, unknown>) =>
  Context.get(fiber.currentDefaultServices, Clock.Clock).unsafeCurrentTimeMillis()

/** Runs `f` with the current time, in one step of the fiber. */
const withNow = <A, E>(f: (now: number) => Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.withFiberRuntime((fiber) => f(clockMillis(fiber)))

/** The raw operations of one in-memory queue. */
export const makeBackend = (leaseDuration: Duration.DurationInput): QueueBackend => {
  const defaultLeaseMillis = Duration.toMillis(leaseDuration)
  const tasks = new Map<string, Entry>()
  const dead = new Map<string, Entry>()
  const pending = new MinHeap<Node>()
  const leases = new MinHeap<Node>()
  const delayed = new MinHeap<Node>()
  const counts: Record<State, number> = { pending: 0, inflight: 0, delayed: 0, dead: 0 }
  let tokens = 0
  /** Completed when a task may have become pending; made only when a puller waits. */
  let wakeup: Deferred.Deferred<void> | undefined

  const wake = () => {
    if (wakeup === undefined) return
    Deferred.unsafeDone(wakeup, Exit.void)
    wakeup = undefined
  }

  const wokenUp = () => {
    wakeup ??= Deferred.unsafeMake<void>(FiberId.none)
    return Deferred.await(wakeup)
  }

  const move = (entry: Entry, to: State) => {
    counts[entry.state]--
    counts[to]++
    entry.state = to
    entry.version++
  }

  const toPending = (entry: Entry, seq?: number) => {
    move(entry, "pending")
    entry.seq = pending.push(maxPriority - entry.priority, { entry, version: entry.version }, seq)
  }

  /** Drops stale nodes from the top of a heap so its top key is a real due time. */
  const topKey = (heap: MinHeap<Node>, state: State) => {
    while (heap.size > 0 && !isLive(heap.peek()!, state)) heap.pop()
    return heap.peekKey()
  }

  /** Moves the entries of `heap` due by `now` back to pending; whether there were any. */
  const requeueDue = (heap: MinHeap<Node>, state: State, now: number) => {
    let requeued = false
    for (let due = topKey(heap, state); due !== undefined && due <= now; due = topKey(heap, state)) {
      toPending(heap.pop()!.entry)
      requeued = true
    }
    return requeued
  }

  /** Expired leases and due delays go back to pending. */
  const maintain = (now: number) => {
    const expired = requeueDue(leases, "inflight", now)
    if (requeueDue(delayed, "delayed", now) || expired) wake()
  }

  const holder = (id: string, token: string, now: number) => {
    maintain(now)
    const entry = tasks.get(id)
    return entry !== undefined && entry.state === "inflight" && entry.token === token ? entry : undefined
  }

  const lost = (id: string) =>
    new LeaseLost({
      taskId: id,
      message: `the lease on task ${id} is no longer held (expired, or the task moved on)`
    })

  const withLease = (id: string, token: string, f: (entry: Entry, now: number) => void) =>
    withNow((now) => {
      const entry = holder(id, token, now)
      if (entry === undefined) return Effect.fail(lost(id))
      f(entry, now)
      return Effect.void
    })

  /** The task is done: it leaves the queue. */
  const acked = (entry: Entry) => {
    counts.inflight--
    entry.version++
    tasks.delete(entry.id)
  }

  const offerNow = (batch: ReadonlyArray<RawTask>): Array<boolean> => {
    const accepted: Array<boolean> = []
    let added = false
    for (const task of batch) {
      const existing = tasks.get(task.id)
      if (existing !== undefined && existing.state !== "dead") {
        accepted.push(false)
        continue
      }
      if (existing !== undefined) {
        dead.delete(task.id)
        counts.dead--
        existing.version++
      }
      const entry: Entry = {
        id: task.id,
        priority: task.priority,
        body: task.body,
        attempts: 0,
        state: "pending",
        version: 0,
        token: "",
        error: "",
        deadAt: 0,
        seq: 0
      }
      counts.pending++
      tasks.set(task.id, entry)
      entry.seq = pending.push(maxPriority - entry.priority, { entry, version: 0 })
      accepted.push(true)
      added = true
    }
    if (added) wake()
    return accepted
  }

  const ackNow = (id: string, token: string, now: number): LeaseLost | undefined => {
    const entry = holder(id, token, now)
    if (entry === undefined) return lost(id)
    acked(entry)
    return undefined
  }

  const claimNow = (max: number, now: number): Array<RawLease> => {
    maintain(now)
    const out: Array<RawLease> = []
    while (out.length < max && pending.size > 0) {
      const node = pending.pop()!
      if (!isLive(node, "pending")) continue
      const entry = node.entry
      move(entry, "inflight")
      entry.attempts++
      entry.token = String(++tokens)
      leases.push(now + defaultLeaseMillis, { entry, version: entry.version })
      out.push({ id: entry.id, body: entry.body, attempt: entry.attempts, token: entry.token })
    }
    return out
  }

  /**
   * Claims what is pending at `now`; when nothing is, waits for a push, a lease expiry, a due delay
   * or the deadline, and claims again.
   */
  const claimBy = (max: number, deadline: number, now: number): Effect.Effect<Array<RawLease>> => {
    const out = claimNow(max, now)
    if (out.length > 0 || now >= deadline) return Effect.succeed(out)
    const due = Math.min(
      deadline,
      topKey(leases, "inflight") ?? deadline,
      topKey(delayed, "delayed") ?? deadline
    )
    return Effect.zipRight(
      Effect.race(wokenUp(), Effect.sleep(Math.max(0, due - now))),
      withNow((later) => claimBy(max, deadline, later))
    )
  }

  const claim = (max: number, timeout: Duration.Duration) =>
    withNow((now) => claimBy(max, now + Duration.toMillis(timeout), now))

  const nack = (id: string, token: string, options: RawNack) =>
    withLease(id, token, (entry, now) => {
      if (!options.requeue) {
        move(entry, "dead")
        entry.error = options.error ?? "dead-lettered"
        entry.deadAt = now
        dead.set(id, entry)
      } else if (options.delayMillis > 0) {
        move(entry, "delayed")
        delayed.push(now + options.delayMillis, { entry, version: entry.version })
      } else {
        toPending(entry)
        wake()
      }
    })

  return {
    kind: "memory",
    immediate: { offer: offerNow, claim: claimNow, ack: ackNow },
    offer: (batch) => Effect.sync(() => offerNow(batch)),
    claim,
    ack: (id, token) =>
      withNow((now) => {
        const failure = ackNow(id, token, now)
        return failure === undefined ? Effect.void : Effect.fail(failure)
      }),
    ackMany: (held) =>
      withNow((now) => {
        maintain(now)
        return Effect.succeed(
          held.map(({ id, token }) => {
            const entry = holder(id, token, now)
            if (entry !== undefined) acked(entry)
            return entry !== undefined
          })
        )
      }),
    nack,
    release: (id, token) =>
      withLease(id, token, (entry) => {
        entry.attempts--
        toPending(entry, entry.seq)
        wake()
      }),
    extend: (id, token, leaseMillis) =>
      withLease(id, token, (entry, now) => {
        entry.version++
        leases.push(now + leaseMillis, { entry, version: entry.version })
      }),
    stats: withNow((now) => {
      maintain(now)
      return Effect.succeed({
        pending: counts.pending,
        inFlight: counts.inflight,
        delayed: counts.delayed,
        dead: counts.dead
      })
    }),
    clear: withNow((now) => {
      maintain(now)
      const removed = counts.pending + counts.delayed
      for (const [id, entry] of tasks) {
        if (entry.state === "pending" || entry.state === "delayed") {
          entry.version++
          tasks.delete(id)
        }
      }
      pending.clear()
      delayed.clear()
      counts.pending = 0
      counts.delayed = 0
      return Effect.succeed(removed)
    }),
    deadLetters: (limit) =>
      Effect.sync(() => {
        const out: Array<RawDeadLetter> = []
        for (const entry of dead.values()) {
          if (out.length >= limit) break
          out.push({
            id: entry.id,
            body: entry.body,
            attempts: entry.attempts,
            error: entry.error,
            deadAt: entry.deadAt
          })
        }
        return out
      }),
    retryDead: (id) =>
      Effect.sync(() => {
        const entry = dead.get(id)
        if (entry === undefined) return false
        dead.delete(id)
        entry.attempts = 0
        toPending(entry)
        wake()
        return true
      })
  }
}

/** A `QueueManager` on a fresh in-memory queue. */
export const make = (options: MemoryQueueOptions = {}): Effect.Effect<QM.QueueManagerService> =>
  Effect.sync(() => {
    const leaseDuration = options.leaseDuration ?? QM.defaults.leaseDuration
    return QM.make({
      queueName: options.queueName ?? QM.defaults.queueName,
      backend: makeBackend(leaseDuration),
      leaseDuration
    })
  })

/** Provides `QueueManager` from a fresh in-memory queue; each build of the layer is a new queue. */
export const layer = (options: MemoryQueueOptions = {}): Layer.Layer<QM.QueueManager> =>
  Layer.effect(QM.QueueManager, make(options))

/** As {@link layer}, configured by `QUEUE_NAME` and `LEASE_DURATION`. */
export const layerConfig: Layer.Layer<QM.QueueManager, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(
    Config.all({
      queueName: Config.string("QUEUE_NAME").pipe(Config.withDefault(QM.defaults.queueName)),
      leaseDuration: Config.duration("LEASE_DURATION").pipe(Config.withDefault(QM.defaults.leaseDuration))
    }),
    layer
  )
)

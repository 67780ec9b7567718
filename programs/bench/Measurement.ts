/**
 * The benchmark's model: the subjects measured (our backends and the peers), the scenarios, what
 * one run of a scenario yields, and the small timing helpers every subject shares.
 *
 * @since 0.1.0
 */

import { readFileSync } from "node:fs"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { Data, Effect } from "effect"

/** Our three backends. */
export const ourSubjects = ["memory", "redis", "rabbitmq"] as const

/** The peers: two libraries on the same Redis and two bare references (the cost floors). */
export const peerSubjects = ["bullmq", "bee-queue", "lua", "amqplib"] as const

/** Everything the bench can measure, in the order it prints them. */
export const allSubjects = [...ourSubjects, ...peerSubjects] as const

/** A thing measured: one of our backends or a peer. */
export type Subject = (typeof allSubjects)[number]

/** What a scenario measures. */
export type ScenarioKind =
  /** N single pushes, `concurrency` in flight. */
  | "push"
  /** N tasks pushed in batches of `batch`, one batch in flight. */
  | "batch"
  /** N pre-pushed no-op tasks through the subject's worker (ours: `TaskWorker` with its task store). */
  | "worker"
  /** N pre-pushed tasks through `pull` + `ack` from `concurrency` pullers. */
  | "queue"
  /** N cycles of push, pull, ack from `concurrency` fibers on an empty queue. */
  | "cycle"
  /** Push-to-start latency at a steady rate through the subject's worker. */
  | "latency"

/** One measurement: a kind and its concurrency (or batch size). */
export interface Scenario {
  readonly kind: ScenarioKind
  readonly concurrency: number
}

/** The scenario's short name, as printed and used in JSON: `push.c16`, `batch.100`, `worker.c1`, ... */
export const scenarioName = (s: Scenario): string =>
  s.kind === "batch"
    ? `batch.${s.concurrency}`
    : s.kind === "latency"
      ? `latency.c${s.concurrency}`
      : `${s.kind}.c${s.concurrency}`

/** Which scenario kinds each subject can run. */
export const supports: Record<Subject, ReadonlyArray<ScenarioKind>> = {
  memory: ["push", "batch", "worker", "queue", "cycle", "latency"],
  redis: ["push", "batch", "worker", "queue", "cycle", "latency"],
  rabbitmq: ["push", "batch", "worker", "queue", "cycle", "latency"],
  bullmq: ["push", "batch", "worker", "latency"],
  "bee-queue": ["push", "batch", "worker", "latency"],
  lua: ["push", "batch", "queue", "latency"],
  amqplib: ["push", "batch", "queue"]
}

/** The settings every measurement gets. */
export interface Settings {
  /** Tasks per throughput measurement. */
  readonly n: number
  readonly redisUrl: string
  readonly rabbitmqUrl: string
  /** Latency scenario: tasks per second and for how long. */
  readonly rate: number
  readonly durationSeconds: number
}

/** One measurement to make, as handed to a child process. */
export interface Job {
  readonly subject: Subject
  readonly scenario: Scenario
  readonly settings: Settings
  /** A queue name no other measurement uses; every key and broker queue of the run contains it. */
  readonly queueName: string
  /** When set, a CPU profile of the timed section is written to this file (`.cpuprofile`). */
  readonly profile?: string | undefined
}

/** What one run of one scenario yields; fields absent when they do not apply. */
export interface Sample {
  /** Tasks (or cycles) per second. */
  readonly rate?: number | undefined
  readonly elapsedMs?: number | undefined
  /** CPU time (user + system) of this process per task during the timed section, µs. */
  readonly cpuUsPerTask?: number | undefined
  /**
   * Of that, the main thread's (Linux only, at the 10 ms resolution of `/proc`); the rest is
   * V8's background compiler and GC threads (and libuv's pool).
   */
  readonly mainCpuUsPerTask?: number | undefined
  /** Push-to-start latency percentiles, milliseconds. */
  readonly p50Ms?: number | undefined
  readonly p99Ms?: number | undefined
  readonly maxMs?: number | undefined
  /** Latency scenario: tasks observed and the rate actually offered. */
  readonly observed?: number | undefined
  readonly offeredRate?: number | undefined
  /** Drain scenarios: process RSS just before the drain and its peak during it, MiB. */
  readonly rssBeforeMiB?: number | undefined
  readonly rssPeakMiB?: number | undefined
  /** Batch scenario on Redis: `INFO memory` used_memory delta per pending task, bytes. */
  readonly redisBytesPerTask?: number | undefined
  /** Same, as the sum of `MEMORY USAGE` over the queue's keys (blind to other Redis users). */
  readonly redisKeyBytesPerTask?: number | undefined
}

/** How one measurement ended; `leaked`: handles (sockets, timers) still open after it cleaned up. */
export type Outcome =
  | { readonly _tag: "Ok"; readonly sample: Sample; readonly leaked?: ReadonlyArray<string> }
  | { readonly _tag: "NotAvailable"; readonly message: string }
  | { readonly _tag: "Failed"; readonly message: string }

/** A measurement that could not be made: the subject is missing, a server is down, a run failed. */
export class BenchError extends Data.TaggedError("BenchError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/** The subject cannot run yet (its module has not landed): reported as "not available". */
export class NotAvailable extends Data.TaggedError("NotAvailable")<{
  readonly message: string
}> {}

/** The payload every subject pushes: a counter and the push time, for latency. */
export interface Payload {
  readonly i: number
  readonly sentAt: number
}

/** The priority of task `i`: all eleven levels in turn, so priority queues do real work. */
export const priorityOf = (i: number): number => i % 11

/** Milliseconds on a monotonic clock shared by producer and consumer (same process). */
export const now = (): number => performance.now()

/** Tasks per second. */
export const perSecond = (count: number, elapsedMs: number): number => (count * 1000) / elapsedMs

/** The median of some numbers (mean of the middle two for an even count). */
export const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

/** The `q`-th quantile (0..1) of sorted values, nearest rank. */
export const quantile = (sorted: ReadonlyArray<number>, q: number): number =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!

const gcFunction: (() => void) | undefined = (() => {
  const exposed = (globalThis as { gc?: () => void }).gc
  if (exposed !== undefined) return exposed
  try {
    setFlagsFromString("--expose-gc")
    return runInNewContext("gc") as () => void
  } catch {
    return undefined
  }
})()

/** A full garbage collection, so one measurement's garbage is not collected during the next. */
export const collectGarbage: Effect.Effect<void> = Effect.sync(() => {
  gcFunction?.()
})

const mib = (bytes: number) => bytes / (1024 * 1024)

/**
 * Samples the process RSS every 100 ms (a sample costs ~0.3 ms on the reference VM) while `self` runs; adds `rssBeforeMiB` and `rssPeakMiB` to
 * its sample.
 */
export const withPeakRss = <E, R>(self: Effect.Effect<Sample, E, R>): Effect.Effect<Sample, E, R> =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const state = { before: process.memoryUsage.rss(), peak: 0 }
      state.peak = state.before
      const timer = setInterval(() => {
        const rss = process.memoryUsage.rss()
        if (rss > state.peak) state.peak = rss
      }, 100)
      return { state, timer }
    }),
    ({ state }) =>
      Effect.map(self, (sample) => {
        const rss = process.memoryUsage.rss()
        if (rss > state.peak) state.peak = rss
        return { ...sample, rssBeforeMiB: mib(state.before), rssPeakMiB: mib(state.peak) }
      }),
    ({ timer }) => Effect.sync(() => clearInterval(timer))
  )

/**
 * Called as each timed section starts and ends (outside of the timed span's figures): the
 * round-trip counter hooks in here to count only what the timed section sends.
 */
export const timedSection = {
  begin: (): void => {},
  end: (): void => {}
}

/** Times `f`, which handles `count` tasks. */
export const timePromise = async (count: number, f: () => Promise<unknown>): Promise<Sample> => {
  const stopwatch = startStopwatch()
  try {
    await f()
  } finally {
    timedSection.end()
  }
  return stopwatch.stop(count)
}

/**
 * The main thread's CPU time (user + system), µs, from `/proc/self/task/<pid>/stat` (in clock
 * ticks of 10 ms, Linux's `USER_HZ`); `undefined` where there is no `/proc`.
 */
const mainThreadCpuMicros = (): number | undefined => {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10_000
  } catch {
    return undefined
  }
}

/** Starts timing a section (wall clock, this process's CPU time and its main thread's); `stop` gives its sample. */
export const startStopwatch = () => {
  timedSection.begin()
  const main = mainThreadCpuMicros()
  const cpu = process.cpuUsage()
  const start = now()
  return {
    stop: (count: number): Sample => {
      const elapsedMs = now() - start
      const used = process.cpuUsage(cpu)
      const mainAfter = mainThreadCpuMicros()
      return {
        rate: perSecond(count, elapsedMs),
        elapsedMs,
        cpuUsPerTask: (used.user + used.system) / count,
        ...(main === undefined || mainAfter === undefined
          ? {}
          : { mainCpuUsPerTask: (mainAfter - main) / count })
      }
    }
  }
}

/** Runs `n` indexed promise tasks with `concurrency` in flight; the loop a promise peer uses. */
export const promisePool = async (
  n: number,
  concurrency: number,
  task: (i: number) => Promise<unknown>
): Promise<void> => {
  let next = 0
  const lane = async () => {
    while (next < n) await task(next++)
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, lane))
}

/** Waits for `promise`, but at most `ms` milliseconds; `false` when the time ran out. */
export const settleWithin = (promise: Promise<unknown>, ms: number): Promise<boolean> => {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms)
  })
  return Promise.race([promise.then(() => true), timeout]).finally(() => clearTimeout(timer))
}

/** A promise resolved from outside: the end of a drain or of a latency run. */
export const signal = () => {
  let resolve!: () => void
  const promise = new Promise<void>((r) => {
    resolve = r
  })
  return { promise, resolve }
}

/**
 * Push-to-start latencies at a steady rate: calls `push(i, sentAt)` every `1000 / rate` ms (never
 * waiting for a push to finish before the next is due), first for half a second of warm-up (not
 * counted), then for `durationSeconds`, while the subject's worker calls the handler given to
 * `onStart` as each task starts. Resolves once every task started (or 10 s after the last push).
 */
export const steadyLatency = async (options: {
  readonly rate: number
  readonly durationSeconds: number
  readonly push: (i: number, sentAt: number) => Promise<unknown>
  readonly onStart: (handler: (payload: Payload) => void) => void
}): Promise<Sample> => {
  const warmup = Math.round(options.rate / 2)
  const total = warmup + Math.round(options.rate * options.durationSeconds)
  const latencies: Array<number> = []
  let started = 0
  const done = signal()
  options.onStart((payload) => {
    if (payload.i >= warmup) latencies.push(now() - payload.sentAt)
    if (++started === total) done.resolve()
  })
  const interval = 1000 / options.rate
  const start = now()
  let measuredFrom = start
  const pushes: Array<Promise<unknown>> = []
  for (let i = 0; i < total; i++) {
    const due = start + i * interval
    const wait = due - now()
    if (wait > 1) await new Promise((r) => setTimeout(r, wait))
    if (i === warmup) measuredFrom = now()
    pushes.push(options.push(i, now()))
  }
  const offeredMs = now() - measuredFrom + interval
  await Promise.all(pushes)
  await settleWithin(done.promise, 10_000)
  const sorted = [...latencies].sort((a, b) => a - b)
  if (sorted.length === 0) return { observed: 0 }
  return {
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
    maxMs: sorted[sorted.length - 1],
    observed: sorted.length,
    offeredRate: perSecond(total - warmup, offeredMs)
  }
}

/**
 * Runs one measurement, either here or in a fresh child process (the default), so no
 * measurement inherits another's heap, connections, timers or RSS. The child is this same
 * program started with `--child`; it gets its `Job` and answers with an `Outcome` over IPC.
 *
 * @since 0.1.0
 */
import { fork } from "node:child_process"
import { writeFileSync } from "node:fs"
import { Session } from "node:inspector"
import { fileURLToPath } from "node:url"
import { Effect, Logger, LogLevel } from "effect"
import * as BareAmqp from "./BareAmqp.js"
import * as BeeQueue from "./BeeQueue.js"
import * as BullMq from "./BullMq.js"
import * as LuaFloor from "./LuaFloor.js"
import {
  type BenchError,
  collectGarbage,
  type Job,
  type NotAvailable,
  type Outcome,
  type Sample,
  timedSection
} from "./Measurement.js"
import * as Ours from "./Ours.js"

const measure = (job: Job): Effect.Effect<Sample, BenchError | NotAvailable> => {
  switch (job.subject) {
    case "memory":
    case "redis":
    case "rabbitmq":
      return Ours.run(job.subject, job)
    case "bullmq":
      return BullMq.run(job)
    case "bee-queue":
      return BeeQueue.run(job)
    case "lua":
      return LuaFloor.run(job)
    case "amqplib":
      return BareAmqp.run(job)
  }
}

const describe = (cause: unknown): string => {
  if (cause instanceof Error) return cause.message
  if (typeof cause === "object" && cause !== null && "message" in cause) return String(cause.message)
  return String(cause)
}

/**
 * Profiles the timed sections of what runs until `stop` (with the inspector, so start-up,
 * pre-pushing and clean-up stay out of the profile) and writes the profile to `file`.
 */
const profileTimedSections = (file: string) => {
  const session = new Session()
  session.connect()
  const hooks = { ...timedSection }
  let profiling = false
  session.post("Profiler.enable")
  session.post("Profiler.setSamplingInterval", { interval: 200 })
  timedSection.begin = () => {
    hooks.begin()
    if (!profiling) session.post("Profiler.start")
    profiling = true
  }
  timedSection.end = () => {
    hooks.end()
    if (!profiling) return
    profiling = false
    session.post("Profiler.stop", (error, result) => {
      if (error === null) writeFileSync(file, JSON.stringify(result.profile))
      session.disconnect()
    })
  }
}

/**
 * Runs one measurement in this process. Our library logs at Warning and above only (a worker's
 * per-task Info lines would otherwise be timed as console output).
 */
export const runHere = (job: Job): Promise<Outcome> => {
  if (job.profile !== undefined) profileTimedSections(job.profile)
  return collectGarbage.pipe(
    Effect.zipRight(measure(job)),
    Effect.map((sample): Outcome => ({ _tag: "Ok", sample })),
    Effect.catchTags({
      NotAvailable: (e) => Effect.succeed<Outcome>({ _tag: "NotAvailable", message: e.message }),
      BenchError: (e) =>
        Effect.succeed<Outcome>({
          _tag: "Failed",
          message: e.cause === undefined ? e.message : `${e.message}: ${describe(e.cause)}`
        })
    }),
    Effect.catchAllDefect((defect) => Effect.succeed<Outcome>({ _tag: "Failed", message: describe(defect) })),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )
}

const self = fileURLToPath(new URL("../bench.ts", import.meta.url))

/** Runs one measurement in a fresh child process, killed after `timeoutSeconds`. */
export const runInChild = (job: Job, timeoutSeconds: number): Promise<Outcome> =>
  new Promise((resolve) => {
    const execArgv = process.execArgv.includes("--expose-gc")
      ? process.execArgv
      : [...process.execArgv, "--expose-gc"]
    const child = fork(self, ["--child"], { execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"] })
    let outcome: Outcome | undefined
    const timer = setTimeout(() => {
      outcome ??= { _tag: "Failed", message: `timed out after ${timeoutSeconds} s` }
      child.kill("SIGKILL")
    }, timeoutSeconds * 1000)
    child.on("message", (message) => {
      outcome ??= message as Outcome
    })
    child.on("error", (error) => {
      outcome ??= { _tag: "Failed", message: `child process: ${error.message}` }
    })
    child.on("exit", (code, signal) => {
      clearTimeout(timer)
      resolve(
        outcome ?? { _tag: "Failed", message: `child process exited (${signal ?? code}) without a result` }
      )
    })
    child.send(job)
  })

const countResources = () => {
  const counts = new Map<string, number>()
  for (const name of process.getActiveResourcesInfo()) counts.set(name, (counts.get(name) ?? 0) + 1)
  return counts
}

/**
 * The child's side: take one job, run it, answer, exit. Handles still open 200 ms after the
 * measurement's clean-up, beyond those the child had before it, are reported as leaked.
 */
export const serveChild = (): void => {
  process.once("message", (job) => {
    const before = countResources()
    void runHere(job as Job).then((outcome) => {
      // After 200 ms, and once that timer itself is gone (setImmediate), count what is still open.
      setTimeout(
        () =>
          setImmediate(() => {
            const leaked: Array<string> = []
            for (const [name, count] of countResources()) {
              const extra = count - (before.get(name) ?? 0)
              if (extra > 0) leaked.push(`${extra} ${name}`)
            }
            const answer = outcome._tag === "Ok" && leaked.length > 0 ? { ...outcome, leaked } : outcome
            process.send!(answer, () => process.exit(0))
          }),
        200
      )
    })
  })
}

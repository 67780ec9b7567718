/**
 * The bench's command line.
 *
 * @since 0.1.0
 */
import { parseArgs } from "node:util"
import { allSubjects, type ScenarioKind, type Subject } from "./Measurement.js"

/** Every scenario kind, in the order they run. */
export const allKinds: ReadonlyArray<ScenarioKind> = ["push", "batch", "queue", "cycle", "worker", "latency"]

/** The parsed command line. */
export interface Options {
  readonly n: number
  readonly runs: number
  readonly concurrency: ReadonlyArray<number>
  readonly batch: number
  readonly subjects: ReadonlyArray<Subject>
  readonly kinds: ReadonlyArray<ScenarioKind>
  readonly rate: number
  readonly durationSeconds: number
  readonly latencyConcurrency: number
  readonly json: string | undefined
  readonly redisUrl: string
  readonly rabbitmqUrl: string
  /** Run every measurement in this process instead of a fresh child process each. */
  readonly inProcess: boolean
  /** Per measurement, seconds. */
  readonly timeoutSeconds: number
  /** Count Redis commands per task (INFO commandstats deltas) instead of timing. */
  readonly roundTrips: boolean
  /** Write a CPU profile of each measurement's timed section into this directory. */
  readonly profile: string | undefined
  readonly help: boolean
}

/** The usage text. */
export const usage = `Usage: npx tsx programs/bench.ts [options]

  --n <count>              tasks per throughput measurement (default 20000)
  --runs <count>           runs of each measurement; figures are medians (default 3)
  --concurrency <list>     producers / pullers / worker concurrency (default 1,16)
  --batch <size>           batch size of the batch push (default 100)
  --only <list>            subjects: ${allSubjects.join(",")} (default all)
  --scenarios <list>       ${allKinds.join(",")} (default all)
  --rate <per second>      latency: steady push rate (default 500)
  --duration <seconds>     latency: how long (default 5)
  --latency-concurrency <n> latency: worker concurrency (default 1)
  --json <file>            also write every sample, median and ratio as JSON
  --redis-url <url>        default redis://127.0.0.1:6379 (or REDIS_URL)
  --rabbitmq-url <url>     default amqp://guest:guest@127.0.0.1:5672 (or RABBITMQ_URL)
  --in-process             no child process per measurement (faster; memory figures less clean)
  --timeout <seconds>      per measurement (default 600)
  --round-trips            count Redis commands per task (MONITOR on a private redis-server) instead of timing
  --profile <dir>          write a CPU profile of each timed section to <dir>/<subject>-<scenario>-r<run>.cpuprofile
  --help
`

const list = (value: string | undefined) =>
  value === undefined
    ? undefined
    : value
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== "")

const positive = (name: string, value: string | undefined, fallback: number) => {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${value}`)
  return n
}

/** Parses the command line; throws with a readable message on a bad option. */
export const parse = (argv: ReadonlyArray<string>): Options => {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      n: { type: "string" },
      runs: { type: "string" },
      concurrency: { type: "string" },
      batch: { type: "string" },
      only: { type: "string" },
      scenarios: { type: "string" },
      rate: { type: "string" },
      duration: { type: "string" },
      "latency-concurrency": { type: "string" },
      json: { type: "string" },
      "redis-url": { type: "string" },
      "rabbitmq-url": { type: "string" },
      "in-process": { type: "boolean" },
      timeout: { type: "string" },
      "round-trips": { type: "boolean" },
      profile: { type: "string" },
      help: { type: "boolean" }
    },
    strict: true
  })
  const subjects = list(values.only) ?? [...allSubjects]
  for (const s of subjects) {
    if (!(allSubjects as ReadonlyArray<string>).includes(s)) {
      throw new Error(`--only: unknown subject ${s}; known: ${allSubjects.join(", ")}`)
    }
  }
  const kinds = list(values.scenarios) ?? [...allKinds]
  for (const k of kinds) {
    if (!(allKinds as ReadonlyArray<string>).includes(k)) {
      throw new Error(`--scenarios: unknown scenario ${k}; known: ${allKinds.join(", ")}`)
    }
  }
  const concurrency = (list(values.concurrency) ?? ["1", "16"]).map((c) =>
    Math.floor(positive("concurrency", c, 1))
  )
  return {
    n: Math.floor(positive("n", values.n, 20_000)),
    runs: Math.floor(positive("runs", values.runs, 3)),
    concurrency,
    batch: Math.floor(positive("batch", values.batch, 100)),
    subjects: allSubjects.filter((s) => subjects.includes(s)),
    kinds: allKinds.filter((k) => kinds.includes(k)),
    rate: positive("rate", values.rate, 500),
    durationSeconds: positive("duration", values.duration, 5),
    latencyConcurrency: Math.floor(positive("latency-concurrency", values["latency-concurrency"], 1)),
    json: values.json,
    redisUrl: values["redis-url"] ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
    rabbitmqUrl: values["rabbitmq-url"] ?? process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672",
    inProcess: values["in-process"] ?? false,
    timeoutSeconds: positive("timeout", values.timeout, 600),
    roundTrips: values["round-trips"] ?? false,
    profile: values.profile,
    help: values.help ?? false
  }
}

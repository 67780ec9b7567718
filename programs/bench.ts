/**
 * The benchmark (GitHub issue 6): throughput, latency and memory of our backends side by side
 * with BullMQ, bee-queue, a bare Lua lease pattern on ioredis (the Redis cost floor) and bare
 * amqplib (the RabbitMQ reference), on the same servers, in one run. Every figure is a median
 * over runs, and every ratio pairs runs made back to back: the machine is shared and noisy.
 *
 *   npx tsx programs/bench.ts                      # everything, N = 20000, 3 runs
 *   npx tsx programs/bench.ts --n 20000 --runs 3 --only redis,bullmq --json out.json
 *   npx tsx programs/bench.ts --round-trips --only redis,lua,bullmq,bee-queue
 *
 * See BENCHMARKS.md for what each scenario does and the results.
 */

import { mkdirSync, writeFileSync } from "node:fs"
import { connect as tcpConnect } from "node:net"
import { cpus } from "node:os"
import { resolve } from "node:path"
import { Effect } from "effect"
import * as BareAmqp from "./bench/BareAmqp.js"
import {
  type Job,
  type Outcome,
  type Scenario,
  type Settings,
  type Subject,
  scenarioName,
  supports
} from "./bench/Measurement.js"
import { type Options, parse, usage } from "./bench/Options.js"
import * as Probe from "./bench/RedisProbe.js"
import * as Report from "./bench/Report.js"
import * as RoundTrips from "./bench/RoundTrips.js"
import { runHere, runInChild, serveChild } from "./bench/Runner.js"

const needs: Record<Subject, "redis" | "rabbitmq" | undefined> = {
  memory: undefined,
  redis: "redis",
  rabbitmq: "rabbitmq",
  bullmq: "redis",
  "bee-queue": "redis",
  lua: "redis",
  amqplib: "rabbitmq"
}

const reachable = (url: string) =>
  new Promise<boolean>((resolve) => {
    const { hostname, port } = new URL(url)
    const socket = tcpConnect({
      host: hostname,
      port: Number(port || (url.startsWith("amqp") ? 5672 : 6379))
    })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(2_000, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

/** The scenarios to run, in order. */
const scenariosOf = (options: Options): Array<Scenario> =>
  options.kinds.flatMap((kind): Array<Scenario> => {
    switch (kind) {
      case "batch":
        return [{ kind, concurrency: options.batch }]
      case "latency":
        return [{ kind, concurrency: options.latencyConcurrency }]
      default:
        return options.concurrency.map((concurrency) => ({ kind, concurrency }))
    }
  })

const describeOutcome = (outcome: Outcome) => {
  switch (outcome._tag) {
    case "Ok": {
      const s = outcome.sample
      const figure =
        s.rate !== undefined
          ? `${Math.round(s.rate).toLocaleString("en-US")}/s`
          : s.p99Ms !== undefined
            ? `p50 ${s.p50Ms?.toFixed(2)} ms, p99 ${s.p99Ms.toFixed(2)} ms (${s.observed} tasks)`
            : "no figure"
      return outcome.leaked === undefined ? figure : `${figure} (left open: ${outcome.leaked.join(", ")})`
    }
    case "NotAvailable":
      return `not available: ${outcome.message}`
    case "Failed":
      return `FAILED: ${outcome.message}`
  }
}

/** Versions of the servers, for the report. */
const serverVersions = async (options: Options, up: { redis: boolean; rabbitmq: boolean }) => {
  const redis = up.redis
    ? await Effect.runPromise(
        Effect.scoped(
          Effect.flatMap(Probe.connect(options.redisUrl), (r) => Effect.promise(() => r.info("server")))
        ).pipe(
          Effect.map((info) => /^redis_version:(.+)$/m.exec(info)?.[1]?.trim() ?? "unknown"),
          Effect.orElseSucceed(() => "unknown")
        )
      )
    : "unreachable"
  const rabbitmq = up.rabbitmq
    ? await Effect.runPromise(
        Effect.scoped(
          Effect.map(BareAmqp.connect(options.rabbitmqUrl), (c) =>
            String(c.connection.serverProperties.version ?? "unknown")
          )
        ).pipe(Effect.orElseSucceed(() => "unknown"))
      )
    : "unreachable"
  return { redis, rabbitmq }
}

/** Deletes whatever is left with the run's id in its name; returns what it found. */
const sweep = async (options: Options, runId: string, up: { redis: boolean; rabbitmq: boolean }) => {
  const left: Array<string> = []
  if (up.redis) {
    const removed = await Effect.runPromise(
      Effect.scoped(
        Effect.flatMap(Probe.connect(options.redisUrl), (r) => Probe.deleteKeysContaining(r, runId))
      ).pipe(Effect.orElseSucceed(() => 0))
    )
    if (removed > 0) left.push(`${removed} Redis key(s)`)
  }
  if (up.rabbitmq) {
    const { execFileSync } = await import("node:child_process")
    let names: Array<string> = []
    try {
      names = execFileSync("rabbitmqctl", ["list_queues", "-q", "--no-table-headers", "name"], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
        timeout: 30_000
      })
        .split("\n")
        .map((s) => s.trim())
        .filter((name) => name.includes(runId))
    } catch {
      // rabbitmqctl is not here: the measurements deleted the queues they knew.
    }
    if (names.length > 0) {
      await Effect.runPromise(
        Effect.scoped(
          Effect.flatMap(BareAmqp.connect(options.rabbitmqUrl), (c) => BareAmqp.deleteQueues(c, names))
        ).pipe(Effect.ignore)
      )
      left.push(`${names.length} RabbitMQ queue(s): ${names.join(", ")}`)
    }
  }
  return left
}

const main = async (options: Options) => {
  const runId = `bench-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`
  const up = {
    redis: options.subjects.some((s) => needs[s] === "redis") && (await reachable(options.redisUrl)),
    rabbitmq: options.subjects.some((s) => needs[s] === "rabbitmq") && (await reachable(options.rabbitmqUrl))
  }
  const settings: Settings = {
    n: options.n,
    redisUrl: options.redisUrl,
    rabbitmqUrl: options.rabbitmqUrl,
    rate: options.rate,
    durationSeconds: options.durationSeconds
  }
  if (options.profile !== undefined) mkdirSync(options.profile, { recursive: true })
  const scenarios = scenariosOf(options)
  const results: Report.Results = new Map()
  const log = (line: string) => process.stderr.write(`${line}\n`)
  log(
    `bench ${runId}: N = ${options.n}, ${options.runs} run(s), subjects ${options.subjects.join(", ")}, ` +
      `${options.inProcess ? "in process" : "one child process per measurement"}`
  )

  for (let run = 0; run < options.runs; run++) {
    for (const scenario of scenarios) {
      const name = scenarioName(scenario)
      for (const subject of options.subjects) {
        if (!supports[subject].includes(scenario.kind)) continue
        const key = Report.cellKey(subject, name)
        const cell = results.get(key) ?? { subject, scenario: name, outcomes: [] }
        results.set(key, cell)
        const server = needs[subject]
        let outcome: Outcome
        if (cell.outcomes[0]?._tag === "NotAvailable") {
          outcome = cell.outcomes[0]
        } else if (server !== undefined && !up[server]) {
          outcome = {
            _tag: "Failed",
            message: `${server} is not reachable at ${new URL(server === "redis" ? options.redisUrl : options.rabbitmqUrl).host}`
          }
        } else {
          const job: Job = {
            subject,
            scenario,
            settings,
            queueName: `${runId}-${subject}-${name}-r${run + 1}`,
            ...(options.profile === undefined
              ? {}
              : { profile: resolve(options.profile, `${subject}-${name}-r${run + 1}.cpuprofile`) })
          }
          outcome = options.inProcess ? await runHere(job) : await runInChild(job, options.timeoutSeconds)
        }
        cell.outcomes.push(outcome)
        log(
          `[run ${run + 1}/${options.runs}] ${subject.padEnd(9)} ${name.padEnd(11)} ${describeOutcome(outcome)}`
        )
      }
    }
  }

  const left = await sweep(options, runId, up)
  const versions = await serverVersions(options, up)
  const latencyScenario = options.kinds.includes("latency")
    ? `latency.c${options.latencyConcurrency}`
    : undefined
  const throughputScenarios = scenarios.filter((s) => s.kind !== "latency").map(scenarioName)
  const machine = {
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? "unknown",
    node: process.version,
    redis: versions.redis,
    rabbitmq: versions.rabbitmq
  }
  const targets = Report.targets(results, latencyScenario ?? "latency.c1")
  const out = [
    `## Bench ${runId}`,
    "",
    `${machine.nproc} cores (${machine.cpu}), Node ${machine.node}, Redis ${machine.redis}, RabbitMQ ${machine.rabbitmq}; ` +
      `N = ${options.n}, ${options.runs} run(s), ${options.inProcess ? "in process" : "a fresh process per measurement"}.`,
    "",
    Report.render(results, options.subjects, throughputScenarios, latencyScenario),
    "",
    "### Targets of the issue",
    "",
    Report.renderTargets(targets),
    "",
    left.length === 0
      ? "Clean-up: nothing with the run's id was left on Redis or RabbitMQ."
      : `Clean-up: found and deleted after the run: ${left.join("; ")}.`
  ].join("\n")
  process.stdout.write(`${out}\n`)

  if (options.json !== undefined) {
    const cells = [...results.values()].map((cell) => ({
      ...cell,
      median: {
        rate: Report.medianOf(cell, "rate"),
        p50Ms: Report.medianOf(cell, "p50Ms"),
        p99Ms: Report.medianOf(cell, "p99Ms"),
        rssPeakMiB: Report.medianOf(cell, "rssPeakMiB"),
        redisBytesPerTask: Report.medianOf(cell, "redisBytesPerTask"),
        redisKeyBytesPerTask: Report.medianOf(cell, "redisKeyBytesPerTask")
      }
    }))
    const ratios = Report.comparisons(throughputScenarios).map((c) => ({
      ...c,
      ratio: Report.pairedRatio(
        results.get(Report.cellKey(c.ours, c.scenario)),
        results.get(Report.cellKey(c.peer, c.peerScenario))
      )
    }))
    const json = {
      runId,
      date: new Date().toISOString(),
      machine,
      options,
      cells,
      ratios: ratios.filter((r) => r.ratio !== undefined),
      targets,
      leftAfterRun: left
    }
    writeFileSync(options.json, `${JSON.stringify(json, null, 2)}\n`)
    log(`wrote ${options.json}`)
  }
}

if (process.argv.includes("--child")) {
  serveChild()
} else {
  let options: Options
  try {
    options = parse(process.argv.slice(2))
  } catch (error) {
    process.stderr.write(`${(error as Error).message}\n\n${usage}`)
    process.exit(2)
  }
  if (options.help) {
    process.stdout.write(usage)
  } else if (options.roundTrips) {
    RoundTrips.main(options).then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`${String(error)}\n`)
        process.exit(1)
      }
    )
  } else {
    main(options).then(
      () => process.exit(0),
      (error: unknown) => {
        process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`)
        process.exit(1)
      }
    )
  }
}

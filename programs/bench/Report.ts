/**
 * What the bench prints and writes: medians per subject and scenario, ratios of ours to each
 * peer, the issue's targets, memory figures.
 *
 * Ratios are paired: runs are interleaved (run r of every subject of a scenario back to back), so
 * the ratio is the median over runs of `ours_r / peer_r`, which cancels most of the drift of a
 * shared, noisy machine. The tables of absolute figures show plain medians.
 *
 * @since 0.1.0
 */
import { median, type Outcome, type Sample, type Subject } from "./Measurement.js"

/** Everything measured for one subject in one scenario. */
export interface Cell {
  readonly subject: Subject
  readonly scenario: string
  readonly outcomes: Array<Outcome>
}

/** The cells of a bench, by `subject|scenario`. */
export type Results = Map<string, Cell>

/** The key of a cell. */
export const cellKey = (subject: Subject, scenario: string): string => `${subject}|${scenario}`

/** The samples of the successful runs of a cell, in run order (`undefined` for a failed run). */
const samplesOf = (cell: Cell | undefined): Array<Sample | undefined> =>
  cell?.outcomes.map((o) => (o._tag === "Ok" ? o.sample : undefined)) ?? []

/** The median of one field over the successful runs of a cell. */
export const medianOf = (cell: Cell | undefined, field: keyof Sample): number | undefined => {
  const values = samplesOf(cell)
    .map((s) => s?.[field])
    .filter((v): v is number => typeof v === "number" && Number.isFinite(v))
  return values.length === 0 ? undefined : median(values)
}

/** Median over runs of `ours_r / peer_r` (rates); `undefined` without a single pair. */
export const pairedRatio = (ours: Cell | undefined, peer: Cell | undefined): number | undefined => {
  const a = samplesOf(ours)
  const b = samplesOf(peer)
  const ratios: Array<number> = []
  for (let r = 0; r < Math.min(a.length, b.length); r++) {
    const x = a[r]?.rate
    const y = b[r]?.rate
    if (x !== undefined && y !== undefined && y > 0) ratios.push(x / y)
  }
  return ratios.length === 0 ? undefined : median(ratios)
}

/** Why a cell has no figure: "n/a (reason)", "failed: ...", or `undefined` when it has one. */
const statusOf = (cell: Cell | undefined): string | undefined => {
  if (cell === undefined) return "—"
  if (cell.outcomes.some((o) => o._tag === "Ok")) return undefined
  const first = cell.outcomes[0]
  if (first === undefined) return "—"
  return first._tag === "NotAvailable" ? "not available" : "failed"
}

const thousands = (n: number) => Math.round(n).toLocaleString("en-US")

/** A rate cell: `12,345/s`, or why there is none. */
export const rateText = (cell: Cell | undefined): string => {
  const status = statusOf(cell)
  if (status !== undefined) return status
  const rate = medianOf(cell, "rate")
  return rate === undefined ? "—" : `${thousands(rate)}/s`
}

const ms = (n: number | undefined) => (n === undefined ? "—" : `${n.toFixed(2)} ms`)
const mib = (n: number | undefined) => (n === undefined ? "—" : `${n.toFixed(0)} MiB`)
const bytes = (n: number | undefined) => (n === undefined ? "—" : `${n.toFixed(0)} B`)
const ratioText = (r: number | undefined) => (r === undefined ? "—" : `${r.toFixed(2)}x`)

/** A Markdown table. */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`
  const rule = `|${widths.map((w, i) => (i === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`
  return [line(header), rule, ...rows.map(line)].join("\n")
}

/** A comparison of one of our cells with a peer's. */
export interface Comparison {
  readonly ours: Subject
  readonly scenario: string
  readonly peer: Subject
  readonly peerScenario: string
}

/**
 * Which peer figure each of ours is read against. Our worker drain is compared with the peers'
 * workers, and with the floor's pull+ack (a worker cannot beat the queue it sits on); on
 * RabbitMQ, both our drains are compared with the bare amqplib consumer.
 */
export const comparisons = (scenarios: ReadonlyArray<string>): Array<Comparison> => {
  const out: Array<Comparison> = []
  for (const scenario of scenarios) {
    const [kind, rest] = scenario.split(".") as [string, string]
    if (kind === "push" || kind === "batch") {
      for (const peer of ["bullmq", "bee-queue", "lua"] as const)
        out.push({ ours: "redis", scenario, peer, peerScenario: scenario })
      out.push({ ours: "rabbitmq", scenario, peer: "amqplib", peerScenario: scenario })
    } else if (kind === "worker") {
      for (const peer of ["bullmq", "bee-queue"] as const)
        out.push({ ours: "redis", scenario, peer, peerScenario: scenario })
      out.push({ ours: "redis", scenario, peer: "lua", peerScenario: `queue.${rest}` })
      out.push({ ours: "rabbitmq", scenario, peer: "amqplib", peerScenario: `queue.${rest}` })
    } else if (kind === "queue") {
      out.push({ ours: "redis", scenario, peer: "lua", peerScenario: scenario })
      out.push({ ours: "rabbitmq", scenario, peer: "amqplib", peerScenario: scenario })
    }
  }
  return out
}

/** One of the issue's targets. */
export interface Target {
  readonly label: string
  /** `met`, `not met`, or `not measured` (with why). */
  readonly verdict: string
  readonly measured: string
}

const peerNames: Record<string, string> = {
  bullmq: "BullMQ",
  "bee-queue": "bee-queue",
  lua: "Lua floor",
  amqplib: "bare amqplib"
}

/** The issue's targets, judged on the results. */
export const targets = (results: Results, latencyScenario: string): Array<Target> => {
  const get = (subject: Subject, scenario: string) => results.get(cellKey(subject, scenario))
  const ratioTarget = (
    label: string,
    scenario: string,
    peer: Subject,
    peerScenario: string,
    min: number
  ): Target => {
    const ours = get("redis", scenario)
    const r = pairedRatio(ours, get(peer, peerScenario))
    if (ours === undefined && get(peer, peerScenario) === undefined)
      return { label, verdict: "not run", measured: "" }
    if (r === undefined) {
      return {
        label,
        verdict: "not measured",
        measured: `ours ${rateText(ours)}, ${peerNames[peer]} ${rateText(get(peer, peerScenario))}`
      }
    }
    return { label, verdict: r >= min ? "met" : "not met", measured: `${ratioText(r)} (need ${min}x)` }
  }
  const rabbit = (label: string, scenario: string, peerScenario: string, min: number): Target => {
    const r = pairedRatio(get("rabbitmq", scenario), get("amqplib", peerScenario))
    if (get("rabbitmq", scenario) === undefined && get("amqplib", peerScenario) === undefined) {
      return { label, verdict: "not run", measured: "" }
    }
    if (r === undefined) {
      return {
        label,
        verdict: "not measured",
        measured: `ours ${rateText(get("rabbitmq", scenario))}, bare amqplib ${rateText(get("amqplib", peerScenario))}`
      }
    }
    return { label, verdict: r >= min ? "met" : "not met", measured: `${ratioText(r)} (need ${min}x)` }
  }
  const latency = get("redis", latencyScenario)
  const p99 = medianOf(latency, "p99Ms")
  const cycle = get("memory", "cycle.c1")
  const cycleRate = medianOf(cycle, "rate")
  return [
    ratioTarget("Redis worker drain, conc. 16 >= 2x BullMQ", "worker.c16", "bullmq", "worker.c16", 2),
    ratioTarget(
      "Redis worker drain, conc. 16 >= 1.3x bee-queue",
      "worker.c16",
      "bee-queue",
      "worker.c16",
      1.3
    ),
    ratioTarget("Redis worker drain, conc. 1 >= 1.5x BullMQ", "worker.c1", "bullmq", "worker.c1", 1.5),
    ratioTarget("Redis worker drain, conc. 1 >= 1.1x bee-queue", "worker.c1", "bee-queue", "worker.c1", 1.1),
    ratioTarget("Redis push, 16 producers >= 2x BullMQ", "push.c16", "bullmq", "push.c16", 2),
    ratioTarget("Redis push, batches of 100 >= bee-queue", "batch.100", "bee-queue", "batch.100", 1),
    ratioTarget("Redis pull+ack, 1 puller >= 75% of the Lua floor", "queue.c1", "lua", "queue.c1", 0.75),
    ratioTarget("Redis pull+ack, 16 pullers >= 75% of the Lua floor", "queue.c16", "lua", "queue.c16", 0.75),
    {
      label: "Redis p99 push-to-start < 3 ms at 500/s",
      verdict:
        latency === undefined ? "not run" : p99 === undefined ? "not measured" : p99 < 3 ? "met" : "not met",
      measured: p99 === undefined ? (statusOf(latency) ?? "—") : `p99 ${ms(p99)}`
    },
    rabbit("RabbitMQ push, batches of 100 >= 80% of bare amqplib", "batch.100", "batch.100", 0.8),
    rabbit("RabbitMQ worker drain, conc. 16 >= 80% of bare amqplib", "worker.c16", "queue.c16", 0.8),
    {
      label: "memory backend >= 100,000 push+pull+ack/s (1 fiber)",
      verdict:
        cycle === undefined
          ? "not run"
          : cycleRate === undefined
            ? "not measured"
            : cycleRate >= 100_000
              ? "met"
              : "not met",
      measured: cycleRate === undefined ? (statusOf(cycle) ?? "—") : `${thousands(cycleRate)}/s`
    }
  ]
}

/** The whole report, as Markdown. */
export const render = (
  results: Results,
  subjects: ReadonlyArray<Subject>,
  throughputScenarios: ReadonlyArray<string>,
  latencyScenario: string | undefined
): string => {
  const get = (subject: Subject, scenario: string) => results.get(cellKey(subject, scenario))
  const parts: Array<string> = []

  const rateScenarios = throughputScenarios.filter((s) => subjects.some((subject) => get(subject, s)))
  if (rateScenarios.length > 0) {
    parts.push("### Throughput (median tasks/s)")
    parts.push(
      table(
        ["scenario", ...subjects],
        rateScenarios.map((s) => [s, ...subjects.map((subject) => rateText(get(subject, s)))])
      )
    )
  }

  /** A table of one per-task CPU field (µs) by scenario and subject, under `title`, when any cell has it. */
  const cpuTable = (title: string, field: "cpuUsPerTask" | "mainCpuUsPerTask") => {
    if (
      !rateScenarios.some((s) => subjects.some((subject) => medianOf(get(subject, s), field) !== undefined))
    ) {
      return
    }
    parts.push(title)
    parts.push(
      table(
        ["scenario", ...subjects],
        rateScenarios.map((s) => [
          s,
          ...subjects.map((subject) => {
            const cell = get(subject, s)
            const status = statusOf(cell)
            if (status !== undefined) return status
            const cpu = medianOf(cell, field)
            return cpu === undefined ? "—" : `${cpu.toFixed(1)} µs`
          })
        ])
      )
    )
  }
  cpuTable("### CPU time of the benchmark process per task (median µs; excludes the servers)", "cpuUsPerTask")
  cpuTable(
    "### Of that, the main thread's (median µs per task; the rest is V8's compiler and GC threads; 10 ms resolution)",
    "mainCpuUsPerTask"
  )

  const pairs = comparisons(rateScenarios).filter(
    (c) => subjects.includes(c.ours) && subjects.includes(c.peer) && get(c.ours, c.scenario) !== undefined
  )
  if (pairs.length > 0) {
    const peers = [...new Set(pairs.map((c) => c.peer))]
    const rows = [...new Set(pairs.map((c) => `${c.ours} ${c.scenario}`))].map((row) => {
      const [ours, scenario] = row.split(" ") as [Subject, string]
      return [
        row,
        ...peers.map((peer) => {
          const c = pairs.find((p) => p.ours === ours && p.scenario === scenario && p.peer === peer)
          if (c === undefined) return ""
          const label = c.peerScenario === c.scenario ? "" : ` (${c.peerScenario})`
          return `${ratioText(pairedRatio(get(c.ours, c.scenario), get(c.peer, c.peerScenario)))}${label}`
        })
      ]
    })
    parts.push("### Ours / peer (median of paired per-run ratios)")
    parts.push(table(["ours, scenario", ...peers.map((p) => `vs ${peerNames[p]}`)], rows))
  }

  if (latencyScenario !== undefined) {
    const rows = subjects
      .map((subject) => [subject, get(subject, latencyScenario)] as const)
      .filter(([, cell]) => cell !== undefined)
      .map(([subject, cell]) => {
        const status = statusOf(cell)
        if (status !== undefined) return [subject, status, "", "", "", ""]
        const offered = medianOf(cell, "offeredRate")
        return [
          subject,
          ms(medianOf(cell, "p50Ms")),
          ms(medianOf(cell, "p99Ms")),
          ms(medianOf(cell, "maxMs")),
          offered === undefined ? "—" : `${thousands(offered)}/s`,
          String(medianOf(cell, "observed") ?? "—")
        ]
      })
    if (rows.length > 0) {
      parts.push(`### Push-to-start latency (${latencyScenario}; medians over runs)`)
      parts.push(table(["subject", "p50", "p99", "max", "offered", "tasks"], rows))
    }
  }

  const drainScenarios = rateScenarios.filter((s) => s.startsWith("worker.") || s.startsWith("queue."))
  const memoryRows: Array<Array<string>> = []
  for (const s of drainScenarios) {
    for (const subject of subjects) {
      const cell = get(subject, s)
      const peak = medianOf(cell, "rssPeakMiB")
      if (peak === undefined) continue
      memoryRows.push([`${subject} ${s}`, mib(medianOf(cell, "rssBeforeMiB")), mib(peak)])
    }
  }
  if (memoryRows.length > 0) {
    parts.push("### Process RSS while draining (fresh process per run; medians)")
    parts.push(table(["subject, scenario", "RSS before drain", "peak RSS during drain"], memoryRows))
  }

  const redisRows: Array<Array<string>> = []
  for (const s of rateScenarios.filter((x) => x.startsWith("batch."))) {
    for (const subject of subjects) {
      const cell = get(subject, s)
      const delta = medianOf(cell, "redisBytesPerTask")
      if (delta === undefined) continue
      redisRows.push([subject, bytes(delta), bytes(medianOf(cell, "redisKeyBytesPerTask"))])
    }
  }
  if (redisRows.length > 0) {
    parts.push("### Redis memory per pending task (after the batch push; medians)")
    parts.push(
      table(["subject", "INFO used_memory delta / N", "sum of MEMORY USAGE of its keys / N"], redisRows)
    )
  }

  const problems: Array<string> = []
  for (const cell of results.values()) {
    cell.outcomes.forEach((o, r) => {
      if (o._tag === "Failed")
        problems.push(`- ${cell.subject} ${cell.scenario} run ${r + 1}: failed: ${o.message}`)
      if (o._tag === "Ok" && o.leaked !== undefined)
        problems.push(`- ${cell.subject} ${cell.scenario} run ${r + 1}: left open: ${o.leaked.join(", ")}`)
    })
    const na = cell.outcomes.find((o) => o._tag === "NotAvailable")
    if (na !== undefined && na._tag === "NotAvailable")
      problems.push(`- ${cell.subject} ${cell.scenario}: ${na.message}`)
  }
  if (problems.length > 0) {
    parts.push("### Not available, failures, leaks")
    parts.push(problems.join("\n"))
  }
  return parts.join("\n\n")
}

/** The targets as a Markdown table. */
export const renderTargets = (list: ReadonlyArray<Target>): string =>
  table(
    ["target", "measured", "verdict"],
    list.map((t) => [t.label, t.measured, t.verdict])
  )

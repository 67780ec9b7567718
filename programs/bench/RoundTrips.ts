/**
 * `--round-trips`: where the Redis time goes, counted instead of timed. Each Redis subject runs
 * its push, batch, pull+ack and worker scenarios against a private `redis-server` started for the
 * purpose (so nobody else's commands are counted), while `MONITOR` records every command Redis
 * executes, with its source: a client connection (a request that crossed the network) or `lua`
 * (a command run inside a script). Only commands Redis executed inside the timed section are
 * counted (by server timestamp), so connection set-up, pre-pushing and clean-up are left out.
 * Socket writes of this process to that Redis during the section are counted too: a pipeline of
 * several commands is one write, so writes per task is the client's side of the round trips.
 * Each scenario first runs once without MONITOR (which costs Redis CPU) to read the CPU time
 * redis-server spent in the timed section (`/proc/<pid>/stat`, 10 ms ticks).
 *
 * @since 0.1.0
 */
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { createServer, Socket } from "node:net"
import { Redis } from "ioredis"
import { type Job, type Scenario, type Subject, scenarioName, supports, timedSection } from "./Measurement.js"
import type { Options } from "./Options.js"
import { table } from "./Report.js"
import { runHere } from "./Runner.js"

const redisSubjects: ReadonlyArray<Subject> = ["redis", "lua", "bullmq", "bee-queue"]

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

/** Starts a throw-away redis-server on a free port; `stop` kills it. */
const privateRedis = async () => {
  const port = await freePort()
  const server = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: "ignore" }
  )
  const exited = new Promise<void>((resolve) => server.once("exit", () => resolve()))
  const url = `redis://127.0.0.1:${port}`
  for (let attempt = 0; ; attempt++) {
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    probe.on("error", () => {})
    try {
      await probe.connect()
      await probe.ping()
      probe.disconnect()
      break
    } catch (error) {
      probe.disconnect()
      if (attempt > 50) throw new Error(`redis-server on port ${port} did not start: ${String(error)}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  return {
    url,
    port,
    pid: server.pid!,
    stop: async () => {
      server.kill("SIGTERM")
      await exited
    }
  }
}

interface Executed {
  readonly time: number
  readonly command: string
  readonly fromLua: boolean
}

/** Counts, per task, what one scenario of one subject made Redis do. */
interface Count {
  readonly subject: Subject
  readonly scenario: string
  readonly status: string
  readonly clientCommands: number
  readonly luaCommands: number
  readonly writes: number
  /** CPU time of redis-server per task (a second run, without MONITOR), µs. */
  readonly serverCpuUs: number | undefined
  readonly breakdown: string
  readonly luaBreakdown: string
}

const wallClockMs = () => performance.timeOrigin + performance.now()

/** CPU time (user + system) a process has used, µs, from `/proc` (Linux; clock ticks of 10 ms). */
const processCpuUs = (pid: number): number | undefined => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10_000
  } catch {
    return undefined
  }
}

const breakdownOf = (events: ReadonlyArray<Executed>, n: number, top: number) => {
  const perCommand = new Map<string, number>()
  for (const e of events) perCommand.set(e.command, (perCommand.get(e.command) ?? 0) + 1)
  return [...perCommand]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([command, calls]) => `${command} ${(calls / n).toFixed(2)}`)
    .join(", ")
}

/** Runs the round-trip count and prints its table. */
export const main = async (options: Options): Promise<void> => {
  const n = Math.min(options.n, 5_000)
  const subjects = options.subjects.filter((s) => redisSubjects.includes(s))
  const kinds = options.kinds.filter((k) => k === "push" || k === "batch" || k === "queue" || k === "worker")
  const redis = await privateRedis()
  process.stderr.write(`round trips: private redis-server at ${redis.url}, N = ${n}\n`)
  let executed: Array<Executed> = []
  const startMonitor = async () => {
    const client = new Redis(redis.url)
    client.on("error", () => {})
    const monitor = await client.monitor()
    monitor.on("monitor", (time: string, args: Array<string>, source: string) => {
      executed.push({
        time: Number(time) * 1000,
        command: String(args[0]).toLowerCase(),
        fromLua: source === "lua"
      })
    })
    return () => {
      monitor.disconnect()
      client.disconnect()
    }
  }
  let serverCpu = { begin: 0 as number | undefined, end: 0 as number | undefined }
  let open = false
  let writes = 0
  let window = { begin: 0, end: 0 }
  const originalWrite = Socket.prototype.write
  Socket.prototype.write = function (this: Socket, ...args: Array<unknown>) {
    if (open && this.remotePort === redis.port) writes++
    return (originalWrite as (...a: Array<unknown>) => boolean).apply(this, args)
  } as typeof Socket.prototype.write
  timedSection.begin = () => {
    writes = 0
    open = true
    window = { begin: wallClockMs(), end: Number.POSITIVE_INFINITY }
    serverCpu = { begin: processCpuUs(redis.pid), end: undefined }
  }
  timedSection.end = () => {
    open = false
    window = { ...window, end: wallClockMs() }
    serverCpu = { ...serverCpu, end: processCpuUs(redis.pid) }
  }

  const counts: Array<Count> = []
  try {
    const scenarios: Array<Scenario> = kinds.flatMap(
      (kind): Array<Scenario> =>
        kind === "batch"
          ? [{ kind, concurrency: options.batch }]
          : options.concurrency.map((concurrency) => ({ kind, concurrency }))
    )
    for (const scenario of scenarios) {
      for (const subject of subjects) {
        if (!supports[subject].includes(scenario.kind)) continue
        const name = scenarioName(scenario)
        const job: Job = {
          subject,
          scenario,
          queueName: `roundtrips-${Date.now().toString(36)}-${subject}-${name}`,
          settings: {
            n,
            redisUrl: redis.url,
            rabbitmqUrl: options.rabbitmqUrl,
            rate: options.rate,
            durationSeconds: options.durationSeconds
          }
        }
        // First without MONITOR (which costs Redis CPU), for the server's CPU time; then with it.
        await runHere({ ...job, queueName: `${job.queueName}-cpu` })
        const { begin, end } = serverCpu
        const serverCpuUs = begin === undefined || end === undefined ? undefined : (end - begin) / n
        executed = []
        const stopMonitor = await startMonitor()
        const outcome = await runHere(job)
        await new Promise((r) => setTimeout(r, 300))
        stopMonitor()
        const inWindow = executed.filter(
          (e) => e.time >= window.begin && e.time <= window.end && e.command !== "monitor"
        )
        const client = inWindow.filter((e) => !e.fromLua).length
        const count: Count = {
          subject,
          scenario: name,
          status: outcome._tag === "Ok" ? "ok" : outcome._tag === "NotAvailable" ? "not available" : "failed",
          clientCommands: client / n,
          luaCommands: (inWindow.length - client) / n,
          writes: writes / n,
          serverCpuUs,
          breakdown: breakdownOf(
            inWindow.filter((e) => !e.fromLua),
            n,
            5
          ),
          luaBreakdown: breakdownOf(
            inWindow.filter((e) => e.fromLua),
            n,
            12
          )
        }
        counts.push(count)
        process.stderr.write(
          `${subject.padEnd(9)} ${name.padEnd(11)} ${
            outcome._tag === "Ok"
              ? `${count.clientCommands.toFixed(2)} commands/task (${count.breakdown}), ${count.luaCommands.toFixed(2)} inside Lua, ${count.writes.toFixed(2)} socket writes, redis-server ${count.serverCpuUs?.toFixed(0) ?? "?"} µs CPU`
              : outcome.message
          }\n`
        )
      }
    }
  } finally {
    Socket.prototype.write = originalWrite
    await redis.stop()
  }
  const lua = counts.filter((c) => c.status === "ok" && c.luaBreakdown !== "")
  process.stdout.write(
    `### Redis work per task (private redis-server, MONITOR; N = ${n})\n\n${table(
      [
        "subject, scenario",
        "client commands",
        "which (per task)",
        "commands inside Lua",
        "socket writes",
        "redis-server CPU"
      ],
      counts.map((c) =>
        c.status === "ok"
          ? [
              `${c.subject} ${c.scenario}`,
              c.clientCommands.toFixed(2),
              c.breakdown,
              c.luaCommands.toFixed(2),
              c.writes.toFixed(2),
              c.serverCpuUs === undefined ? "—" : `${c.serverCpuUs.toFixed(0)} µs`
            ]
          : [`${c.subject} ${c.scenario}`, c.status, "", "", "", ""]
      )
    )}\n\n### Commands run inside Lua scripts, per task\n\n${table(
      ["subject, scenario", "commands inside Lua (per task)"],
      lua.map((c) => [`${c.subject} ${c.scenario}`, c.luaBreakdown])
    )}\n`
  )
}

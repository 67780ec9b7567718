/**
 * Worker processes (`programs/worker.ts` with the sleepy test pipeline of
 * `test/fixtures/sleepy-worker.ts`) on real servers, with real signals: graceful shutdown,
 * shutdown deadline, kill -9, a paused process past its lease, retries to a dead letter, and three
 * processes sharing a queue. Records live on Redis (TASK_STORE=redis) for both queue backends, so
 * the test process sees what the workers recorded.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { expect, it } from "@effect/vitest"
import { Effect, Layer, ManagedRuntime, Option } from "effect"
import { Redis } from "ioredis"
import { QueueManager } from "../src/QueueManager.js"
import type { TaskRecord } from "../src/Task.js"
import { TaskStore } from "../src/TaskStore.js"
import { uniqueQueueName } from "./conformance.js"
import { cleanup as cleanupRabbitMq } from "./fixtures/rabbitmq.js"
import { describeWithServer, rabbitmqUrl, redisUrl } from "./services.js"

const root = fileURLToPath(new URL("..", import.meta.url))
const fixture = "test/fixtures/sleepy-worker.ts"

/** One logfmt line as key -> value. */
type LogLine = Record<string, string>

const parseLine = (line: string): LogLine => {
  const out: LogLine = {}
  for (const match of line.matchAll(/(\w+)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
    const raw = match[2]!
    out[match[1]!] = raw.startsWith('"') ? (JSON.parse(raw) as string) : raw
  }
  return out
}

interface WorkerProcess {
  readonly name: string
  readonly logFile: string
  readonly child: ChildProcess
  readonly pid: number
  readonly exited: Promise<{ readonly code: number | null; readonly signal: NodeJS.Signals | null }>
  /** The lines of its LOG_FILE so far. */
  readonly lines: () => ReadonlyArray<LogLine>
  readonly stderr: () => string
}

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** Polls `check` every `interval` ms until it holds, failing with `what` after `timeout` ms. */
const waitFor = async (
  what: string,
  check: () => boolean | Promise<boolean>,
  timeout = 20_000,
  interval = 50
) => {
  const deadline = Date.now() + timeout
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(interval)
  }
}

const sum = (values: ReadonlyArray<number>) => values.reduce((a, b) => a + b, 0)

/** How many "task completed" lines the worker logged, counted without parsing (cheap enough to poll). */
const countCompleted = (worker: WorkerProcess) =>
  existsSync(worker.logFile)
    ? readFileSync(worker.logFile, "utf8").split('message="task completed"').length - 1
    : 0

const messages = (worker: WorkerProcess, message: string, taskId?: string) =>
  worker
    .lines()
    .filter((line) => line.message === message && (taskId === undefined || line.taskId === taskId))

interface Backend {
  readonly name: "redis" | "rabbitmq"
  readonly env: Record<string, string>
  readonly cleanup: (queueName: string) => Promise<void>
}

const redisCleanup = async (queueName: string) => {
  const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
  try {
    const keys = await client.keys(`{${queueName}}:*`)
    if (keys.length > 0) await client.del(...keys)
  } finally {
    await client.quit()
  }
}

const backends: Record<Backend["name"], Backend> = {
  redis: {
    name: "redis",
    env: { QUEUE_BACKEND: "redis", REDIS_URL: redisUrl },
    cleanup: redisCleanup
  },
  rabbitmq: {
    name: "rabbitmq",
    env: { QUEUE_BACKEND: "rabbitmq", RABBITMQ_URL: rabbitmqUrl, TASK_STORE: "redis", REDIS_URL: redisUrl },
    cleanup: async (queueName) => {
      await Effect.runPromise(cleanupRabbitMq(queueName))
      await redisCleanup(queueName)
    }
  }
}

/** A queue of its own, worker processes on it, and a producer in this process; all cleaned up after. */
const withQueue = async (
  backend: Backend,
  test: (ctx: {
    readonly queueName: string
    readonly spawnWorker: (name: string, env?: Record<string, string>) => Promise<WorkerProcess>
    readonly push: (tasks: ReadonlyArray<{ readonly id: string; readonly data: unknown }>) => Promise<void>
    readonly record: (id: string) => Promise<Option.Option<TaskRecord>>
    readonly status: (id: string) => Promise<string | undefined>
    readonly run: <A, E>(effect: Effect.Effect<A, E, QueueManager | TaskStore>) => Promise<A>
  }) => Promise<void>
) => {
  const queueName = uniqueQueueName(`proc-${backend.name}`)
  const logs = mkdtempSync(join(tmpdir(), "worker-logs-"))
  const runtime = ManagedRuntime.make(
    Layer.mergeAll(
      QueueManager.layer({ backend: backend.name, queueName, redisUrl, rabbitmqUrl }),
      TaskStore.layer({ backend: "redis", queueName, redisUrl })
    )
  )
  const workers: Array<WorkerProcess> = []
  const spawnWorker = async (name: string, env: Record<string, string> = {}) => {
    const logFile = join(logs, `${name}.log`)
    const child = spawn(process.execPath, ["--import", "tsx", fixture], {
      cwd: root,
      env: { ...process.env, ...backend.env, QUEUE_NAME: queueName, LOG_FILE: logFile, ...env },
      stdio: ["ignore", "ignore", "pipe"]
    })
    let stderr = ""
    child.stderr!.on("data", (chunk) => {
      stderr += String(chunk)
    })
    const worker: WorkerProcess = {
      name,
      logFile,
      child,
      pid: child.pid!,
      exited: new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal }))),
      lines: () =>
        existsSync(logFile)
          ? readFileSync(logFile, "utf8")
              .split("\n")
              .filter((line) => line.length > 0)
              .map(parseLine)
          : [],
      stderr: () => stderr
    }
    workers.push(worker)
    await waitFor(
      `${name} to start (stderr: ${stderr})`,
      () => messages(worker, "worker started").length > 0,
      30_000
    )
    return worker
  }
  const run = <A, E>(effect: Effect.Effect<A, E, QueueManager | TaskStore>) => runtime.runPromise(effect)
  const record = (id: string) => run(Effect.flatMap(TaskStore, (store) => store.get(id)))
  try {
    await test({
      queueName,
      spawnWorker,
      push: (tasks) =>
        run(
          Effect.gen(function* () {
            const queue = yield* QueueManager
            const store = yield* TaskStore
            yield* Effect.forEach(tasks, (task) => store.create(task.id, 5), {
              concurrency: 50,
              discard: true
            })
            for (let i = 0; i < tasks.length; i += 500) {
              const accepted = yield* queue.pushBatch(
                tasks.slice(i, i + 500).map((task) => ({ taskId: task.id, data: task.data }))
              )
              expect(accepted.every((ok) => ok)).toBe(true)
            }
          })
        ),
      record,
      status: async (id) => Option.getOrUndefined(Option.map(await record(id), (r) => r.status)),
      run
    })
  } finally {
    for (const worker of workers) {
      if (worker.child.exitCode === null && worker.child.signalCode === null) {
        worker.child.kill("SIGCONT")
        worker.child.kill("SIGKILL")
      }
      await worker.exited
    }
    await runtime.dispose()
    await backend.cleanup(queueName)
    rmSync(logs, { recursive: true, force: true })
  }
}

/** Sends `signal` and waits for the exit; returns it with how long it took (ms). */
const stop = async (worker: WorkerProcess, signal: NodeJS.Signals = "SIGTERM") => {
  const started = Date.now()
  worker.child.kill(signal)
  const exit = await worker.exited
  return { ...exit, millis: Date.now() - started }
}

const suite = (backend: Backend) => {
  it(
    "SIGTERM while tasks run: they finish, nothing new starts, exit 0, the rest stays queued",
    () =>
      withQueue(backend, async ({ push, run, spawnWorker, status }) => {
        const worker = await spawnWorker("w", { CONCURRENCY: "2" })
        const ids = Array.from({ length: 6 }, (_, i) => `graceful-${i}`)
        await push(ids.map((id) => ({ id, data: { ms: 2_000 } })))
        await waitFor("two tasks running", async () => (await status(ids[1]!)) === "PROCESSING")
        expect(await status(ids[0]!)).toBe("PROCESSING")
        const exit = await stop(worker)
        expect(exit).toMatchObject({ code: 0, signal: null })
        expect(exit.millis).toBeLessThan(10_000)
        const statuses = await Promise.all(ids.map(status))
        expect(statuses).toEqual(["COMPLETED", "COMPLETED", "PENDING", "PENDING", "PENDING", "PENDING"])
        expect(messages(worker, "task running").map((line) => line.taskId)).toEqual([ids[0], ids[1]])
        expect(messages(worker, "worker stopped")).toHaveLength(1)
        expect(await run(Effect.flatMap(QueueManager, (queue) => queue.length))).toBe(4)
      }),
    60_000
  )

  it(
    "SIGTERM with a task longer than MAX_SHUTDOWN_WAIT: exit soon after the deadline, FAILED 'shutdown timeout', dead letter kept",
    () =>
      withQueue(backend, async ({ push, record, run, spawnWorker, status }) => {
        const worker = await spawnWorker("w", { MAX_SHUTDOWN_WAIT: "1" })
        await push([{ id: "endless", data: { ms: 120_000 } }])
        await waitFor("the task to run", async () => (await status("endless")) === "PROCESSING")
        const exit = await stop(worker)
        expect(exit).toMatchObject({ code: 0, signal: null })
        expect(exit.millis).toBeGreaterThanOrEqual(1_000)
        expect(exit.millis).toBeLessThan(6_000)
        expect(Option.getOrThrow(await record("endless"))).toMatchObject({
          status: "FAILED",
          error: "shutdown timeout",
          attempts: 1
        })
        const dead = await run(Effect.flatMap(QueueManager, (queue) => queue.deadLetters()))
        expect(dead.map((letter) => [letter.taskId, letter.error])).toEqual([["endless", "shutdown timeout"]])
      }),
    60_000
  )

  it(
    "kill -9 mid-task: another worker completes it as attempt 2",
    () =>
      withQueue(backend, async ({ push, record, spawnWorker, status }) => {
        const env = { LEASE_DURATION: "2 seconds" }
        const first = await spawnWorker("first", env)
        await push([{ id: "victim", data: { ms: 1_500 } }])
        await waitFor("the task to run", async () => (await status("victim")) === "PROCESSING")
        expect(await stop(first, "SIGKILL")).toMatchObject({ signal: "SIGKILL" })
        const second = await spawnWorker("second", env)
        await waitFor("the task to complete", async () => (await status("victim")) === "COMPLETED", 30_000)
        expect(Option.getOrThrow(await record("victim"))).toMatchObject({
          attempts: 2,
          result: { pid: second.pid }
        })
        expect(messages(second, "task running", "victim").map((line) => line.attempt)).toEqual(["2"])
        expect(await stop(second)).toMatchObject({ code: 0 })
      }),
    60_000
  )

  it(
    "a task whose pipeline always fails: exactly MAX_ATTEMPTS runs, then FAILED and dead-lettered, while others complete",
    () =>
      withQueue(backend, async ({ push, record, run, spawnWorker, status }) => {
        const worker = await spawnWorker("w", { MAX_ATTEMPTS: "3", CONCURRENCY: "2" })
        const good = Array.from({ length: 5 }, (_, i) => `good-${i}`)
        await push([
          { id: "doomed", data: { ms: 20, fail: true } },
          ...good.map((id) => ({ id, data: { ms: 20 } }))
        ])
        await waitFor("the doomed task to fail", async () => (await status("doomed")) === "FAILED", 30_000)
        for (const id of good) expect(await status(id)).toBe("COMPLETED")
        expect(Option.getOrThrow(await record("doomed"))).toMatchObject({
          attempts: 3,
          error: "Told: told to fail"
        })
        const dead = await run(Effect.flatMap(QueueManager, (queue) => queue.deadLetters()))
        expect(dead.map((letter) => [letter.taskId, letter.error])).toEqual([
          ["doomed", "Told: told to fail"]
        ])
        await sleep(1_500)
        expect(messages(worker, "task running", "doomed").map((line) => line.attempt)).toEqual([
          "1",
          "2",
          "3"
        ])
        expect(await stop(worker)).toMatchObject({ code: 0 })
      }),
    60_000
  )

  it(
    "three worker processes drain 3,000 tasks: every task completed exactly once, none lost",
    () =>
      withQueue(backend, async ({ push, record, run, spawnWorker }) => {
        const workers = await Promise.all(
          ["a", "b", "c"].map((name) => spawnWorker(name, { CONCURRENCY: "16" }))
        )
        const ids = Array.from({ length: 3_000 }, (_, i) => `bulk-${i}`)
        await push(ids.map((id) => ({ id, data: { ms: 0 } })))
        const completed = () => workers.flatMap((worker) => messages(worker, "task completed"))
        await waitFor("3,000 completions", () => sum(workers.map(countCompleted)) >= 3_000, 45_000, 250)
        const exits = await Promise.all(workers.map((worker) => stop(worker)))
        expect(exits.map((exit) => exit.code)).toEqual([0, 0, 0])
        const runs = new Map<string, number>()
        for (const line of workers.flatMap((worker) => messages(worker, "task running"))) {
          runs.set(line.taskId!, (runs.get(line.taskId!) ?? 0) + 1)
        }
        expect(runs.size).toBe(3_000)
        expect([...runs.values()].every((count) => count === 1)).toBe(true)
        expect(completed()).toHaveLength(3_000)
        for (const worker of workers) expect(messages(worker, "task completed").length).toBeGreaterThan(0)
        const records = await Promise.all(ids.map(record))
        expect(
          records.filter((r) => Option.isSome(r) && r.value.status === "COMPLETED" && r.value.attempts === 1)
        ).toHaveLength(3_000)
        expect(await run(Effect.flatMap(QueueManager, (queue) => queue.length))).toBe(0)
      }),
    60_000
  )
}

await describeWithServer("Redis", redisUrl, "worker processes on Redis", () => {
  suite(backends.redis)

  it(
    "(Redis only: RabbitMQ has no lease expiry) SIGSTOP past the lease, another worker takes over, SIGCONT: exactly one COMPLETED outcome",
    () =>
      withQueue(backends.redis, async ({ push, record, spawnWorker, status }) => {
        const env = { LEASE_DURATION: "2 seconds" }
        const paused = await spawnWorker("paused", env)
        await push([{ id: "contested", data: { ms: 4_000 } }])
        await waitFor("the task to run", async () => (await status("contested")) === "PROCESSING")
        paused.child.kill("SIGSTOP")
        const taker = await spawnWorker("taker", env)
        await waitFor("the other worker to take it over", async () =>
          Option.match(await record("contested"), {
            onNone: () => false,
            onSome: (r) => r.status === "PROCESSING" && r.attempts === 2
          })
        )
        paused.child.kill("SIGCONT")
        await waitFor("the task to complete", async () => (await status("contested")) === "COMPLETED", 30_000)
        await waitFor("the paused worker's late result to be discarded", () =>
          paused.lines().some((line) => line.message?.includes("discarded") === true)
        )
        expect(Option.getOrThrow(await record("contested"))).toMatchObject({
          attempts: 2,
          result: { pid: taker.pid }
        })
        await waitFor("the other worker to log the completion", () => countCompleted(taker) === 1)
        expect(messages(taker, "task completed", "contested")).toHaveLength(1)
        expect(messages(paused, "task completed")).toHaveLength(0)
        const exits = await Promise.all([stop(paused), stop(taker)])
        expect(exits.map((exit) => exit.code)).toEqual([0, 0])
      }),
    60_000
  )
})

await describeWithServer("RabbitMQ", rabbitmqUrl, "worker processes on RabbitMQ (records on Redis)", () => {
  suite(backends.rabbitmq)
})

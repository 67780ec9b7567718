/**
 * The operations CLI, spawned as a user runs it (`tsx programs/cli.ts ...`) against a Redis
 * queue of its own, with the queue checked through the library after each command.
 */
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { expect, it } from "@effect/vitest"
import { Duration, Effect, Layer, Option } from "effect"
import { Redis } from "ioredis"
import * as RedisQueue from "../layers/RedisQueue.js"
import { submitTask } from "../programs/server.js"
import { QueueManager } from "../src/QueueManager.js"
import { TaskStore } from "../src/TaskStore.js"
import { uniqueQueueName } from "./conformance.js"
import { describeWithServer, redisUrl } from "./services.js"

const root = fileURLToPath(new URL("..", import.meta.url))
const tsx = fileURLToPath(new URL("../node_modules/.bin/tsx", import.meta.url))

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Runs the CLI with `args` on the queue `queueName` (Redis unless `env` says otherwise). */
const cli = (queueName: string, args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.async<Run>((resume) => {
    const child = execFile(
      tsx,
      ["programs/cli.ts", ...args],
      {
        cwd: root,
        timeout: 90_000,
        env: { ...process.env, QUEUE_BACKEND: "redis", REDIS_URL: redisUrl, QUEUE_NAME: queueName, ...env }
      },
      (error, stdout, stderr) =>
        resume(
          Effect.succeed({
            code: error === null ? 0 : typeof error.code === "number" ? error.code : -1,
            stdout,
            stderr
          })
        )
    )
    return Effect.sync(() => child.kill())
  })

/** Deletes every key of the queue (they all start with its hash tag). */
const cleanup = (queueName: string) =>
  Effect.promise(async () => {
    const client = new Redis(redisUrl, { maxRetriesPerRequest: 1 })
    client.on("error", () => {})
    try {
      const found: Array<string> = []
      let cursor = "0"
      do {
        const [next, batch] = await client.scan(cursor, "MATCH", `{${queueName}}:*`, "COUNT", 1000)
        cursor = next
        found.push(...batch)
      } while (cursor !== "0")
      if (found.length > 0) await client.del(...found)
    } finally {
      client.disconnect()
    }
  })

/** Runs `f` with a fresh Redis queue name and the library's view of that queue and its store. */
const withQueue = <A, E>(f: (queueName: string) => Effect.Effect<A, E, QueueManager | TaskStore>) => {
  const queueName = uniqueQueueName("cli")
  return f(queueName).pipe(
    Effect.provide(
      Layer.merge(
        // A task the test holds stays in flight however slowly the CLI processes start.
        RedisQueue.layer({ queueName, redisUrl, leaseDuration: "10 minutes" }),
        TaskStore.layer({ backend: "redis", queueName, redisUrl })
      )
    ),
    Effect.ensuring(cleanup(queueName))
  )
}

const stats = Effect.flatMap(QueueManager, (queue) => queue.stats)

/** Each run of the CLI starts a Node process that compiles TypeScript: give tests room. */
const timeout = 240_000

it.live(
  "--help lists every command and says why the memory backend is refused",
  () =>
    Effect.gen(function* () {
      const help = yield* cli("unused", ["--help"])
      expect(help.code).toBe(0)
      for (const usage of [
        "length",
        "stats",
        "clear",
        "dead list [--limit integer]",
        "dead retry <task_id>",
        "push [(-p, --priority integer)] <task_id> <json-data>"
      ]) {
        expect(help.stdout).toContain(usage)
      }
      expect(help.stdout).toMatch(/memory backend is refused/)
    }),
  timeout
)

it.live(
  "refuses the memory backend with a clear message",
  () =>
    Effect.gen(function* () {
      const run = yield* cli("unused", ["length"], { QUEUE_BACKEND: "memory" })
      expect(run.code).toBe(1)
      expect(run.stdout).toBe("")
      expect(run.stderr).toMatch(/^error: QUEUE_BACKEND is memory .*only see an empty queue of its own/)
    }),
  timeout
)

it.live(
  "an unknown command fails",
  () =>
    Effect.gen(function* () {
      const run = yield* cli("unused", ["bogus"])
      expect(run.code).toBe(1)
      expect(run.stderr).toMatch(/Invalid subcommand/)
    }),
  timeout
)

await describeWithServer("Redis", redisUrl, "CLI on Redis", () => {
  it.live(
    "push queues and records a task; bad pushes fail and change nothing",
    () =>
      withQueue((queueName) =>
        Effect.gen(function* () {
          const pushed = yield* cli(queueName, [
            "push",
            "--priority",
            "9",
            "m-1",
            '{"audio_files":["a.wav"]}'
          ])
          expect(pushed).toEqual({ code: 0, stdout: "m-1\n", stderr: "" })
          const store = yield* TaskStore
          expect(Option.map(yield* store.get("m-1"), (r) => [r.status, r.priority])).toEqual(
            Option.some(["PENDING", 9])
          )

          const bad = [
            [["push", "bad-json", "{oops"], /json-data is not valid JSON/],
            [["push", "-p", "11", "bad-p", "1"], /priority must be an integer from 0 to 10/],
            [["push", "", "1"], /task id must not be empty/],
            [["push", "m-1", "2"], /task m-1 is already known/]
          ] as const
          for (const [args, reason] of bad) {
            const run = yield* cli(queueName, args)
            expect({ args, code: run.code, stdout: run.stdout }).toEqual({ args, code: 1, stdout: "" })
            expect(run.stderr).toMatch(reason)
          }
          expect(Option.isNone(yield* store.get("bad-json"))).toBe(true)
          expect(Option.isNone(yield* store.get("bad-p"))).toBe(true)

          const queue = yield* QueueManager
          expect(yield* queue.length).toBe(1)
          const delivery = yield* queue.pull(Duration.millis(500))
          expect(Option.map(delivery, (d) => [d.message.taskId, d.message.priority, d.message.data])).toEqual(
            Option.some(["m-1", 9, { audio_files: ["a.wav"] }])
          )
        })
      ),
    timeout
  )

  it.live(
    "length, stats and clear",
    () =>
      withQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* QueueManager
          for (const id of ["a", "b", "c"]) yield* queue.push(id, { id })
          yield* queue.pull(Duration.millis(500))

          expect(yield* cli(queueName, ["length"])).toEqual({ code: 0, stdout: "2\n", stderr: "" })
          const printed = yield* cli(queueName, ["stats"])
          expect(printed.code).toBe(0)
          expect(JSON.parse(printed.stdout)).toEqual({
            name: queueName,
            pending: 2,
            in_flight: 1,
            delayed: 0,
            dead: 0
          })
          expect(yield* cli(queueName, ["clear"])).toEqual({ code: 0, stdout: "2\n", stderr: "" })
          expect(yield* stats).toMatchObject({ pending: 0, inFlight: 1 })
          expect((yield* cli(queueName, ["length"])).stdout).toBe("0\n")
        })
      ),
    timeout
  )

  it.live(
    "dead list shows the dead letters; dead retry re-queues one and resets its record",
    () =>
      withQueue((queueName) =>
        Effect.gen(function* () {
          const queue = yield* QueueManager
          const store = yield* TaskStore
          for (const id of ["d-1", "d-2"]) {
            expect(yield* submitTask({ taskId: id, data: { id } })).toBe(id)
            const delivery = Option.getOrThrow(yield* queue.pull(Duration.millis(500)))
            yield* store.start(id, { token: delivery.token, attempt: 1, priority: 5 })
            yield* store.finish(id, delivery.token, { status: "FAILED", error: `boom ${id}` })
            yield* delivery.nack({ requeue: false, error: `boom ${id}` })
          }

          const listed = yield* cli(queueName, ["dead", "list"])
          expect(listed.code).toBe(0)
          const letters = JSON.parse(listed.stdout)
          expect(letters).toHaveLength(2)
          expect(letters[0]).toMatchObject({
            task_id: "d-1",
            error: "boom d-1",
            attempts: 1,
            data: { id: "d-1" }
          })
          expect(letters[0].dead_at).toBeTypeOf("number")
          expect(JSON.parse((yield* cli(queueName, ["dead", "list", "--limit", "1"])).stdout)).toHaveLength(1)
          const badLimit = yield* cli(queueName, ["dead", "list", "--limit", "0"])
          expect(badLimit.code).toBe(1)
          expect(badLimit.stderr).toMatch(/--limit must be at least 1/)

          expect(yield* cli(queueName, ["dead", "retry", "d-1"])).toEqual({
            code: 0,
            stdout: "d-1\n",
            stderr: ""
          })
          expect(yield* stats).toMatchObject({ pending: 1, dead: 1 })
          expect(Option.map(yield* store.get("d-1"), (r) => r.status)).toEqual(Option.some("PENDING"))
          expect(Option.map(yield* store.get("d-2"), (r) => r.status)).toEqual(Option.some("FAILED"))

          const again = yield* cli(queueName, ["dead", "retry", "d-1"])
          expect(again.code).toBe(1)
          expect(again.stderr).toMatch(/no dead letter d-1/)
        })
      ),
    timeout
  )
})

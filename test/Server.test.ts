/**
 * The producer API, served for real on an ephemeral port and called with `fetch`, over each
 * backend: every endpoint, every kind of bad input (and that it changed nothing), dead letters,
 * health, the OpenAPI document, and what a client sees when the queue or the store fails.
 */
import { HttpServer } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Data, Duration, Effect, Layer, Option, Schema } from "effect"
import { Redis } from "ioredis"
import * as MemoryQueue from "../layers/MemoryQueue.js"
import * as MemoryTaskStore from "../layers/MemoryTaskStore.js"
import * as RabbitMqQueue from "../layers/RabbitMqQueue.js"
import * as RedisQueue from "../layers/RedisQueue.js"
import * as RedisTaskStore from "../layers/RedisTaskStore.js"
import { serverLayer, serverUrl } from "../programs/server.js"
import { QueueError } from "../src/Errors.js"
import * as Pipeline from "../src/Pipeline.js"
import { QueueManager } from "../src/QueueManager.js"
import { maxDataBytes } from "../src/Task.js"
import { TaskStore } from "../src/TaskStore.js"
import { TaskWorker } from "../src/TaskWorker.js"
import { uniqueQueueName } from "./conformance.js"
import { cleanup as cleanupRabbitMq } from "./fixtures/rabbitmq.js"
import { describeWithServer, rabbitmqUrl, redisUrl } from "./services.js"

/** A backend under test: the queue and store layers on a queue name, and how to clean up after. */
interface Backend {
  readonly name: string
  /** A push of an id already queued is refused (RabbitMQ cannot tell, and accepts it). */
  readonly idempotentPush: boolean
  readonly layer: (queueName: string) => Layer.Layer<QueueManager | TaskStore, QueueError>
  readonly cleanup: (queueName: string) => Effect.Effect<void>
}

/** Tasks a test holds stay in flight for the whole test, however loaded the machine. */
const leaseDuration = "10 minutes"

const memory: Backend = {
  name: "memory",
  idempotentPush: true,
  layer: (queueName) => Layer.merge(MemoryQueue.layer({ queueName, leaseDuration }), MemoryTaskStore.layer()),
  cleanup: () => Effect.void
}

/** Deletes every key of the queue (they all start with its hash tag). */
const cleanupRedis = (queueName: string) =>
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

const redis: Backend = {
  name: "redis",
  idempotentPush: true,
  layer: (queueName) =>
    Layer.merge(
      RedisQueue.layer({ queueName, redisUrl, leaseDuration }),
      RedisTaskStore.layer({ queueName, redisUrl })
    ),
  cleanup: cleanupRedis
}

/** RabbitMQ with the store it gets by default (memory: `TASK_STORE` defaults to redis only on Redis). */
const rabbitmq: Backend = {
  name: "rabbitmq",
  idempotentPush: false,
  layer: (queueName) =>
    Layer.merge(RabbitMqQueue.layer({ queueName, rabbitmqUrl, leaseDuration }), MemoryTaskStore.layer()),
  cleanup: (queueName) => Effect.orDie(cleanupRabbitMq(queueName))
}

/** What a response looked like to a client. */
interface Reply {
  readonly status: number
  readonly text: string
  // biome-ignore lint/suspicious/noExplicitAny: a JSON body, checked field by field
  readonly json: any
}

/** A client of the API at `base`. */
const client = (base: string) => {
  const call = (
    method: string,
    path: string,
    init: { body?: string | ReadableStream<Uint8Array>; headers?: Record<string, string> } = {}
  ) =>
    Effect.promise(async (): Promise<Reply> => {
      const response = await fetch(`${base}${path}`, {
        method,
        ...init,
        ...(init.body instanceof ReadableStream ? { duplex: "half" } : {})
      } as RequestInit)
      const text = await response.text()
      let json: unknown
      try {
        json = text === "" ? undefined : JSON.parse(text)
      } catch {
        json = undefined
      }
      return { status: response.status, text, json }
    })
  return {
    base,
    call,
    get: (path: string) => call("GET", path),
    post: (path: string, body?: unknown) =>
      call("POST", path, {
        ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
        headers: { "content-type": "application/json" }
      }),
    del: (path: string) => call("DELETE", path)
  }
}

type Client = ReturnType<typeof client>

/** Serves the API on a free port over `services`, and runs `f` with a client and the services. */
const withServer = <A, E>(
  services: Layer.Layer<QueueManager | TaskStore, QueueError>,
  f: (api: Client) => Effect.Effect<A, E, QueueManager | TaskStore>
) =>
  Effect.gen(function* () {
    const server = yield* HttpServer.HttpServer
    return yield* f(client(serverUrl(server.address)))
  }).pipe(Effect.provide(serverLayer({ port: 0 }).pipe(Layer.provideMerge(services))))

/** Serves the API over a fresh queue of `backend`, removed afterwards. */
const withApi = <A, E>(
  backend: Backend,
  f: (api: Client, queueName: string) => Effect.Effect<A, E, QueueManager | TaskStore>
) => {
  const queueName = uniqueQueueName(`api-${backend.name}`)
  return withServer(backend.layer(queueName), (api) => f(api, queueName)).pipe(
    Effect.ensuring(backend.cleanup(queueName))
  )
}

/** A failure of the test pipeline. */
class Boom extends Data.TaggedError("Boom")<{ readonly message: string }> {}

/**
 * The pipeline the worker runs in these tests: doubles `n`, failing while the task's id is in
 * `failing` (a test removes it to let a retried dead letter succeed).
 */
const makePipeline = (failing: Set<string>) =>
  Pipeline.make({
    name: "double",
    schema: Schema.Struct({ n: Schema.Number }),
    run: ({ n }, message) =>
      failing.has(message.taskId)
        ? Effect.fail(new Boom({ message: `cannot double ${n}` }))
        : Effect.succeed({ doubled: n * 2 })
  })

/** As {@link withApi}, with a worker running the test pipeline on the same queue and store. */
const withApiAndWorker = <A, E>(
  backend: Backend,
  failing: Set<string>,
  f: (api: Client, queueName: string) => Effect.Effect<A, E, QueueManager | TaskStore>
) => {
  const queueName = uniqueQueueName(`e2e-${backend.name}`)
  const services = backend.layer(queueName)
  const worker = Layer.scopedDiscard(TaskWorker.start).pipe(
    Layer.provide(TaskWorker.layer({ concurrency: 2, maxAttempts: 2, backoff: () => "20 millis" })),
    Layer.provide(Pipeline.Pipeline.layer(makePipeline(failing)))
  )
  return withServer(Layer.merge(services, worker.pipe(Layer.provide(services))), (api) =>
    f(api, queueName)
  ).pipe(Effect.ensuring(backend.cleanup(queueName)))
}

/** Polls a task's record until its status is one of `statuses` (10 seconds at most). */
const awaitStatus = (api: Client, taskId: string, ...statuses: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    for (let i = 0; i < 200; i++) {
      const record = yield* api.get(`/tasks/${encodeURIComponent(taskId)}`)
      if (record.status === 200 && statuses.includes(record.json.status)) return record.json
      yield* Effect.sleep("50 millis")
    }
    return yield* Effect.dieMessage(`task ${taskId} never reached ${statuses.join(" or ")}`)
  })

const meeting = { audio_files: ["samples/standup.wav"], meeting_type: "standup" }

/** Nothing a client reads may look like a stack trace or a source location. */
const expectNoStack = (reply: Reply) => {
  expect(reply.text).not.toMatch(/\bat [\w.<>]+ \(|\.ts:\d+|\.js:\d+|stack/i)
}

/** The queue holds nothing at all. */
const expectEmptyQueue = (api: Client) =>
  Effect.gen(function* () {
    const queue = yield* api.get("/queue")
    expect(queue.status).toBe(200)
    expect(queue.json).toMatchObject({ pending: 0, in_flight: 0, delayed: 0, dead: 0 })
  })

const longId = "x".repeat(201)
const overLimitData = "y".repeat(maxDataBytes)

/** Bad submissions: the body, the status it must get and a piece of the reason it must give. */
const badSubmissions: ReadonlyArray<readonly [name: string, body: string, status: number, reason: RegExp]> = [
  ["malformed JSON", '{"task_id":"bad-json","data":', 400, /not valid JSON/],
  ["an empty body", "", 400, /not valid JSON/],
  ["missing data", '{"task_id":"bad-data","priority":3}', 400, /data: is missing/],
  [
    "priority above 10",
    '{"task_id":"bad-p1","data":1,"priority":11}',
    400,
    /priority must be an integer from 0 to 10/
  ],
  [
    "priority below 0",
    '{"task_id":"bad-p2","data":1,"priority":-1}',
    400,
    /priority must be an integer from 0 to 10/
  ],
  [
    "a fractional priority",
    '{"task_id":"bad-p3","data":1,"priority":2.5}',
    400,
    /priority must be an integer/
  ],
  [
    "a priority as a string",
    '{"task_id":"bad-p4","data":1,"priority":"5"}',
    400,
    /priority: Expected number/
  ],
  ["a null priority", '{"task_id":"bad-p5","data":1,"priority":null}', 400, /priority: Expected number/],
  ["an empty task id", '{"task_id":"","data":1}', 400, /task id must not be empty/],
  ["a task id too long", JSON.stringify({ task_id: longId, data: 1 }), 400, /at most 200 characters/],
  ["a task id with a control character", '{"task_id":"a\\u0007b","data":1}', 400, /control characters/],
  ["a task id that is not a string", '{"task_id":42,"data":1}', 400, /task_id: Expected string/],
  [
    "data that is not plain JSON (1e400 is Infinity)",
    '{"task_id":"bad-inf","data":1e400}',
    400,
    /plain JSON/
  ],
  ["a body that is not an object", "[1,2]", 400, /must be a JSON object/],
  ["a misspelt key", '{"task_id":"bad-key","data":1,"priorty":3}', 400, /priorty: is unexpected/],
  [
    "data over 1 MiB",
    JSON.stringify({ task_id: "bad-big", data: overLimitData }),
    400,
    /over the 1048576-byte limit/
  ],
  [
    "a body over the read limit",
    JSON.stringify({ task_id: "bad-huge", data: "z".repeat(2 * maxDataBytes) }),
    413,
    /request body is over/
  ]
]

/** The task ids named by the bad submissions that have a valid one. */
const badIds = [
  "bad-json",
  "bad-data",
  "bad-p1",
  "bad-p2",
  "bad-p3",
  "bad-p4",
  "bad-p5",
  "bad-inf",
  "bad-key"
]

const apiSuite = (backend: Backend) => {
  it.live("POST /tasks queues the task and records it PENDING; GET /tasks/{id} reads the record", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const accepted = yield* api.post("/tasks", { task_id: "m-1", data: meeting, priority: 7 })
        expect(accepted.status).toBe(202)
        expect(accepted.json).toEqual({ task_id: "m-1", status: "PENDING" })

        const record = yield* api.get("/tasks/m-1")
        expect(record.status).toBe(200)
        expect(record.json).toMatchObject({ task_id: "m-1", status: "PENDING", priority: 7, attempts: 0 })
        expect(record.json.created_at).toBeTypeOf("number")
        expect(record.json.updated_at).toBe(record.json.created_at)
        expect(record.json).not.toHaveProperty("result")

        // The queue really holds it, with its data and priority.
        expect((yield* api.get("/queue")).json).toMatchObject({ pending: 1, in_flight: 0 })
        const queue = yield* QueueManager
        const delivery = yield* queue.pull(Duration.millis(500))
        expect(Option.map(delivery, (d) => [d.message.taskId, d.message.priority, d.message.data])).toEqual(
          Option.some(["m-1", 7, meeting])
        )
      })
    )
  )

  it.live("POST /tasks generates a task id when none is given, with the default priority", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const accepted = yield* api.post("/tasks", { data: [1, "two", null] })
        expect(accepted.status).toBe(202)
        expect(accepted.json.task_id).toMatch(
          /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
        )
        const record = yield* api.get(`/tasks/${accepted.json.task_id}`)
        expect(record.json).toMatchObject({ status: "PENDING", priority: 5 })
        const other = yield* api.post("/tasks", { data: 1 })
        expect(other.json.task_id).not.toBe(accepted.json.task_id)
      })
    )
  )

  it.live("accepts a body whatever its content type (curl -d sends a form type)", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const form = yield* api.call("POST", "/tasks", {
          body: '{"task_id":"form-1","data":{"x":1}}',
          headers: { "content-type": "application/x-www-form-urlencoded" }
        })
        expect(form.status).toBe(202)
        const bare = yield* api.call("POST", "/tasks", { body: '{"task_id":"bare-1","data":"é"}' })
        expect(bare.status).toBe(202)
        expect((yield* api.get("/queue")).json.pending).toBe(2)
      })
    )
  )

  it.live("409 for a known task id, and the first submission stands", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        expect((yield* api.post("/tasks", { task_id: "dup", data: 1, priority: 2 })).status).toBe(202)
        const again = yield* api.post("/tasks", { task_id: "dup", data: 2, priority: 9 })
        expect(again.status).toBe(409)
        expect(again.json).toMatchObject({ _tag: "TaskConflict", task_id: "dup" })
        expect(again.json.message).toMatch(/already known/)
        expect((yield* api.get("/tasks/dup")).json).toMatchObject({ status: "PENDING", priority: 2 })
        expect((yield* api.get("/queue")).json.pending).toBe(1)
      })
    )
  )

  if (backend.idempotentPush) {
    it.live("409 for a task already on the queue though unknown to the store; nothing is recorded", () =>
      withApi(backend, (api) =>
        Effect.gen(function* () {
          const queue = yield* QueueManager
          expect(yield* queue.push("direct", { x: 1 }, 3)).toBe(true)
          const reply = yield* api.post("/tasks", { task_id: "direct", data: 1 })
          expect(reply.status).toBe(409)
          expect(reply.json.message).toMatch(/already queued or running/)
          expect((yield* api.get("/tasks/direct")).status).toBe(404)
          expect((yield* api.get("/queue")).json.pending).toBe(1)
        })
      )
    )
  } else {
    it.live(
      `a task pushed straight onto the queue is unknown to the store, so the API accepts its id again (${backend.name}: documented difference: no idempotent push)`,
      () =>
        withApi(backend, (api) =>
          Effect.gen(function* () {
            const queue = yield* QueueManager
            expect(yield* queue.push("direct", { x: 1 }, 3)).toBe(true)
            const reply = yield* api.post("/tasks", { task_id: "direct", data: 1 })
            expect(reply.status).toBe(202)
            expect((yield* api.get("/tasks/direct")).json).toMatchObject({ status: "PENDING" })
            expect((yield* api.get("/queue")).json.pending).toBe(2)
            // The store still guards what goes through it.
            expect((yield* api.post("/tasks", { task_id: "direct", data: 2 })).status).toBe(409)
          })
        )
    )
  }

  it.live("every kind of bad submission gets its status and a readable reason, and changes nothing", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        for (const [name, body, status, reason] of badSubmissions) {
          const reply = yield* api.call("POST", "/tasks", {
            body,
            headers: { "content-type": "application/json" }
          })
          expect({ name, status: reply.status }).toEqual({ name, status })
          expect({ name, message: reply.json?.message }).toEqual({
            name,
            message: expect.stringMatching(reason)
          })
          expectNoStack(reply)
        }
        yield* expectEmptyQueue(api)
        for (const id of badIds) expect((yield* api.get(`/tasks/${id}`)).status).toBe(404)
      })
    )
  )

  it.live("413 for an oversized chunked body (no content-length), and nothing changes", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const chunk = new TextEncoder().encode("z".repeat(64 * 1024))
        let sent = 0
        const body = new ReadableStream<Uint8Array>({
          pull(controller) {
            if (sent === 0) controller.enqueue(new TextEncoder().encode('{"task_id":"chunked","data":"'))
            if (sent > 2 * maxDataBytes) {
              controller.enqueue(new TextEncoder().encode('"}'))
              controller.close()
              return
            }
            controller.enqueue(chunk)
            sent += chunk.length
          }
        })
        const reply = yield* api.call("POST", "/tasks", { body })
        expect(reply.status).toBe(413)
        expect(reply.json.message).toMatch(/request body is over/)
        yield* expectEmptyQueue(api)
        expect((yield* api.get("/tasks/chunked")).status).toBe(404)
      })
    )
  )

  it.live("GET /tasks/{id}: 404 for an unknown id, 400 for an invalid one", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const unknown = yield* api.get("/tasks/nobody")
        expect(unknown.status).toBe(404)
        expect(unknown.json).toMatchObject({ _tag: "TaskNotFound", task_id: "nobody" })
        const control = yield* api.get("/tasks/a%0Ab")
        expect(control.status).toBe(400)
        expect(control.text).toMatch(/control characters/)
        // The longest valid id, percent-encoded to 1800 characters in the path, is routed.
        const longest = "€".repeat(200)
        expect((yield* api.post("/tasks", { task_id: longest, data: 1 })).status).toBe(202)
        const found = yield* api.get(`/tasks/${encodeURIComponent(longest)}`)
        expect(found.status).toBe(200)
        expect(found.json.task_id).toBe(longest)
        const long = yield* api.get(`/tasks/${longId}`)
        expect(long.status).toBe(400)
        expect(long.text).toMatch(/at most 200 characters/)
      })
    )
  )

  it.live("GET /queue counts by state; DELETE /queue removes the waiting tasks", () =>
    withApi(backend, (api, queueName) =>
      Effect.gen(function* () {
        for (const id of ["c-1", "c-2", "c-3"]) {
          expect((yield* api.post("/tasks", { task_id: id, data: id })).status).toBe(202)
        }
        const queue = yield* QueueManager
        const held = yield* queue.pull(Duration.millis(500))
        expect(Option.isSome(held)).toBe(true)
        expect((yield* api.get("/queue")).json).toEqual({
          name: queueName,
          pending: 2,
          in_flight: 1,
          delayed: 0,
          dead: 0
        })
        const cleared = yield* api.del("/queue")
        expect(cleared.status).toBe(200)
        expect(cleared.json).toEqual({ removed: 2 })
        expect((yield* api.get("/queue")).json).toMatchObject({ pending: 0, in_flight: 1 })
        expect((yield* api.del("/queue")).json).toEqual({ removed: 0 })
      })
    )
  )

  it.live("dead letters: listed with their error and data, retried back to PENDING, 404 when absent", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const queue = yield* QueueManager
        const store = yield* TaskStore
        expect((yield* api.post("/tasks", { task_id: "doomed", data: meeting, priority: 4 })).status).toBe(
          202
        )
        // What a worker does with a task that keeps failing: record it FAILED, dead-letter it.
        const delivery = Option.getOrThrow(yield* queue.pull(Duration.millis(500)))
        yield* store.start("doomed", { token: delivery.token, attempt: 1, priority: 4 })
        yield* store.finish("doomed", delivery.token, { status: "FAILED", error: "boom" })
        yield* delivery.nack({ requeue: false, error: "boom" })

        const dead = yield* api.get("/queue/dead")
        expect(dead.status).toBe(200)
        expect(dead.json).toHaveLength(1)
        expect(dead.json[0]).toMatchObject({
          task_id: "doomed",
          error: "boom",
          attempts: 1,
          priority: 4,
          data: meeting
        })
        expect(dead.json[0].dead_at).toBeTypeOf("number")
        expect((yield* api.get("/queue")).json).toMatchObject({ pending: 0, dead: 1 })
        expect((yield* api.get("/queue/dead?limit=0")).status).toBe(400)
        expect((yield* api.get("/queue/dead?limit=1")).json).toHaveLength(1)

        const retried = yield* api.post("/queue/dead/doomed/retry")
        expect(retried.status).toBe(202)
        expect(retried.json).toEqual({ task_id: "doomed", status: "PENDING" })
        expect((yield* api.get("/tasks/doomed")).json).toMatchObject({ status: "PENDING", attempts: 0 })
        expect((yield* api.get("/queue")).json).toMatchObject({ pending: 1, dead: 0 })
        expect((yield* api.get("/queue/dead")).json).toEqual([])

        const again = yield* api.post("/queue/dead/doomed/retry")
        expect(again.status).toBe(404)
        expect(again.json).toMatchObject({ _tag: "DeadLetterNotFound", task_id: "doomed" })
        expect((yield* api.post("/queue/dead/nobody/retry")).status).toBe(404)
      })
    )
  )

  it.live("GET /health answers 200 while the queue answers", () =>
    withApi(backend, (api, queueName) =>
      Effect.gen(function* () {
        const health = yield* api.get("/health")
        expect(health.status).toBe(200)
        expect(health.json).toEqual({ status: "ok", backend: backend.name, queue: queueName })
      })
    )
  )

  it.live("serves the OpenAPI document and its page", () =>
    withApi(backend, (api) =>
      Effect.gen(function* () {
        const doc = yield* api.get("/openapi.json")
        expect(doc.status).toBe(200)
        expect(doc.json.openapi).toMatch(/^3\./)
        expect(Object.keys(doc.json.paths).sort()).toEqual([
          "/health",
          "/queue",
          "/queue/dead",
          "/queue/dead/{task_id}/retry",
          "/tasks",
          "/tasks/{task_id}"
        ])
        expect(Object.keys(doc.json.paths["/tasks"].post.responses)).toEqual(
          expect.arrayContaining(["202", "400", "409", "413", "503"])
        )
        const page = yield* api.get("/docs")
        expect(page.status).toBe(200)
        expect(page.text).toMatch(/<html/i)
      })
    )
  )
}

/** A task followed from its submission to its outcome, with a worker running beside the API. */
const endToEndSuite = (backend: Backend) => {
  it.live("a task goes from 202 to COMPLETED with its result", () =>
    withApiAndWorker(backend, new Set(), (api) =>
      Effect.gen(function* () {
        const accepted = yield* api.post("/tasks", { task_id: "ok-1", data: { n: 21 }, priority: 8 })
        expect(accepted.status).toBe(202)
        const record = yield* awaitStatus(api, "ok-1", "COMPLETED", "FAILED")
        expect(record).toMatchObject({
          task_id: "ok-1",
          status: "COMPLETED",
          attempts: 1,
          result: { doubled: 42 }
        })
        expect(record.updated_at).toBeGreaterThanOrEqual(record.created_at)
        expect((yield* api.get("/queue")).json).toMatchObject({ pending: 0, in_flight: 0, dead: 0 })
        // Its id stays known while its record is kept.
        expect((yield* api.post("/tasks", { task_id: "ok-1", data: { n: 1 } })).status).toBe(409)
      })
    )
  )

  it.live("a failing task ends FAILED with its error, dead-lettered; retried, it runs again", () => {
    const failing = new Set(["flaky"])
    return withApiAndWorker(backend, failing, (api) =>
      Effect.gen(function* () {
        expect((yield* api.post("/tasks", { task_id: "flaky", data: { n: 5 } })).status).toBe(202)
        const failed = yield* awaitStatus(api, "flaky", "FAILED", "COMPLETED")
        expect(failed).toMatchObject({ status: "FAILED", attempts: 2 })
        expect(failed.error).toMatch(/cannot double 5/)
        expect(failed).not.toHaveProperty("result")
        const dead = yield* api.get("/queue/dead")
        expect(dead.json).toEqual([expect.objectContaining({ task_id: "flaky", data: { n: 5 } })])
        expect(dead.json[0].error).toMatch(/cannot double 5/)

        failing.delete("flaky")
        expect((yield* api.post("/queue/dead/flaky/retry")).status).toBe(202)
        const completed = yield* awaitStatus(api, "flaky", "COMPLETED")
        expect(completed).toMatchObject({ status: "COMPLETED", result: { doubled: 10 } })
        expect((yield* api.get("/queue")).json).toMatchObject({ pending: 0, dead: 0 })
      })
    )
  })

  it.live("data the pipeline cannot decode fails at once, not retried", () =>
    withApiAndWorker(backend, new Set(), (api) =>
      Effect.gen(function* () {
        expect((yield* api.post("/tasks", { task_id: "bad-data", data: { n: "x" } })).status).toBe(202)
        const failed = yield* awaitStatus(api, "bad-data", "FAILED", "COMPLETED")
        expect(failed).toMatchObject({ status: "FAILED", attempts: 1 })
        expect(failed.error).toMatch(/invalid task data/)
      })
    )
  )
}

describe("API on memory", () => {
  apiSuite(memory)
  endToEndSuite(memory)
})

await describeWithServer("Redis", redisUrl, "API on Redis", () => {
  apiSuite(redis)
  endToEndSuite(redis)
})

await describeWithServer("RabbitMQ", rabbitmqUrl, "API on RabbitMQ", () => {
  apiSuite(rabbitmq)
  endToEndSuite(rabbitmq)
})

/** A queue whose every operation fails, as one whose server is down. */
const brokenQueue = (queueName: string) =>
  Layer.effect(
    QueueManager,
    Effect.map(MemoryQueue.make({ queueName }), (queue) => {
      const down = new QueueError({ message: "the queue server is unreachable" })
      return {
        ...queue,
        push: () => Effect.fail(down),
        pushBatch: () => Effect.fail(down),
        stats: Effect.fail(down)
      }
    })
  )

describe("API when the backend fails", () => {
  it.live("a failed push answers 503 and leaves no record behind; the same request succeeds later", () =>
    Effect.gen(function* () {
      // One store under two queues: first one that is down, then one that works.
      const store = Layer.succeed(TaskStore, yield* MemoryTaskStore.make())
      yield* withServer(Layer.merge(brokenQueue("down"), store), (api) =>
        Effect.gen(function* () {
          const reply = yield* api.post("/tasks", { task_id: "later", data: 1 })
          expect(reply.status).toBe(503)
          expect(reply.json).toEqual({ _tag: "Unavailable", message: "the queue server is unreachable" })
          expectNoStack(reply)
          expect((yield* api.get("/tasks/later")).status).toBe(404)
        })
      )
      yield* withServer(Layer.merge(MemoryQueue.layer({ queueName: "up" }), store), (api) =>
        Effect.gen(function* () {
          expect((yield* api.post("/tasks", { task_id: "later", data: 1 })).status).toBe(202)
          expect((yield* api.get("/tasks/later")).json).toMatchObject({ status: "PENDING" })
        })
      )
    })
  )

  it.live("GET /health answers 503 when the queue does not answer", () =>
    withServer(Layer.merge(brokenQueue("down"), MemoryTaskStore.layer()), (api) =>
      Effect.gen(function* () {
        const health = yield* api.get("/health")
        expect(health.status).toBe(503)
        expect(health.json).toEqual({ _tag: "Unavailable", message: "the queue server is unreachable" })
        expect((yield* api.get("/queue")).status).toBe(503)
      })
    )
  )

  it.live("a defect answers 500 with no stack trace", () =>
    withServer(
      Layer.merge(
        MemoryQueue.layer({ queueName: "defect" }),
        Layer.effect(
          TaskStore,
          Effect.map(MemoryTaskStore.make(), (store) => ({
            ...store,
            get: () => Effect.die(new Error("secret internals at /srv/app/store.ts:12"))
          }))
        )
      ),
      (api) =>
        Effect.gen(function* () {
          const reply = yield* api.get("/tasks/anything")
          expect(reply.status).toBe(500)
          expect(reply.text).not.toMatch(/secret/)
          expectNoStack(reply)
        })
    )
  )
})

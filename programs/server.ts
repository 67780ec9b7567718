/**
 * The producer HTTP API: submit tasks, read their records, inspect and clear the queue, list and
 * re-queue dead letters, health, and the OpenAPI document with its page. JSON in snake_case, as
 * on the wire.
 *
 * The module exports the pieces (the `TaskQueueApi` definition, its handlers `ApiLive`, the
 * `serverLayer` serving it, the producer operations the CLI shares); run directly it serves the
 * API on `HOST`:`PORT` over the queue and store configured by the environment:
 *
 *   QUEUE_BACKEND=redis npx tsx programs/server.ts
 *
 * @since 0.1.0
 */
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"
import { pathToFileURL } from "node:url"
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as HttpApiSwagger from "@effect/platform/HttpApiSwagger"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import type * as HttpServerError from "@effect/platform/HttpServerError"
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as OpenApi from "@effect/platform/OpenApi"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Config, Effect, Layer, Option, ParseResult, Schema, Stream } from "effect"
import { DuplicateTask, InvalidTask, QueueError } from "../src/Errors.js"
import { type NewTask, QueueManager } from "../src/QueueManager.js"
import {
  defaultPriority,
  maxDataBytes,
  maxPriority,
  minPriority,
  Priority,
  TaskData,
  TaskId,
  TaskRecordJson,
  TaskStatus
} from "../src/Task.js"
import { TaskStore } from "../src/TaskStore.js"

// ---------------------------------------------------------------------------------------------
// Wire schemas
// ---------------------------------------------------------------------------------------------

/** Task data on the wire: any plain JSON value, described for the OpenAPI document. */
export const JsonData = TaskData.annotations({
  identifier: "JsonValue",
  description: "any plain JSON value",
  jsonSchema: {
    anyOf: [
      { type: "object" },
      { type: "array" },
      { type: "string" },
      { type: "number" },
      { type: "boolean" },
      { type: "null" }
    ]
  }
})

/** The body of `POST /tasks`. Unknown keys are rejected, so a misspelt `priorty` is not ignored. */
export const SubmitTaskBody = Schema.Struct({
  task_id: Schema.optionalWith(TaskId, { exact: true }).annotations({
    description: "generated (a UUID) when absent"
  }),
  data: JsonData,
  priority: Schema.optionalWith(Priority, { exact: true }).annotations({
    description: `integer ${minPriority}..${maxPriority}, ${maxPriority} most urgent; default ${defaultPriority}`
  })
}).annotations({
  identifier: "SubmitTask",
  message: () => "the body must be a JSON object { task_id?, data, priority? }"
})

/** The answer to an accepted submission or retry. */
export const TaskAccepted = Schema.Struct({ task_id: TaskId, status: TaskStatus })

/** A task's record on the wire. */
export const TaskView = Schema.Struct({ ...TaskRecordJson.fields, result: Schema.optional(JsonData) })

/** `GET /queue`. */
export const QueueView = Schema.Struct({
  name: Schema.String,
  pending: Schema.Number,
  in_flight: Schema.Number,
  delayed: Schema.Number,
  dead: Schema.Number
})

/** One dead letter on the wire; `data` and `priority` are absent when its body was malformed. */
export const DeadLetterView = Schema.Struct({
  task_id: Schema.String,
  error: Schema.String,
  attempts: Schema.Number,
  dead_at: Schema.Number.annotations({ description: "epoch milliseconds" }),
  priority: Schema.optional(Schema.Number),
  data: Schema.optional(JsonData)
})

/** `GET /health`. */
export const HealthView = Schema.Struct({
  status: Schema.Literal("ok"),
  backend: Schema.String,
  queue: Schema.String
})

// ---------------------------------------------------------------------------------------------
// Errors a client sees
// ---------------------------------------------------------------------------------------------

/** 400: the request is malformed or invalid; nothing was changed. */
export class BadRequest extends Schema.TaggedError<BadRequest>()(
  "BadRequest",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

/** 413: the request body is over the limit; nothing was changed. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()(
  "PayloadTooLarge",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 413 })
) {}

/** 404: no task with this id is known. */
export class TaskNotFound extends Schema.TaggedError<TaskNotFound>()(
  "TaskNotFound",
  { task_id: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** 404: no dead letter with this id. */
export class DeadLetterNotFound extends Schema.TaggedError<DeadLetterNotFound>()(
  "DeadLetterNotFound",
  { task_id: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** 409: a task with this id is already known (queued, running or recorded). */
export class TaskConflict extends Schema.TaggedError<TaskConflict>()(
  "TaskConflict",
  { task_id: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 409 })
) {}

/** 503: the queue or the task store did not answer; the message says what. */
export class Unavailable extends Schema.TaggedError<Unavailable>()(
  "Unavailable",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

const taskIdPath = Schema.Struct({ task_id: TaskId })

/** Submitting tasks and reading their records. */
export class TasksGroup extends HttpApiGroup.make("tasks")
  .add(
    HttpApiEndpoint.post("submit", "/tasks")
      .setPayload(SubmitTaskBody)
      .addSuccess(TaskAccepted, { status: 202 })
      .addError(BadRequest)
      .addError(PayloadTooLarge)
      .addError(TaskConflict)
      .addError(Unavailable)
      .annotate(OpenApi.Summary, "Submit a task")
  )
  .add(
    HttpApiEndpoint.get("get", "/tasks/:task_id")
      .setPath(taskIdPath)
      .addSuccess(TaskView)
      .addError(TaskNotFound)
      .addError(Unavailable)
      .annotate(OpenApi.Summary, "A task's record: status, attempts, result or error")
  ) {}

/** The queue: counts, clearing, dead letters. */
export class QueueGroup extends HttpApiGroup.make("queue")
  .add(
    HttpApiEndpoint.get("stats", "/queue")
      .addSuccess(QueueView)
      .addError(Unavailable)
      .annotate(OpenApi.Summary, "Counts of the queue's tasks by state")
  )
  .add(
    HttpApiEndpoint.del("clear", "/queue")
      .addSuccess(Schema.Struct({ removed: Schema.Number }))
      .addError(Unavailable)
      .annotate(OpenApi.Summary, "Remove the waiting tasks (in-flight and dead ones stay)")
  )
  .add(
    HttpApiEndpoint.get("deadLetters", "/queue/dead")
      .setUrlParams(
        Schema.Struct({
          limit: Schema.optionalWith(
            Schema.NumberFromString.pipe(
              Schema.int({ message: () => "limit must be an integer from 1 to 10000" }),
              Schema.between(1, 10_000, { message: () => "limit must be an integer from 1 to 10000" })
            ),
            { exact: true }
          ).annotations({ description: "at most this many, oldest first; default 100" })
        })
      )
      .addSuccess(Schema.Array(DeadLetterView))
      .addError(Unavailable)
      .annotate(OpenApi.Summary, "The dead letters, oldest first")
  )
  .add(
    HttpApiEndpoint.post("retryDead", "/queue/dead/:task_id/retry")
      .setPath(taskIdPath)
      .addSuccess(TaskAccepted, { status: 202 })
      .addError(DeadLetterNotFound)
      .addError(Unavailable)
      .annotate(OpenApi.Summary, "Put a dead letter back in the queue, its record PENDING again")
  ) {}

/** Liveness of the API and its queue. */
export class HealthGroup extends HttpApiGroup.make("health").add(
  HttpApiEndpoint.get("health", "/health")
    .addSuccess(HealthView)
    .addError(Unavailable)
    .annotate(OpenApi.Summary, "200 when the queue answers, 503 when it does not")
) {}

/** The producer API. */
export class TaskQueueApi extends HttpApi.make("effect-task-queue")
  .add(TasksGroup)
  .add(QueueGroup)
  .add(HealthGroup)
  .annotate(OpenApi.Title, "effect-task-queue")
  .annotate(OpenApi.Description, "Submit tasks to a priority queue and follow them to their result") {}

// ---------------------------------------------------------------------------------------------
// Producer operations (shared with the CLI)
// ---------------------------------------------------------------------------------------------

const decodeTaskId = Schema.decodeUnknown(TaskId)
const decodePriority = Schema.decodeUnknown(Priority)

const invalidTask = (error: ParseResult.ParseError) =>
  new InvalidTask({ message: ParseResult.TreeFormatter.formatErrorSync(error) })

/**
 * Submits a task: refuses a known id (`DuplicateTask`), pushes it, then records it PENDING.
 *
 * The push comes before the record so that a push that fails (`QueueError`, `InvalidTask`)
 * leaves nothing behind and the same request can simply be retried. A worker that starts the
 * task before the record is written creates the record itself; the late `create` then finds it
 * and leaves it alone.
 */
export const submitTask = Effect.fn("Producer.submitTask")(function* (task: NewTask) {
  const queue = yield* QueueManager
  const store = yield* TaskStore
  const taskId = yield* Effect.mapError(decodeTaskId(task.taskId), invalidTask)
  const priority = yield* Effect.mapError(decodePriority(task.priority ?? defaultPriority), invalidTask)
  yield* Effect.annotateCurrentSpan("task.id", taskId)
  if (Option.isSome(yield* store.get(taskId))) {
    return yield* new DuplicateTask({ taskId, message: `task ${taskId} is already known` })
  }
  if (!(yield* queue.push(taskId, task.data, priority))) {
    return yield* new DuplicateTask({ taskId, message: `task ${taskId} is already queued or running` })
  }
  yield* store.create(taskId, priority).pipe(
    Effect.catchTag("DuplicateTask", () => Effect.void),
    Effect.catchTag("QueueError", (error) =>
      Effect.logWarning("task queued, but its record could not be written yet").pipe(
        Effect.annotateLogs({ taskId, error: error.message })
      )
    )
  )
  return taskId
})

/**
 * Puts a dead letter back in the queue and its record (when FAILED) back to PENDING; `false` when
 * there is no dead letter with this id.
 *
 * The record is reset first: a delivery that finds a finished record is settled as recorded,
 * never run (see `TaskStore.start`). A FAILED record without a dead letter (rare: the queue and
 * the store disagree) is left PENDING with nothing queued; the answer is still `false`.
 */
export const retryDeadTask = Effect.fn("Producer.retryDeadTask")(function* (taskId: string) {
  const queue = yield* QueueManager
  const store = yield* TaskStore
  yield* Effect.annotateCurrentSpan("task.id", taskId)
  const record = yield* store.get(taskId)
  if (Option.isSome(record) && record.value.status === "FAILED") yield* store.reset(taskId)
  return yield* queue.retryDead(taskId)
})

/** The dead letters in their wire form. */
export const listDeadLetters = (limit?: number) =>
  Effect.flatMap(QueueManager, (queue) => queue.deadLetters(limit)).pipe(
    Effect.map((letters) =>
      letters.map((letter): typeof DeadLetterView.Type => ({
        task_id: letter.taskId,
        error: letter.error,
        attempts: letter.attempts,
        dead_at: letter.deadAt,
        ...Option.match(letter.message, {
          onNone: () => ({}),
          onSome: (message) => ({ priority: message.priority, data: message.data })
        })
      }))
    )
  )

/** The queue's counts in their wire form. */
export const queueView = Effect.flatMap(QueueManager, (queue) =>
  Effect.map(queue.stats, (stats): typeof QueueView.Type => ({
    name: queue.queueName,
    pending: stats.pending,
    in_flight: stats.inFlight,
    delayed: stats.delayed,
    dead: stats.dead
  }))
)

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

/** The largest `POST /tasks` body read: the data limit plus room for the envelope and spacing. */
export const maxBodyBytes = maxDataBytes + 64 * 1024

const parseJson = Schema.decodeUnknown(Schema.parseJson())
const decodeSubmission = Schema.decodeUnknown(SubmitTaskBody, { errors: "all", onExcessProperty: "error" })

/** One line per issue: `priority: priority must be an integer from 0 to 10`. */
const describeIssues = (error: ParseResult.ParseError) =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => (issue.path.length === 0 ? issue.message : `${issue.path.join(".")}: ${issue.message}`))
    .join("; ")

const tooLarge = new PayloadTooLarge({
  message: `the request body is over the ${maxBodyBytes}-byte limit (task data: ${maxDataBytes} bytes of JSON)`
})

/** A body this far over the limit is not drained to answer 413: the connection is dropped. */
const maxDrainBytes = 16 * maxBodyBytes

/**
 * The body as text, up to `maxBodyBytes`. A longer one is read to its end and discarded (not
 * kept in memory), so the client still gets its 413 rather than a reset connection.
 */
const readBody = (request: HttpServerRequest.HttpServerRequest) =>
  request.stream.pipe(
    Stream.mapAccum(0, (total, chunk) => [total + chunk.length, [total + chunk.length, chunk] as const]),
    Stream.takeWhile(([total]) => total <= maxDrainBytes),
    Stream.runFold({ total: 0, chunks: [] as Array<Uint8Array> }, (body, [total, chunk]) => {
      if (total <= maxBodyBytes) body.chunks.push(chunk)
      return { total, chunks: body.chunks }
    }),
    Effect.mapError(() => new BadRequest({ message: "the request body could not be read" })),
    Effect.flatMap(({ chunks, total }) =>
      total > maxBodyBytes ? Effect.fail(tooLarge) : Effect.succeed(Buffer.concat(chunks).toString("utf8"))
    )
  )

/** Reads and decodes a `POST /tasks` body, whatever its content type (curl -d sends a form type). */
const readSubmission = (request: HttpServerRequest.HttpServerRequest) =>
  Effect.gen(function* () {
    if (Number(request.headers["content-length"] ?? 0) > maxBodyBytes) return yield* tooLarge
    const text = yield* readBody(request)
    const json = yield* Effect.mapError(
      parseJson(text),
      (error) => new BadRequest({ message: `the body is not valid JSON: ${describeIssues(error)}` })
    )
    return yield* Effect.mapError(
      decodeSubmission(json),
      (error) => new BadRequest({ message: describeIssues(error) })
    )
  })

const unavailable = (error: QueueError) => new Unavailable({ message: error.message })

/** Answers the queue's health within this long, or reports it unavailable. */
const healthTimeout = "3 seconds"

const TasksLive = HttpApiBuilder.group(TaskQueueApi, "tasks", (handlers) =>
  Effect.gen(function* () {
    const context = yield* Effect.context<QueueManager | TaskStore>()
    const store = yield* TaskStore
    return handlers
      .handleRaw("submit", ({ request }) =>
        readSubmission(request).pipe(
          Effect.flatMap((body) =>
            submitTask({ taskId: body.task_id ?? randomUUID(), data: body.data, priority: body.priority })
          ),
          Effect.map((taskId) => ({ task_id: taskId, status: "PENDING" as const })),
          Effect.catchTags({
            InvalidTask: (error: InvalidTask) => new BadRequest({ message: error.message }),
            DuplicateTask: (error: DuplicateTask) =>
              new TaskConflict({ task_id: error.taskId, message: error.message }),
            QueueError: unavailable
          }),
          Effect.provide(context)
        )
      )
      .handle("get", ({ path }) =>
        store.get(path.task_id).pipe(
          Effect.mapError(unavailable),
          Effect.flatMap(
            Option.match({
              onNone: () =>
                new TaskNotFound({ task_id: path.task_id, message: `no task ${path.task_id} is known` }),
              onSome: Effect.succeed
            })
          )
        )
      )
  })
)

const QueueLive = HttpApiBuilder.group(TaskQueueApi, "queue", (handlers) =>
  Effect.gen(function* () {
    const context = yield* Effect.context<QueueManager | TaskStore>()
    const queue = yield* QueueManager
    return handlers
      .handle("stats", () => queueView.pipe(Effect.mapError(unavailable), Effect.provide(context)))
      .handle("clear", () =>
        queue.clear.pipe(
          Effect.map((removed) => ({ removed })),
          Effect.mapError(unavailable)
        )
      )
      .handle("deadLetters", ({ urlParams }) =>
        listDeadLetters(urlParams.limit).pipe(Effect.mapError(unavailable), Effect.provide(context))
      )
      .handle("retryDead", ({ path }) =>
        retryDeadTask(path.task_id).pipe(
          Effect.mapError(unavailable),
          Effect.flatMap((retried) =>
            retried
              ? Effect.succeed({ task_id: path.task_id, status: "PENDING" as const })
              : new DeadLetterNotFound({
                  task_id: path.task_id,
                  message: `no dead letter ${path.task_id} in queue ${queue.queueName}`
                })
          ),
          Effect.provide(context)
        )
      )
  })
)

const HealthLive = HttpApiBuilder.group(TaskQueueApi, "health", (handlers) =>
  Effect.gen(function* () {
    const queue = yield* QueueManager
    return handlers.handle("health", () =>
      queue.stats.pipe(
        Effect.timeoutFail({
          duration: healthTimeout,
          onTimeout: () => new QueueError({ message: `the queue did not answer within ${healthTimeout}` })
        }),
        Effect.as({ status: "ok" as const, backend: queue.backend, queue: queue.queueName }),
        Effect.mapError(unavailable)
      )
    )
  })
)

/** The API's handlers, on the `QueueManager` and `TaskStore` in context. */
export const ApiLive: Layer.Layer<HttpApi.Api, never, QueueManager | TaskStore> = HttpApiBuilder.api(
  TaskQueueApi
).pipe(Layer.provide([TasksLive, QueueLive, HealthLive]))

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

/** The longest path parameter routed: a 200-character task id, every character percent-encoded. */
const maxPathParamLength = 200 * 12

/** Where the API listens. */
export interface ServerOptions {
  /** 0 picks a free port (read it back from `HttpServer.HttpServer`'s `address`). */
  readonly port: number
  /** Default `127.0.0.1`; `0.0.0.0` listens on every interface. */
  readonly host?: string | undefined
}

/** The URL a client uses for a bound address. */
export const serverUrl = (address: HttpServer.Address): string =>
  address._tag === "UnixAddress"
    ? `unix://${address.path}`
    : `http://${address.hostname === "0.0.0.0" ? "localhost" : address.hostname}:${address.port}`

/**
 * The API served over HTTP with its OpenAPI document (`/openapi.json`) and page (`/docs`); logs
 * the URL it serves. Exposes the `HttpServer`, so a caller can read the bound port.
 */
export const serverLayer = (
  options: ServerOptions
): Layer.Layer<HttpServer.HttpServer, HttpServerError.ServeError, QueueManager | TaskStore> =>
  HttpApiBuilder.serve().pipe(
    Layer.provide(HttpApiSwagger.layer({ path: "/docs" })),
    Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
    Layer.provide(ApiLive),
    // find-my-way's default (100) would 404 a valid task id of 101 to 200 characters.
    Layer.provide(HttpRouter.setRouterConfig({ maxParamLength: maxPathParamLength })),
    Layer.provideMerge(
      Layer.effectDiscard(
        HttpServer.addressWith((address) => Effect.log(`task API on ${serverUrl(address)} (docs: /docs)`))
      )
    ),
    Layer.provideMerge(
      NodeHttpServer.layer(createServer, { port: options.port, host: options.host ?? "127.0.0.1" })
    )
  )

/** The `Config` of the server: `PORT` (default 3000; 0 picks a free port) and `HOST` (default 127.0.0.1). */
export const serverConfig: Config.Config<ServerOptions> = Config.all({
  port: Config.integer("PORT").pipe(
    Config.validate({
      message: "PORT must be an integer from 0 to 65535 (0: any free port)",
      validation: (port) => port >= 0 && port <= 65535
    }),
    Config.withDefault(3000)
  ),
  host: Config.string("HOST").pipe(Config.withDefault("127.0.0.1"))
})

/** {@link serverLayer} configured by the environment. */
export const ServerLive = Layer.unwrapEffect(Effect.map(serverConfig, serverLayer))

const warnIfAlone = Layer.effectDiscard(
  Effect.flatMap(QueueManager, (queue) =>
    queue.backend === "memory"
      ? Effect.logWarning(
          "the memory backend lives in this process and no worker runs here: tasks will wait forever; use `npm start` (API + worker) or QUEUE_BACKEND=redis|rabbitmq"
        )
      : Effect.void
  )
)

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  Layer.mergeAll(ServerLive, warnIfAlone).pipe(
    Layer.provide([QueueManager.layerConfig, TaskStore.layerConfig]),
    Layer.launch,
    NodeRuntime.runMain
  )
}

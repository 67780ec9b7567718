/**
 * The operations CLI: look at a queue, clear it, list and re-queue dead letters, push a task.
 * It works on the queue named by the environment, as the worker and the server do:
 *
 *   QUEUE_BACKEND=redis QUEUE_NAME=tasks npx tsx programs/cli.ts stats
 *
 * Output is plain for scripts: a number, a task id, or one line of JSON; errors go to stderr
 * with exit code 1.
 *
 * @since 0.1.0
 */
import { Args, Command, Options, ValidationError } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Console, Data, Effect, Layer, Option, ParseResult, Predicate, Schema } from "effect"
import { QueueManager, queueConfig } from "../src/QueueManager.js"
import { defaultPriority } from "../src/Task.js"
import { TaskStore } from "../src/TaskStore.js"
import { listDeadLetters, queueView, retryDeadTask, submitTask } from "./server.js"

/** A command could not do what was asked; the message says why. */
export class CliFailure extends Data.TaggedError("CliFailure")<{ readonly message: string }> {}

const memoryRefusal = new CliFailure({
  message:
    "QUEUE_BACKEND is memory (the default): that queue lives inside the process that made it, so this CLI would only see an empty queue of its own. Set QUEUE_BACKEND=redis or rabbitmq (with REDIS_URL or RABBITMQ_URL, and QUEUE_NAME) to work on a shared queue."
})

/** The queue of the environment; refused on the memory backend. */
const QueueLive = Layer.unwrapEffect(
  Effect.flatMap(queueConfig, (options) =>
    options.backend === "memory" ? Effect.fail(memoryRefusal) : Effect.succeed(QueueManager.layer(options))
  )
)

/** The queue and the task store of the environment. */
const QueueAndStoreLive = Layer.merge(QueueLive, TaskStore.layerConfig)

const printJson = (value: unknown) => Console.log(JSON.stringify(value))

const length = Command.make("length", {}, () =>
  Effect.flatMap(QueueManager, (queue) => queue.length).pipe(
    Effect.flatMap(Console.log),
    Effect.provide(QueueLive)
  )
).pipe(Command.withDescription("Print how many tasks wait to run (pending + delayed)."))

const stats = Command.make("stats", {}, () =>
  queueView.pipe(Effect.flatMap(printJson), Effect.provide(QueueLive))
).pipe(
  Command.withDescription(
    'Print the queue\'s counts as JSON: {"name","pending","in_flight","delayed","dead"}.'
  )
)

const clear = Command.make("clear", {}, () =>
  Effect.flatMap(QueueManager, (queue) => queue.clear).pipe(
    Effect.flatMap(Console.log),
    Effect.provide(QueueLive)
  )
).pipe(Command.withDescription("Remove the waiting tasks; print how many. In-flight and dead tasks stay."))

const limit = Options.integer("limit").pipe(
  Options.withDefault(100),
  Options.withDescription("at most this many, oldest first")
)

const deadList = Command.make("list", { limit }, ({ limit }) =>
  Effect.gen(function* () {
    if (limit < 1) return yield* new CliFailure({ message: "--limit must be at least 1" })
    yield* printJson(yield* listDeadLetters(limit))
  }).pipe(Effect.provide(QueueLive))
).pipe(
  Command.withDescription(
    "Print the dead letters as a JSON array of {task_id, error, attempts, dead_at, priority?, data?}."
  )
)

const taskId = Args.text({ name: "task_id" }).pipe(Args.withDescription("the task's id"))

const deadRetry = Command.make("retry", { taskId }, ({ taskId }) =>
  retryDeadTask(taskId).pipe(
    Effect.filterOrFail(
      (retried) => retried,
      () => new CliFailure({ message: `no dead letter ${taskId} in this queue` })
    ),
    Effect.zipRight(Console.log(taskId)),
    Effect.provide(QueueAndStoreLive)
  )
).pipe(
  Command.withDescription("Put a dead letter back in the queue (its record PENDING again); print its id.")
)

const dead = Command.make("dead").pipe(
  Command.withDescription("Dead letters: tasks that failed every attempt."),
  Command.withSubcommands([deadList, deadRetry])
)

const parseJson = Schema.decodeUnknown(Schema.parseJson())

const push = Command.make(
  "push",
  {
    priority: Options.integer("priority").pipe(
      Options.withAlias("p"),
      Options.withDefault(defaultPriority),
      Options.withDescription("0..10, 10 most urgent")
    ),
    taskId,
    data: Args.text({ name: "json-data" }).pipe(Args.withDescription("the task's data, as JSON"))
  },
  ({ data, priority, taskId }) =>
    parseJson(data).pipe(
      Effect.mapError(
        (error) =>
          new CliFailure({
            message: `json-data is not valid JSON: ${ParseResult.ArrayFormatter.formatErrorSync(error)
              .map((issue) => issue.message)
              .join("; ")}`
          })
      ),
      Effect.flatMap((json) =>
        submitTask({ taskId, data: json, priority }).pipe(Effect.provide(QueueAndStoreLive))
      ),
      Effect.flatMap(Console.log)
    )
).pipe(Command.withDescription("Submit a task, as POST /tasks does; print its id."))

const root = Command.make("effect-task-queue").pipe(
  Command.withDescription(
    "Operate a task queue. The queue comes from the environment: QUEUE_BACKEND (redis | rabbitmq), QUEUE_NAME (default tasks), REDIS_URL, RABBITMQ_URL, TASK_STORE. The memory backend is refused: it lives inside one process, so a CLI process would only see an empty queue of its own."
  ),
  Command.withSubcommands([length, stats, clear, dead, push])
)

const describe = (error: unknown): string =>
  Predicate.hasProperty(error, "message") && typeof error.message === "string" && error.message !== ""
    ? error.message
    : String(error)

/** Prints a failure as one line on stderr (the CLI prints its own usage errors). */
const report = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.tapErrorCause(self, (cause) => {
    if (Cause.isInterruptedOnly(cause)) return Effect.void
    return Option.match(Cause.failureOption(cause), {
      onNone: () => Console.error(Cause.pretty(cause)),
      onSome: (error) =>
        ValidationError.isValidationError(error) ? Effect.void : Console.error(`error: ${describe(error)}`)
    })
  })

Command.run(root, { name: "effect-task-queue", version: "0.1.0" })(process.argv).pipe(
  report,
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true })
)

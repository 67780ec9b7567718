/**
 * Pipelines: the typed work a worker runs on each task. A pipeline decodes the task's data with
 * its schema and runs an Effect on it; steps compose with ordinary Effect combinators.
 *
 * ```ts
 * const resize = Pipeline.make({
 *   schema: Schema.Struct({ url: Schema.String, width: Schema.Int }),
 *   run: ({ url, width }) => fetchImage(url).pipe(Effect.flatMap(scaleTo(width)), Effect.map(store))
 * })
 * const PipelineLive = Pipeline.layer(resize) // needs what `run` needs
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Either, Layer, ParseResult, Predicate, Schema } from "effect"
import { isJsonValue, type JsonValue, type TaskMessage } from "./Task.js"

/** The task's data failed the pipeline's schema: a permanent failure, never retried. */
export class InvalidTaskData extends Schema.TaggedError<InvalidTaskData>()("InvalidTaskData", {
  taskId: Schema.String,
  message: Schema.String
}) {}

/**
 * Fail a task with this to skip the remaining retries and dead-letter it at once (as BullMQ's
 * `UnrecoverableError` or Celery's `Reject`).
 */
export class UnrecoverableError extends Schema.TaggedError<UnrecoverableError>()("UnrecoverableError", {
  message: Schema.String
}) {}

/** How a task's run failed, as the worker sees it: retry it, unless `permanent`. */
export class TaskFailed extends Schema.TaggedError<TaskFailed>()("TaskFailed", {
  message: Schema.String,
  permanent: Schema.Boolean,
  cause: Schema.optional(Schema.Defect)
}) {}

/** A typed pipeline from decoded data `I` to a result `A`. */
export interface Definition<I, A, E, R> {
  /** Decodes (and validates) the task's data. */
  // biome-ignore lint/suspicious/noExplicitAny: any encoded form; only the decoded type matters
  readonly schema: Schema.Schema<I, any, never>
  /** The work; `message` gives the task id, priority and attempt. */
  readonly run: (data: I, message: TaskMessage) => Effect.Effect<A, E, R>
  /** Names the pipeline in logs and spans; default `"pipeline"`. */
  readonly name?: string | undefined
}

/** Builds a pipeline; the identity, for type inference. */
export const make = <I, A, E, R>(definition: Definition<I, A, E, R>): Definition<I, A, E, R> => definition

/** A readable message for any failure a pipeline may produce. */
export const describeFailure = (error: unknown): string => {
  if (ParseResult.isParseError(error)) return ParseResult.TreeFormatter.formatErrorSync(error)
  if (Predicate.hasProperty(error, "message") && typeof error.message === "string" && error.message !== "") {
    return Predicate.hasProperty(error, "_tag") && typeof error._tag === "string"
      ? `${error._tag}: ${error.message}`
      : error.message
  }
  if (Predicate.hasProperty(error, "_tag") && typeof error._tag === "string") return error._tag
  return String(error)
}

/** The pipeline a worker runs, with its requirements already provided. */
export interface PipelineService {
  readonly name: string
  /** Decodes the data, runs the pipeline and checks that the result is JSON. */
  readonly run: (message: TaskMessage) => Effect.Effect<JsonValue, TaskFailed>
  /**
   * The same run before its requirements are provided, with the context that provides them: a
   * runner serving many tasks provides `context` once around all of them, where `run` provides it
   * on every call (a context merge per task).
   */
  readonly unprovided?: UnprovidedRun | undefined
}

/** A pipeline's run without its requirements, and the context that provides them. */
export interface UnprovidedRun {
  readonly context: Context.Context<unknown>
  readonly run: (message: TaskMessage) => Effect.Effect<JsonValue, TaskFailed, unknown>
}

/** The `Pipeline` service the worker runs. */
export class Pipeline extends Context.Tag("effect-task-queue/Pipeline")<Pipeline, PipelineService>() {
  /** Builds a pipeline (see {@link make}): `Pipeline.make({ schema, run })`. */
  static make = make

  /** Provides a pipeline as the `Pipeline` service; its requirements come from the layer's context, once. */
  static layer = <I, A, E, R>(definition: Definition<I, A, E, R>): Layer.Layer<Pipeline, never, R> =>
    Layer.effect(
      Pipeline,
      Effect.map(Effect.context<R>(), (context): PipelineService => {
        const decodeSync = Schema.decodeUnknownEither(definition.schema)
        const decode = Schema.decodeUnknown(definition.schema)
        const name = definition.name ?? "pipeline"
        const invalid = (message: TaskMessage, error: ParseResult.ParseError) =>
          new TaskFailed({
            message: `invalid task data: ${ParseResult.TreeFormatter.formatErrorSync(error)}`,
            permanent: true,
            cause: new InvalidTaskData({ taskId: message.taskId, message: error.message })
          })
        const checked = (result: unknown): Effect.Effect<JsonValue, TaskFailed> =>
          result === undefined
            ? Effect.succeed(null)
            : isJsonValue(result)
              ? Effect.succeed(result)
              : Effect.fail(
                  new TaskFailed({ message: "the pipeline's result is not plain JSON", permanent: true })
                )
        const runDecoded = (data: I, message: TaskMessage) =>
          Effect.matchEffect(definition.run(data, message), {
            onFailure: (error) =>
              Effect.fail(
                new TaskFailed({
                  message: describeFailure(error),
                  permanent: error instanceof UnrecoverableError,
                  cause: error
                })
              ),
            onSuccess: checked
          })
        // Decoded without an effect of its own when the schema is synchronous (most are); data that
        // fails (or a schema that needs an effect) goes through the effectful decoder, which says why.
        const unprovided = (message: TaskMessage) => {
          const decoded = decodeSync(message.data)
          return Either.isRight(decoded)
            ? runDecoded(decoded.right, message)
            : Effect.matchEffect(decode(message.data), {
                onFailure: (error) => Effect.fail(invalid(message, error)),
                onSuccess: (data) => runDecoded(data, message)
              })
        }
        return {
          name,
          run: (message: TaskMessage) => Effect.provide(unprovided(message), context),
          // The service type cannot carry R: the pair is erased to `unknown`, which `context` provides.
          unprovided: { context: context as Context.Context<unknown>, run: unprovided }
        }
      })
    )
}

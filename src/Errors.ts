/**
 * The typed errors of the library. Each is a `Schema.TaggedError`, so it can be stored with a
 * task and sent over the wire.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/** The backend failed or could not be reached; the operation may or may not have taken effect only where said. */
export class QueueError extends Schema.TaggedError<QueueError>()("QueueError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** A task was rejected before reaching any backend: bad id, priority or data. Nothing was enqueued. */
export class InvalidTask extends Schema.TaggedError<InvalidTask>()("InvalidTask", {
  message: Schema.String,
  taskId: Schema.optional(Schema.String)
}) {}

/**
 * An ack, nack or lease extension came from a holder whose lease is gone: it expired and the task
 * was handed out again (or finished) meanwhile. The late call changed nothing.
 */
export class LeaseLost extends Schema.TaggedError<LeaseLost>()("LeaseLost", {
  taskId: Schema.String,
  message: Schema.String
}) {}

/** A task store already holds a record with this id. */
export class DuplicateTask extends Schema.TaggedError<DuplicateTask>()("DuplicateTask", {
  taskId: Schema.String,
  message: Schema.String
}) {}

/**
 * The task domain: ids, priorities, the message a queue carries and the record a store keeps.
 *
 * TypeScript uses camelCase; the JSON on the wire and in the stores uses the snake_case keys of
 * the original module (`task_id`, `enqueued_at`, ...). The schemas here do that mapping.
 *
 * @since 0.1.0
 */
import { Schema } from "effect"

/** Largest accepted task id, in characters. */
export const maxTaskIdLength = 200

/** Largest accepted task data, in bytes of its JSON encoding (1 MiB). */
export const maxDataBytes = 1024 * 1024

/** Lowest and highest priority; 10 is the most urgent. */
export const minPriority = 0
export const maxPriority = 10

/** The priority a task gets when none is given. */
export const defaultPriority = 5

// biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to reject them
const controlCharacters = /[\u0000-\u001f\u007f-\u009f]/

/** A task id: 1 to 200 characters, none of them a control character. */
export const TaskId = Schema.String.pipe(
  Schema.minLength(1, { message: () => "task id must not be empty" }),
  Schema.maxLength(maxTaskIdLength, {
    message: () => `task id must be at most ${maxTaskIdLength} characters`
  }),
  Schema.filter((id) => !controlCharacters.test(id) || "task id must not contain control characters"),
  Schema.brand("TaskId")
)

/** A validated task id. */
export type TaskId = typeof TaskId.Type

/** True when `id` is a valid {@link TaskId}: the schema's checks, without building a parse tree. */
export const isTaskId = (id: unknown): id is TaskId =>
  typeof id === "string" && id.length >= 1 && id.length <= maxTaskIdLength && !controlCharacters.test(id)

/** A priority: an integer from 0 to 10, 10 being the most urgent. */
export const Priority = Schema.Number.pipe(
  Schema.int({ message: () => "priority must be an integer from 0 to 10" }),
  Schema.between(minPriority, maxPriority, { message: () => "priority must be an integer from 0 to 10" }),
  Schema.brand("Priority")
)

/** A validated priority. */
export type Priority = typeof Priority.Type

/** A JSON value: what task data may be. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | ReadonlyArray<JsonValue>
  | { readonly [key: string]: JsonValue }

const maxJsonDepth = 256

/**
 * JSON text shorter than this cannot nest deeper than {@link isJsonValue} allows (each level takes
 * an opening and a closing bracket): what `JSON.parse` makes of it needs no walk to be checked.
 */
export const shallowJsonLength = 2 * (maxJsonDepth + 1)

const isPlainObject = (value: object): value is Record<string, unknown> => {
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

/** A JSON scalar: a string, a boolean, a finite number or `null`. */
const isJsonScalar = (value: unknown): boolean =>
  typeof value === "string" ||
  typeof value === "boolean" ||
  value === null ||
  (typeof value === "number" && Number.isFinite(value))

/**
 * `value` is JSON; `path` holds the objects above it, to refuse cycles (made at the first nested
 * object, since data without one cannot hold a cycle).
 */
const isJsonAt = (value: unknown, depth: number, path: Set<object> | undefined): boolean => {
  if (typeof value !== "object" || value === null) return isJsonScalar(value)
  if (depth > maxJsonDepth || path?.has(value)) return false
  const items = Array.isArray(value) ? value : isPlainObject(value) ? Object.values(value) : undefined
  if (items === undefined) return false
  let below = path
  let ok = true
  for (let i = 0; ok && i < items.length; i++) {
    if (!(i in items)) continue // a hole of a sparse array: nothing to check
    const item: unknown = items[i]
    if (typeof item !== "object" || item === null) {
      ok = isJsonScalar(item)
      continue
    }
    below ??= new Set()
    below.add(value)
    ok = isJsonAt(item, depth + 1, below)
  }
  below?.delete(value)
  return ok
}

/**
 * True when `value` is plain JSON that survives `JSON.stringify` / `JSON.parse` unchanged:
 * no functions, BigInts, symbols, `undefined`, non-finite numbers, class instances or cycles.
 */
export const isJsonValue = (value: unknown): value is JsonValue => isJsonAt(value, 0, undefined)

/** Task data: any plain JSON value (see {@link isJsonValue}). */
export const TaskData: Schema.Schema<JsonValue> = Schema.declare(isJsonValue, {
  identifier: "JsonValue",
  message: () =>
    "task data must be plain JSON (no functions, BigInts, undefined, NaN, class instances or cycles)"
})

/** The status of a task, as the store records it. */
export const TaskStatus = Schema.Literal("PENDING", "PROCESSING", "RETRYING", "COMPLETED", "FAILED")

/** The status of a task. */
export type TaskStatus = typeof TaskStatus.Type

/**
 * The body of a queued task as it is stored on a broker: `{ task_id, data, priority, enqueued_at }`
 * (`enqueued_at` in epoch milliseconds). The attempt number is kept by the backend beside it.
 */
export const WireBody = Schema.Struct({
  taskId: Schema.propertySignature(TaskId).pipe(Schema.fromKey("task_id")),
  data: TaskData,
  priority: Priority,
  enqueuedAt: Schema.propertySignature(Schema.Number).pipe(Schema.fromKey("enqueued_at"))
})

/** The decoded body of a queued task. */
export type WireBody = typeof WireBody.Type

/** A task as a puller sees it: its body plus the attempt this delivery is (1 for the first). */
export class TaskMessage extends Schema.Class<TaskMessage>("TaskMessage")({
  taskId: TaskId,
  data: TaskData,
  priority: Priority,
  attempt: Schema.Int.pipe(Schema.positive()),
  enqueuedAt: Schema.Number
}) {}

/**
 * A `TaskMessage` of fields already checked: the object `new TaskMessage(fields, { disableValidation:
 * true })` builds (same prototype, same own fields in the same order), without its copy and
 * default-merging passes, which cost more than the rest of a memory-backend pull.
 */
export const unsafeTaskMessage = (fields: {
  readonly taskId: TaskId
  readonly data: JsonValue
  readonly priority: Priority
  readonly enqueuedAt: number
  readonly attempt: number
}): TaskMessage => Object.assign(Object.create(TaskMessage.prototype), fields)

/** The record of a task kept by a `TaskStore`. Times are epoch milliseconds. */
export class TaskRecord extends Schema.Class<TaskRecord>("TaskRecord")({
  taskId: TaskId,
  status: TaskStatus,
  priority: Priority,
  attempts: Schema.Int.pipe(Schema.nonNegative()),
  createdAt: Schema.Number,
  updatedAt: Schema.Number,
  result: Schema.optional(TaskData),
  error: Schema.optional(Schema.String)
}) {}

/**
 * A `TaskRecord` of fields already checked, as {@link unsafeTaskMessage} is for messages: the object
 * `new TaskRecord(fields, { disableValidation: true })` builds, without its copy and
 * default-merging passes (a memory store builds one per transition).
 */
export const unsafeTaskRecord = (fields: {
  readonly taskId: TaskId
  readonly status: TaskStatus
  readonly priority: Priority
  readonly attempts: number
  readonly createdAt: number
  readonly updatedAt: number
  readonly result?: JsonValue
  readonly error?: string
}): TaskRecord => Object.assign(Object.create(TaskRecord.prototype), fields)

/** The JSON form of a {@link TaskRecord}, with the wire's snake_case keys. */
export const TaskRecordJson = Schema.Struct({
  taskId: Schema.propertySignature(TaskId).pipe(Schema.fromKey("task_id")),
  status: TaskStatus,
  priority: Priority,
  attempts: Schema.Int.pipe(Schema.nonNegative()),
  createdAt: Schema.propertySignature(Schema.Number).pipe(Schema.fromKey("created_at")),
  updatedAt: Schema.propertySignature(Schema.Number).pipe(Schema.fromKey("updated_at")),
  result: Schema.optional(TaskData),
  error: Schema.optional(Schema.String)
})

/**
 * The embedded task store: records in this process's memory, timed by Effect's `Clock`.
 * Finished records are dropped once older than the retention.
 *
 * @since 0.1.0
 */
import { Clock, Config, type ConfigError, Duration, Effect, Layer, Option } from "effect"
import { DuplicateTask } from "../src/Errors.js"
import type { Priority, TaskId, TaskRecord, TaskStatus } from "../src/Task.js"
import { unsafeTaskRecord } from "../src/Task.js"
import {
  defaultRetention,
  type LeaseInfo,
  type Outcome,
  type StartResult,
  started,
  TaskStore,
  type TaskStoreService
} from "../src/TaskStore.js"

/** Options of the memory task store. */
export interface MemoryTaskStoreOptions {
  /** How long COMPLETED and FAILED records are kept; default 7 days. */
  readonly retention?: Duration.DurationInput | undefined
}

interface Slot {
  record: TaskRecord
  token: string
}

/** A fresh in-memory task store. */
export const make = (options: MemoryTaskStoreOptions = {}): Effect.Effect<TaskStoreService> =>
  Effect.sync(() => {
    const retentionMillis = Duration.toMillis(options.retention ?? defaultRetention)
    const slots = new Map<string, Slot>()
    /** Finished records in the order they expire (the retention is constant). */
    const expiries: Array<{ readonly at: number; readonly taskId: string; readonly record: TaskRecord }> = []
    let expired = 0

    const sweep = (now: number) => {
      while (expired < expiries.length && expiries[expired]!.at <= now) {
        const { record, taskId } = expiries[expired++]!
        if (slots.get(taskId)?.record === record) slots.delete(taskId)
      }
      if (expired > 1024 && expired * 2 > expiries.length) {
        expiries.splice(0, expired)
        expired = 0
      }
    }

    const update = (
      slot: Slot,
      now: number,
      fields: Outcome | { readonly status: TaskStatus; readonly attempts: number }
    ) => {
      const { result: _r, error: _e, ...rest } = slot.record
      slot.record = unsafeTaskRecord({ ...rest, ...fields, updatedAt: now })
      if (slot.record.status === "COMPLETED" || slot.record.status === "FAILED") {
        expiries.push({ at: now + retentionMillis, taskId: slot.record.taskId, record: slot.record })
      }
    }

    const withNow = <A>(f: (now: number) => A) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        sweep(now)
        return f(now)
      })

    const startOne = (taskId: string, lease: LeaseInfo, now: number): StartResult => {
      const slot = slots.get(taskId)
      if (slot === undefined) {
        const record = unsafeTaskRecord({
          taskId: taskId as TaskId,
          status: "PROCESSING",
          priority: lease.priority as Priority,
          attempts: lease.attempt,
          createdAt: now,
          updatedAt: now
        })
        slots.set(taskId, { record, token: lease.token })
        return started
      }
      if (slot.record.status === "COMPLETED" || slot.record.status === "FAILED") {
        return { _tag: "Finished", record: slot.record }
      }
      slot.token = lease.token
      update(slot, now, { status: "PROCESSING", attempts: lease.attempt })
      return started
    }

    const finishOne = (taskId: string, token: string, outcome: Outcome, now: number) => {
      const slot = slots.get(taskId)
      if (slot === undefined || slot.token !== token) return false
      update(slot, now, outcome)
      return true
    }

    return {
      create: (taskId, priority) =>
        Effect.flatMap(
          withNow((now) => {
            if (slots.has(taskId)) return undefined
            const record = unsafeTaskRecord({
              taskId: taskId as TaskId,
              status: "PENDING",
              priority: priority as Priority,
              attempts: 0,
              createdAt: now,
              updatedAt: now
            })
            slots.set(taskId, { record, token: "" })
            return record
          }),
          (record) =>
            record === undefined
              ? Effect.fail(new DuplicateTask({ taskId, message: `task ${taskId} is already known` }))
              : Effect.succeed(record)
        ),
      get: (taskId) =>
        withNow(() => Option.map(Option.fromNullable(slots.get(taskId)), (slot) => slot.record)),
      start: (taskId, lease) => withNow((now) => startOne(taskId, lease, now)),
      startMany: (starts) =>
        withNow((now) => starts.map(({ lease, taskId }) => startOne(taskId, lease, now))),
      finish: (taskId, token, outcome) => withNow((now) => finishOne(taskId, token, outcome, now)),
      release: (taskId, token) =>
        withNow((now) => {
          const slot = slots.get(taskId)
          if (slot === undefined || slot.token !== token || slot.record.status !== "PROCESSING") return false
          slot.token = ""
          update(slot, now, { status: "PENDING", attempts: Math.max(0, slot.record.attempts - 1) })
          return true
        }),
      finishMany: (outcomes) =>
        withNow((now) =>
          outcomes.map(({ outcome, taskId, token }) => finishOne(taskId, token, outcome, now))
        ),
      reset: (taskId) =>
        withNow((now) => {
          const slot = slots.get(taskId)
          if (slot === undefined) return false
          slot.token = ""
          update(slot, now, { status: "PENDING", attempts: 0 })
          return true
        })
    }
  })

/** Provides `TaskStore` from a fresh in-memory store. */
export const layer = (options: MemoryTaskStoreOptions = {}): Layer.Layer<TaskStore> =>
  Layer.effect(TaskStore, make(options))

/** As {@link layer}, configured by `TASK_RETENTION`. */
export const layerConfig: Layer.Layer<TaskStore, ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(Config.duration("TASK_RETENTION").pipe(Config.withDefault(defaultRetention)), (retention) =>
    layer({ retention })
  )
)

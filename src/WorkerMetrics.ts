/**
 * The metrics a `TaskWorker` updates, for host applications to read or export (each is tagged
 * with `queue` = the queue's name by the worker that updates it).
 *
 * @since 0.1.0
 */
import { Metric, MetricBoundaries } from "effect"

/** Deliveries whose pipeline started running. */
export const tasksStarted = Metric.counter("task_worker_tasks_started", {
  description: "deliveries whose pipeline started running",
  incremental: true
})

/** Tasks recorded COMPLETED and acknowledged. */
export const tasksCompleted = Metric.counter("task_worker_tasks_completed", {
  description: "tasks recorded COMPLETED and acknowledged",
  incremental: true
})

/** Failed runs given back to the queue for a later attempt. */
export const tasksRetried = Metric.counter("task_worker_tasks_retried", {
  description: "failed runs given back to the queue for a later attempt",
  incremental: true
})

/** Tasks recorded FAILED and dead-lettered (out of attempts, permanent failure or shutdown timeout). */
export const tasksFailed = Metric.counter("task_worker_tasks_failed", {
  description: "tasks recorded FAILED and dead-lettered",
  incremental: true
})

/** Results thrown away because another delivery of the task had started (the lease was lost). */
export const tasksDiscarded = Metric.counter("task_worker_tasks_discarded", {
  description: "results discarded because another delivery of the task had started",
  incremental: true
})

/** Pulls that failed (backend outage); the worker backs off and pulls again. */
export const pullErrors = Metric.counter("task_worker_pull_errors", {
  description: "pulls that failed; the worker backs off and retries",
  incremental: true
})

/** How long a task's pipeline ran, in milliseconds (1 ms to about 4.7 hours, doubling buckets). */
export const taskDuration = Metric.histogram(
  "task_worker_task_duration_ms",
  MetricBoundaries.exponential({ start: 1, factor: 2, count: 24 }),
  "how long a task's pipeline ran, in milliseconds"
)

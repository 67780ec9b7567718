/**
 * Our `TaskWorker` under measurement: a no-op `Pipeline` (decodes the payload with its schema,
 * returns nothing), the task store the backend goes with (memory for memory, Redis for Redis,
 * memory for RabbitMQ: the store default when the queue is not on Redis), and its own
 * `QueueManager`, as a worker process would have.
 *
 * @since 0.1.0
 */
import { Deferred, Effect, Exit, Layer, Runtime, Schema, Scope } from "effect"
import * as Topology from "../../layers/rabbitmq/Topology.js"
import { make as makePipeline, Pipeline } from "../../src/Pipeline.js"
import { QueueManager, type QueueManagerService } from "../../src/QueueManager.js"
import { TaskStore } from "../../src/TaskStore.js"
import { TaskWorker } from "../../src/TaskWorker.js"
import * as BareAmqp from "./BareAmqp.js"
import {
  BenchError,
  type Job,
  NotAvailable,
  type Payload,
  priorityOf,
  type Sample,
  steadyLatency,
  withPeakRss
} from "./Measurement.js"
import { type OurBackend, openQueue, pushAll, requireModule, timed } from "./OurQueue.js"

/** The task store each backend's worker uses in the bench. */
export const storeOf = (backend: OurBackend): "memory" | "redis" => (backend === "redis" ? "redis" : "memory")

const PayloadSchema = Schema.Struct({ i: Schema.Number, sentAt: Schema.Number })

/**
 * A worker on `queue` running a no-op pipeline that calls `onStart` as each task starts; the
 * worker is started in `scope` (closing it is the graceful shutdown).
 */
const startWorker = (
  backend: OurBackend,
  job: Job,
  queue: QueueManagerService,
  onStart: (payload: Payload) => void,
  scope: Scope.Scope
) =>
  Effect.gen(function* () {
    const store = storeOf(backend)
    if (store === "redis") yield* requireModule("layers/RedisTaskStore.ts", "the Redis task store")
    const pipeline = Pipeline.layer(
      makePipeline({
        name: "noop",
        schema: PayloadSchema,
        run: (payload) =>
          Effect.sync(() => {
            onStart(payload)
          })
      })
    )
    const storeLayer = TaskStore.layer({
      backend: store,
      queueName: job.queueName,
      redisUrl: job.settings.redisUrl
    })
    const worker = TaskWorker.layer({ concurrency: job.scenario.concurrency }).pipe(
      Layer.provide(Layer.mergeAll(Layer.succeed(QueueManager, queue), storeLayer, pipeline))
    )
    const context = yield* Layer.buildWithScope(worker, scope).pipe(
      Effect.mapError((error) =>
        /cannot load|not available/.test(error.message)
          ? new NotAvailable({ message: `the ${store} task store: ${error.message}` })
          : new BenchError({ message: `cannot build the worker: ${error.message}`, cause: error })
      )
    )
    return Effect.provide(TaskWorker.start, context).pipe(Scope.extend(scope))
  })

/** Waits until the queue holds nothing pending or in flight (every ack has landed). */
const settled = (queue: QueueManagerService) =>
  Effect.gen(function* () {
    for (;;) {
      const stats = yield* queue.stats
      if (stats.pending === 0 && stats.inFlight === 0) return
      yield* Effect.sleep("1 millis")
    }
  }).pipe(
    Effect.mapError((error) => new BenchError({ message: `stats failed: ${error.message}`, cause: error }))
  )

/**
 * Drains `n` pre-pushed tasks through a `TaskWorker`: from the start of the worker to the last
 * task acknowledged. The worker's connections and store are opened before the clock starts.
 */
export const drain = (
  backend: OurBackend,
  job: Job,
  producer: QueueManagerService
): Effect.Effect<Sample, BenchError | NotAvailable, Scope.Scope> =>
  Effect.gen(function* () {
    const { n } = job.settings
    yield* pushAll(producer, n, 100)
    const consumer = backend === "memory" ? producer : yield* openQueue(backend, job)
    const workerScope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(workerScope, Exit.void))
    const done = yield* Deferred.make<void>()
    let started = 0
    const start = yield* startWorker(
      backend,
      job,
      consumer,
      () => {
        if (++started === n) Deferred.unsafeDone(done, Exit.void)
      },
      workerScope
    )
    const sample = yield* withPeakRss(
      timed(n, start.pipe(Effect.zipRight(Deferred.await(done)), Effect.zipRight(settled(consumer))))
    )
    // The graceful shutdown is not timed, but it must work: a hang here is a finding.
    yield* Scope.close(workerScope, Exit.void).pipe(
      Effect.timeoutFail({
        duration: "30 seconds",
        onTimeout: () => new BenchError({ message: "the worker did not shut down within 30 s" })
      })
    )
    return sample
  })

/** Push-to-start latency through a `TaskWorker` at the steady rate of the settings. */
export const latency = (
  backend: OurBackend,
  job: Job,
  producer: QueueManagerService
): Effect.Effect<Sample, BenchError | NotAvailable, Scope.Scope> =>
  Effect.gen(function* () {
    const consumer = backend === "memory" ? producer : yield* openQueue(backend, job)
    const workerScope = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(workerScope, Exit.void))
    let handler: (payload: Payload) => void = () => {}
    const start = yield* startWorker(backend, job, consumer, (payload) => handler(payload), workerScope)
    yield* start
    const runtime = yield* Effect.runtime<never>()
    const push = (i: number, sentAt: number) =>
      Runtime.runPromise(runtime, producer.push(`t${i}`, { i, sentAt }, priorityOf(i)))
    return yield* Effect.tryPromise({
      try: () =>
        steadyLatency({
          rate: job.settings.rate,
          durationSeconds: job.settings.durationSeconds,
          push,
          onStart: (h) => {
            handler = h
          }
        }),
      catch: (cause) => new BenchError({ message: "the latency run failed", cause })
    })
  })

/** Deletes the broker queues our RabbitMQ backend declares for the measurement's queue. */
export const deleteRabbitQueues = (job: Job) =>
  Effect.scoped(
    Effect.flatMap(BareAmqp.connect(job.settings.rabbitmqUrl), (connection) =>
      BareAmqp.deleteQueues(connection, Topology.allQueues(job.queueName))
    )
  ).pipe(Effect.ignore)

/**
 * The RabbitMQ reference: bare amqplib with the topology our backend uses and nothing else. A
 * durable queue with `x-max-priority: 10`; persistent messages published on a confirm channel
 * (one confirm awaited per message, or `waitForConfirms` per batch); a consumer with
 * `prefetch = concurrency` and one manual ack per message.
 *
 * @since 0.1.0
 */
import amqp from "amqplib"
import { Effect } from "effect"
import {
  BenchError,
  type Job,
  now,
  type Payload,
  priorityOf,
  promisePool,
  type Sample,
  signal,
  timePromise,
  withPeakRss
} from "./Measurement.js"

const failed = (cause: unknown) => new BenchError({ message: "amqplib failed", cause })

/** A connection closed with the scope; connecting is bounded by 5 seconds. */
export const connect = (url: string) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const connection = await amqp.connect(url, { timeout: 5_000 })
        connection.on("error", () => {})
        return connection
      },
      catch: (cause) =>
        new BenchError({ message: `cannot connect to RabbitMQ at ${new URL(url).host}`, cause })
    }),
    (connection) => Effect.promise(() => connection.close().catch(() => undefined))
  )

/** Deletes the broker queues named, on a channel of their own (a failed channel cannot). */
export const deleteQueues = (connection: amqp.ChannelModel, names: ReadonlyArray<string>) =>
  Effect.promise(async () => {
    for (const name of names) {
      const channel = await connection.createChannel().catch(() => undefined)
      if (channel === undefined) return
      channel.on("error", () => {})
      await channel.deleteQueue(name).catch(() => undefined)
      await channel.close().catch(() => undefined)
    }
  })

const content = (i: number) => Buffer.from(JSON.stringify({ i, sentAt: now() } satisfies Payload))

/** Runs one measurement of bare amqplib. */
export const run = (job: Job): Effect.Effect<Sample, BenchError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const { n } = job.settings
      const { concurrency } = job.scenario
      const queue = job.queueName
      const connection = yield* connect(job.settings.rabbitmqUrl)
      yield* Effect.addFinalizer(() => deleteQueues(connection, [queue]))
      const channel = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const channel = await connection.createConfirmChannel()
            channel.on("error", () => {})
            await channel.assertQueue(queue, { durable: true, arguments: { "x-max-priority": 10 } })
            return channel
          },
          catch: failed
        }),
        (channel) => Effect.promise(() => channel.close().catch(() => undefined))
      )
      const publish = (i: number) =>
        new Promise<void>((resolve, reject) => {
          channel.sendToQueue(
            queue,
            content(i),
            {
              persistent: true,
              priority: priorityOf(i),
              messageId: `t${i}`,
              contentType: "application/json"
            },
            (error) => (error ? reject(error) : resolve())
          )
        })
      const publishAll = (batch: number) => async () => {
        for (let i = 0; i < n; i += batch) {
          const end = Math.min(n, i + batch)
          for (let k = i; k < end; k++) {
            channel.sendToQueue(queue, content(k), {
              persistent: true,
              priority: priorityOf(k),
              messageId: `t${k}`,
              contentType: "application/json"
            })
          }
          await channel.waitForConfirms()
        }
      }
      const timed = (f: () => Promise<unknown>) =>
        Effect.tryPromise({ try: () => timePromise(n, f), catch: failed })

      switch (job.scenario.kind) {
        case "push":
          return yield* timed(() => promisePool(n, concurrency, publish))
        case "batch":
          return yield* timed(publishAll(concurrency))
        case "queue": {
          yield* Effect.tryPromise({ try: publishAll(100), catch: failed })
          const consumer = yield* Effect.acquireRelease(
            Effect.tryPromise({
              try: async () => {
                const consumer = await connection.createChannel()
                consumer.on("error", () => {})
                await consumer.prefetch(concurrency)
                return consumer
              },
              catch: failed
            }),
            (consumer) => Effect.promise(() => consumer.close().catch(() => undefined))
          )
          const done = signal()
          let acked = 0
          return yield* withPeakRss(
            timed(async () => {
              await consumer.consume(
                queue,
                (message) => {
                  if (message === null) return
                  JSON.parse(message.content.toString())
                  consumer.ack(message)
                  if (++acked === n) done.resolve()
                },
                { noAck: false }
              )
              await done.promise
            })
          )
        }
        default:
          return yield* new BenchError({ message: `bare amqplib does not run ${job.scenario.kind}` })
      }
    })
  )

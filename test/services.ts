/**
 * Reachability of the real servers the integration suites talk to. Under `CI=true` an
 * unreachable server fails the suite; elsewhere the suite is skipped with a loud warning.
 */
import { connect } from "node:net"
import { describe } from "@effect/vitest"
import { Effect } from "effect"
import { Redis } from "ioredis"

/** Redis for the tests; `REDIS_URL` overrides. */
export const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379"

/** RabbitMQ for the tests; `RABBITMQ_URL` overrides. */
export const rabbitmqUrl = process.env.RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672"

const reachable = (url: string) =>
  new Promise<boolean>((resolve) => {
    const { hostname, port } = new URL(url)
    const socket = connect({ host: hostname, port: Number(port) })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(2_000, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

/**
 * `describe` for a suite that needs the server at `url`: it runs when the server answers, fails
 * under `CI=true` when it does not, and is skipped with a warning otherwise.
 */
export const describeWithServer = async (service: string, url: string, name: string, body: () => void) => {
  if (await reachable(url)) return describe(name, body)
  if (process.env.CI === "true") {
    return describe(name, () => {
      throw new Error(
        `${service} is not reachable at ${new URL(url).host}, and CI=true: integration suites must run`
      )
    })
  }
  console.warn(`\n!!! ${service} is not reachable at ${new URL(url).host}: skipping "${name}"\n`)
  return describe.skip(name, body)
}

/** A plain Redis connection for looking at what a test wrote, closed with the scope. */
export const rawRedis = Effect.acquireRelease(
  Effect.sync(() => new Redis(redisUrl, { lazyConnect: false, maxRetriesPerRequest: 1 })),
  (client) => Effect.promise(() => client.quit())
)

/** Deletes every key of a queue (and its task records) on the test Redis. */
export const deleteRedisKeys = (queueName: string) =>
  Effect.scoped(
    Effect.flatMap(rawRedis, (client) =>
      Effect.promise(async () => {
        const keys = await client.keys(`{${queueName}}:*`)
        if (keys.length > 0) await client.del(...keys)
      })
    )
  )

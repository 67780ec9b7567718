import { describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { QueueManager, type QueueOptions } from "../src/QueueManager.js"
import { uniqueQueueName } from "./conformance.js"
import { runScenario, scenario } from "./queueModel.js"
import { describeWithServer, redisUrl } from "./services.js"

const property = (
  options: Omit<QueueOptions, "queueName">,
  numRuns: number,
  cleanup: (queueName: string) => Effect.Effect<void>
) =>
  it.live.prop(
    "behaves like the reference model for any sequence of operations",
    [scenario(40)],
    ([commands]) => {
      const queueName = uniqueQueueName(`prop-${options.backend}`)
      return QueueManager.pipe(
        Effect.flatMap((queue) => runScenario(queue, commands)),
        Effect.provide(QueueManager.layer({ ...options, queueName })),
        Effect.ensuring(cleanup(queueName))
      )
    },
    { timeout: 120_000, fastCheck: { numRuns } }
  )

describe("memory queue", () => {
  property({ backend: "memory" }, 200, () => Effect.void)
})

await describeWithServer("Redis", redisUrl, "redis queue", () => {
  property({ backend: "redis", redisUrl }, 40, (queueName) =>
    Effect.promise(async () => {
      const { Redis } = await import("ioredis")
      const client = new Redis(redisUrl)
      const keys = await client.keys(`{${queueName}}:*`)
      if (keys.length > 0) await client.del(...keys)
      await client.quit()
    })
  )
})

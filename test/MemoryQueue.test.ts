import { Effect, Layer } from "effect"
import { makeBackend } from "../layers/MemoryQueue.js"
import type { QueueBackend } from "../src/QueueBackend.js"
import * as QM from "../src/QueueManager.js"
import { conformance } from "./conformance.js"

const backends = new Map<string, QueueBackend>()

const backendFor = (queueName: string, leaseDuration: Parameters<typeof makeBackend>[0]) => {
  const backend = backends.get(queueName) ?? makeBackend(leaseDuration)
  backends.set(queueName, backend)
  return backend
}

conformance({
  name: "memory",
  layer: (queueName, { leaseDuration }) =>
    Layer.sync(QM.QueueManager, () =>
      QM.make({ queueName, backend: backendFor(queueName, leaseDuration), leaseDuration })
    ),
  plant: (queueName, id, priority, body) =>
    backendFor(queueName, "30 seconds").offer([{ id, priority, body }]),
  cleanup: (queueName) => Effect.sync(() => backends.delete(queueName))
})

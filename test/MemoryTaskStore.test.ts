import { Effect, TestClock } from "effect"
import * as MemoryTaskStore from "../layers/MemoryTaskStore.js"
import { taskStoreConformance } from "./taskStoreConformance.js"

taskStoreConformance({
  name: "memory",
  layer: (_queueName, retention) => MemoryTaskStore.layer({ retention }),
  live: false,
  elapse: (duration) => TestClock.adjust(duration),
  cleanup: () => Effect.void
})

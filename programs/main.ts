/**
 * `npm start`: for now, the priority demo on the embedded backend.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { QueueManager } from "../src/QueueManager.js"
import { demo } from "./demo.js"

demo.pipe(Effect.provide(QueueManager.layerConfig), NodeRuntime.runMain)

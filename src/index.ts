/**
 * The public entry point: the services, their domain and their errors. Backend modules are
 * imported from `effect-task-queue/layers/<Name>` when a host wants to name one directly.
 *
 * @since 0.1.0
 */
export * from "./Errors.js"
export * as Pipeline from "./Pipeline.js"
export * as QueueManager from "./QueueManager.js"
export * as Task from "./Task.js"
export * as TaskStore from "./TaskStore.js"

/**
 * Model-based property: for any sequence of pushes (single or batch, random ids and priorities)
 * interleaved with pulls, acks, nacks, dead-letterings, lease expiries and stale acks, a backend
 * behaves exactly like a small reference model (a stable sort plus a lease table): same order,
 * same attempts, same counts, nothing lost, nothing duplicated.
 */
import { expect } from "@effect/vitest"
import { Duration, Effect, Either, FastCheck as fc, Option } from "effect"
import type { Delivery, QueueManagerService } from "../src/QueueManager.js"

/** One step of a scenario. Held deliveries are referred to by index modulo how many are held. */
export type Command =
  | { readonly _tag: "push"; readonly id: string; readonly priority: number }
  | {
      readonly _tag: "pushBatch"
      readonly tasks: ReadonlyArray<{ readonly id: string; readonly priority: number }>
    }
  | { readonly _tag: "pull"; readonly max: number }
  | { readonly _tag: "ack"; readonly index: number }
  | { readonly _tag: "nack"; readonly index: number }
  | { readonly _tag: "dead"; readonly index: number }
  | { readonly _tag: "expire"; readonly index: number }
  | { readonly _tag: "staleAck" }

const id = fc.integer({ min: 0, max: 11 }).map((n) => `t${n}`)
const priority = fc.integer({ min: 0, max: 10 })
const index = fc.nat({ max: 7 })

/** Scenarios of up to `maxLength` commands. */
export const scenario = (maxLength: number): fc.Arbitrary<ReadonlyArray<Command>> =>
  fc.array(
    fc.oneof(
      { weight: 4, arbitrary: fc.record({ _tag: fc.constant("push" as const), id, priority }) },
      {
        weight: 1,
        arbitrary: fc.record({
          _tag: fc.constant("pushBatch" as const),
          tasks: fc.array(fc.record({ id, priority }), { maxLength: 5 })
        })
      },
      {
        weight: 4,
        arbitrary: fc.record({ _tag: fc.constant("pull" as const), max: fc.integer({ min: 1, max: 3 }) })
      },
      { weight: 2, arbitrary: fc.record({ _tag: fc.constant("ack" as const), index }) },
      { weight: 1, arbitrary: fc.record({ _tag: fc.constant("nack" as const), index }) },
      { weight: 1, arbitrary: fc.record({ _tag: fc.constant("dead" as const), index }) },
      { weight: 1, arbitrary: fc.record({ _tag: fc.constant("expire" as const), index }) },
      { weight: 1, arbitrary: fc.constant({ _tag: "staleAck" as const }) }
    ),
    { maxLength }
  )

interface ModelTask {
  readonly id: string
  readonly priority: number
  seq: number
  attempts: number
  state: "pending" | "inflight" | "dead"
  token: string
}

/** The reference: a stable sort by priority then sequence, and a lease table. */
class Model {
  private seq = 0
  readonly tasks = new Map<string, ModelTask>()

  push(id: string, priority: number): boolean {
    const known = this.tasks.get(id)
    if (known !== undefined && known.state !== "dead") return false
    this.tasks.set(id, { id, priority, seq: this.seq++, attempts: 0, state: "pending", token: "" })
    return true
  }

  pending(): Array<ModelTask> {
    return [...this.tasks.values()]
      .filter((t) => t.state === "pending")
      .sort((a, b) => b.priority - a.priority || a.seq - b.seq)
  }

  claim(max: number): Array<ModelTask> {
    const taken = this.pending().slice(0, max)
    for (const task of taken) {
      task.state = "inflight"
      task.attempts++
    }
    return taken
  }

  requeue(task: ModelTask) {
    task.state = "pending"
    task.seq = this.seq++
  }

  stats() {
    const count = (state: ModelTask["state"]) =>
      [...this.tasks.values()].filter((t) => t.state === state).length
    return { pending: count("pending"), inFlight: count("inflight"), delayed: 0, dead: count("dead") }
  }
}

/** Runs a scenario against `queue` and the model side by side, checking every answer. */
export const runScenario = (queue: QueueManagerService, commands: ReadonlyArray<Command>) =>
  Effect.gen(function* () {
    const model = new Model()
    const held: Array<Delivery> = []
    const stale: Array<Delivery> = []
    const take = (i: number) => (held.length === 0 ? undefined : held.splice(i % held.length, 1)[0])
    const modelOf = (d: Delivery) => model.tasks.get(d.message.taskId)!

    for (const command of commands) {
      switch (command._tag) {
        case "push": {
          const accepted = yield* queue.push(command.id, { id: command.id }, command.priority)
          expect(accepted, `push ${command.id}`).toBe(model.push(command.id, command.priority))
          break
        }
        case "pushBatch": {
          const accepted = yield* queue.pushBatch(
            command.tasks.map((t) => ({ taskId: t.id, data: { id: t.id }, priority: t.priority }))
          )
          expect(accepted).toEqual(command.tasks.map((t) => model.push(t.id, t.priority)))
          break
        }
        case "pull": {
          const expected = model.claim(command.max)
          const got = yield* queue.pullBatch(command.max, Duration.millis(expected.length === 0 ? 10 : 1000))
          expect(got.map((d) => [d.message.taskId, d.message.priority, d.message.attempt])).toEqual(
            expected.map((t) => [t.id, t.priority, t.attempts])
          )
          for (const delivery of got) modelOf(delivery).token = delivery.token
          held.push(...got)
          break
        }
        case "ack": {
          const delivery = take(command.index)
          if (delivery === undefined) break
          yield* delivery.ack
          model.tasks.delete(delivery.message.taskId)
          stale.push(delivery)
          break
        }
        case "nack": {
          const delivery = take(command.index)
          if (delivery === undefined) break
          yield* delivery.nack()
          model.requeue(modelOf(delivery))
          stale.push(delivery)
          break
        }
        case "dead": {
          const delivery = take(command.index)
          if (delivery === undefined) break
          yield* delivery.nack({ requeue: false, error: `dead ${delivery.message.taskId}` })
          modelOf(delivery).state = "dead"
          stale.push(delivery)
          break
        }
        case "expire": {
          const delivery = take(command.index)
          if (delivery === undefined) break
          // A lease of zero ends now: the task is handed out again, and this holder is stale.
          yield* delivery.extend(Duration.zero)
          yield* Effect.sleep(Duration.millis(2))
          model.requeue(modelOf(delivery))
          stale.push(delivery)
          break
        }
        case "staleAck": {
          const delivery = stale.shift()
          if (delivery === undefined) break
          const result = yield* Effect.either(delivery.ack)
          expect(Either.isLeft(result) && result.left._tag, `stale ack of ${delivery.message.taskId}`).toBe(
            "LeaseLost"
          )
          break
        }
      }
      expect(yield* queue.stats).toEqual(model.stats())
    }

    // Nothing lost, nothing duplicated: draining gives exactly the model's pending order.
    for (const delivery of held) {
      yield* delivery.nack()
      model.requeue(modelOf(delivery))
    }
    const drained: Array<string> = []
    for (;;) {
      const delivery = yield* queue.pull(Duration.millis(10))
      if (Option.isNone(delivery)) break
      drained.push(delivery.value.message.taskId)
      yield* delivery.value.ack
    }
    expect(drained).toEqual(model.pending().map((t) => t.id))
    const dead = yield* queue.deadLetters(1000)
    const byId = (a: [string, number], b: [string, number]) => a[0].localeCompare(b[0])
    expect(dead.map((d): [string, number] => [d.taskId, d.attempts]).sort(byId)).toEqual(
      [...model.tasks.values()]
        .filter((t) => t.state === "dead")
        .map((t): [string, number] => [t.id, t.attempts])
        .sort(byId)
    )
  })

/**
 * The log annotations of a running task: the slot's own, plus `taskId` and `attempt`.
 *
 * A slot sets them before each run. The fiber runtime compares a new annotations map with the
 * current one (`Equal.equals`), and that hashes the new map entry by entry: per task, about as
 * much work and garbage as the run of a no-op pipeline. The map built here carries its hash already,
 * computed from the base map's (hashed once per slot) and the two new entries by the rule
 * `HashMap` hashes by (its key's hash, then each entry's key and value hashes combined and
 * XOR-ed in); `test/taskAnnotations.test.ts` holds the two equal for any map.
 *
 * @since 0.1.0
 */
import { Hash, HashMap } from "effect"

const taskIdHash = Hash.hash("taskId")
const attemptHash = Hash.hash("attempt")

/** `base` with `taskId` and `attempt` set, its hash computed without walking the map. */
export const taskAnnotations = (
  base: HashMap.HashMap<string, unknown>,
  taskId: string,
  attempt: number
): HashMap.HashMap<string, unknown> => {
  const annotations = HashMap.mutate(base, (map) => {
    HashMap.set(map, "taskId", taskId)
    HashMap.set(map, "attempt", attempt)
  })
  // Replacing an entry (a worker started inside another task's annotations) changes the hash
  // by more than adding one: the map then hashes itself, as any other.
  if (!HashMap.has(base, "taskId") && !HashMap.has(base, "attempt")) {
    Hash.cached(
      annotations,
      Hash.hash(base) ^
        Hash.combine(Hash.hash(taskId))(taskIdHash) ^
        Hash.combine(Hash.hash(attempt))(attemptHash)
    )
  }
  return annotations
}

/**
 * A binary min-heap of `(key, value)` pairs, for the memory backend's pending, lease and delay
 * orders. Ties are broken by insertion order. Removal is lazy: callers skip stale values.
 *
 * @since 0.1.0
 */
interface Slot<A> {
  readonly key: number
  readonly seq: number
  readonly value: A
}

const before = <A>(a: Slot<A>, b: Slot<A>) => a.key < b.key || (a.key === b.key && a.seq < b.seq)

export class MinHeap<A> {
  private slots: Array<Slot<A>> = []
  private seq = 0

  /** How many pairs it holds, stale ones included. */
  get size(): number {
    return this.slots.length
  }

  /**
   * Adds `value` under `key`, after the values already there with the same key, or at the place
   * of insertion `seq` (one this heap returned before); returns its insertion number.
   */
  push(key: number, value: A, seq: number = this.seq++): number {
    const slots = this.slots
    const slot: Slot<A> = { key, seq, value }
    // Sift up by moving parents into the hole, then fill it once.
    let i = slots.length
    slots.push(slot)
    while (i > 0) {
      const parent = (i - 1) >> 1
      const above = slots[parent]!
      if (!before(slot, above)) break
      slots[i] = above
      i = parent
    }
    slots[i] = slot
    return seq
  }

  /** The smallest key, or `undefined` when empty. */
  peekKey(): number | undefined {
    return this.slots[0]?.key
  }

  /** The value under the smallest key, or `undefined` when empty. */
  peek(): A | undefined {
    return this.slots[0]?.value
  }

  /** Removes and returns the value under the smallest key. */
  pop(): A | undefined {
    const slots = this.slots
    const top = slots[0]
    const last = slots.pop()
    if (top === undefined || last === undefined || slots.length === 0) return top?.value
    // Sift the last slot down from the root by moving smaller children into the hole.
    const n = slots.length
    let i = 0
    for (;;) {
      const l = 2 * i + 1
      if (l >= n) break
      const r = l + 1
      const child = r < n && before(slots[r]!, slots[l]!) ? r : l
      if (!before(slots[child]!, last)) break
      slots[i] = slots[child]!
      i = child
    }
    slots[i] = last
    return top.value
  }

  /** Empties the heap. */
  clear(): void {
    this.slots = []
  }
}

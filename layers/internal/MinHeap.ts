/**
 * A binary min-heap of `(key, value)` pairs, for the memory backend's pending, lease and delay
 * orders. Ties are broken by insertion order. Removal is lazy: callers skip stale values.
 *
 * @since 0.1.0
 */
export class MinHeap<A> {
  private keys: Array<number> = []
  private seqs: Array<number> = []
  private values: Array<A> = []
  private seq = 0

  /** How many pairs it holds, stale ones included. */
  get size(): number {
    return this.keys.length
  }

  /**
   * Adds `value` under `key`, after the values already there with the same key, or at the place
   * of insertion `seq` (one this heap returned before); returns its insertion number.
   */
  push(key: number, value: A, seq: number = this.seq++): number {
    this.keys.push(key)
    this.seqs.push(seq)
    this.values.push(value)
    this.up(this.keys.length - 1)
    return seq
  }

  /** The smallest key, or `undefined` when empty. */
  peekKey(): number | undefined {
    return this.keys[0]
  }

  /** The value under the smallest key, or `undefined` when empty. */
  peek(): A | undefined {
    return this.values[0]
  }

  /** Removes and returns the value under the smallest key. */
  pop(): A | undefined {
    const n = this.keys.length
    if (n === 0) return undefined
    const top = this.values[0]
    const last = n - 1
    this.swap(0, last)
    this.keys.pop()
    this.seqs.pop()
    this.values.pop()
    if (last > 0) this.down(0)
    return top
  }

  /** Empties the heap. */
  clear(): void {
    this.keys = []
    this.seqs = []
    this.values = []
  }

  private less(i: number, j: number): boolean {
    const a = this.keys[i]!
    const b = this.keys[j]!
    return a < b || (a === b && this.seqs[i]! < this.seqs[j]!)
  }

  private swap(i: number, j: number): void {
    ;[this.keys[i], this.keys[j]] = [this.keys[j]!, this.keys[i]!]
    ;[this.seqs[i], this.seqs[j]] = [this.seqs[j]!, this.seqs[i]!]
    ;[this.values[i], this.values[j]] = [this.values[j]!, this.values[i]!]
  }

  private up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!this.less(i, parent)) return
      this.swap(i, parent)
      i = parent
    }
  }

  private down(i: number): void {
    const n = this.keys.length
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < n && this.less(l, m)) m = l
      if (r < n && this.less(r, m)) m = r
      if (m === i) return
      this.swap(i, m)
      i = m
    }
  }
}

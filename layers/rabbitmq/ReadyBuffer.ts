/**
 * Deliveries a process holds from its standing consumer and no claim has taken yet, by priority:
 * taken most urgent first, equal priorities in arrival order.
 *
 * @since 0.1.0
 */

/** A buffer of items by priority `0..maxPriority`; `take` gives the most urgent first, FIFO within a priority. */
export class ReadyBuffer<A> {
  private readonly buckets: Array<Array<A>>
  private count = 0
  constructor(readonly maxPriority: number) {
    this.buckets = Array.from({ length: maxPriority + 1 }, () => [])
  }

  /** How many items wait. */
  get size(): number {
    return this.count
  }

  /** Adds an item behind the others of its priority (clamped to `0..maxPriority`). */
  push(priority: number, item: A): void {
    this.buckets[this.clamp(priority)]!.push(item)
    this.count++
  }

  /** Puts back an item a claim took and did not keep, ahead of the others of its priority. */
  putBack(priority: number, item: A): void {
    this.buckets[this.clamp(priority)]!.unshift(item)
    this.count++
  }

  /** Moves up to `max` items into `out`, most urgent first. */
  take(max: number, out: Array<A>): void {
    for (let p = this.maxPriority; p >= 0 && this.count > 0 && max > 0; p--) {
      const bucket = this.buckets[p]!
      if (bucket.length === 0) continue
      const n = Math.min(max, bucket.length)
      for (const item of bucket.splice(0, n)) out.push(item)
      this.count -= n
      max -= n
    }
  }

  /** Empties the buffer, most urgent first. */
  takeAll(): Array<A> {
    const out: Array<A> = []
    this.take(this.count, out)
    return out
  }

  private clamp(priority: number) {
    return Math.min(this.maxPriority, Math.max(0, Math.trunc(priority) || 0))
  }
}

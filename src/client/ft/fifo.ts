/**
 * A first-in first-out queue over one array: `shift` is O(1) amortized (the array is compacted
 * once more than half of it is dead), and the live items can be read and searched by position.
 * The FT bookkeeping (progress marks, held outputs, reads the backup still owes) are such queues,
 * kept in order and dropped from the front as acks come.
 */
export class Fifo<T> {
  private items: T[] = []
  private head = 0

  get length(): number {
    return this.items.length - this.head
  }

  /** the item at position `i` from the front (0: the oldest); undefined outside */
  at(i: number): T | undefined {
    return i >= 0 && i < this.length ? this.items[this.head + i] : undefined
  }

  /** the oldest item */
  peek(): T | undefined {
    return this.at(0)
  }

  /** the newest item */
  last(): T | undefined {
    return this.at(this.length - 1)
  }

  push(item: T): void {
    this.items.push(item)
  }

  /** Inserts `item` at position `i` from the front (O(n − i)). */
  insert(i: number, item: T): void {
    if (i >= this.length) this.items.push(item)
    else this.items.splice(this.head + Math.max(0, i), 0, item)
  }

  /** Removes and returns the oldest item. */
  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined
    const item = this.items[this.head++]
    this.compact()
    return item
  }

  /** Drops the `n` oldest items. */
  drop(n: number): void {
    this.head = Math.min(this.items.length, this.head + Math.max(0, n))
    this.compact()
  }

  clear(): void {
    this.items = []
    this.head = 0
  }

  /**
   * The position of the first item for which `before` is false, for items ordered so that
   * `before` holds for a prefix of them (binary search; `length` when it holds for all).
   */
  partition(before: (item: T) => boolean): number {
    let lo = 0
    let hi = this.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (before(this.items[this.head + mid])) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** the live items, oldest first (a copy) */
  toArray(): T[] {
    return this.items.slice(this.head)
  }

  private compact(): void {
    if (this.head === this.items.length) this.clear()
    else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head)
      this.head = 0
    }
  }
}

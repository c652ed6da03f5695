import { StorageError } from '../../disk-formats/errors.js'
import { Fifo } from './fifo.js'

/**
 * The write-after-read case of a backup that reads the shared disk (issue 17 "The backup's disk";
 * ft-architecture.md §2 S6 (c); the FT paper §4.2), on the primary.
 *
 * The backup performs each of the primary's disk reads itself, on the shared disk, when it
 * replays that read's completion — later than the primary did. A primary write that overwrites
 * blocks such a read covers must not reach the disk before the backup has read them, or the
 * backup reads the new data and diverges.
 *
 * - `read(seq, lba, blocks)`: the primary issued read request `seq` (a count of the VM's disk
 *   requests: non-negative integers, strictly increasing) over blocks [lba, lba + blocks).
 * - `backupDone(readsDone)`: the backup has performed every read with seq < readsDone (an
 *   exclusive bound, like ACK.received; 0: none). A lower value than before is ignored.
 * - `beforeWrite(lba, blocks)`: resolves at once unless [lba, lba + blocks) overlaps a read the
 *   backup has not performed; then when the backup has performed every such read. Reads
 *   recorded after the call do not hold it back (the write was issued before them).
 * - `lost()`: the peer is gone: every waiting write goes ahead, and later ones do not wait.
 *
 * Costs: `beforeWrite` scans the reads not yet performed (as many as the lag holds).
 */
export class WriteAfterReadGuard {
  /** writes that had to wait, so far */
  stalls = 0
  /** reads not yet performed by the backup, by seq */
  private reads = new Fifo<{ seq: number; lba: number; end: number }>()
  private lastSeq = -1
  private done = 0
  private gone = false
  private waiters: Waiter[] = []

  /** reads the backup has not performed */
  get pending(): number {
    return this.reads.length
  }

  /** writes waiting */
  get waiting(): number {
    return this.waiters.length
  }

  /** the backup's acknowledged bound: every read with seq below it performed */
  get readsDone(): number {
    return this.done
  }

  /** Records read request `seq` (see the class). InvalidArgument if seq does not increase or the range is not blocks. */
  read(seq: number, lba: number, blocks: number): void {
    checkRange(lba, blocks)
    if (!Number.isSafeInteger(seq) || seq <= this.lastSeq) throw new StorageError('InvalidArgument', `read request seq ${seq} does not follow ${this.lastSeq}`)
    this.lastSeq = seq
    if (this.gone || seq < this.done || blocks === 0) return
    this.reads.push({ seq, lba, end: lba + blocks })
  }

  /** The backup has performed every read with seq < readsDone: wakes the writes that waited for them. */
  backupDone(readsDone: number): void {
    if (!(readsDone > this.done)) return
    this.done = readsDone
    this.reads.drop(this.reads.partition((r) => r.seq < readsDone))
    const still: Waiter[] = []
    for (const w of this.waiters) {
      if (w.need < readsDone) w.resolve()
      else still.push(w)
    }
    this.waiters = still
  }

  /** Resolves when a write over [lba, lba + blocks) may go to the disk (see the class). */
  beforeWrite(lba: number, blocks: number): Promise<void> {
    checkRange(lba, blocks)
    const end = lba + blocks
    let need = -1
    for (let i = 0; i < this.reads.length; i++) {
      const r = this.reads.at(i)!
      if (r.lba < end && lba < r.end) need = r.seq
    }
    if (need < 0) return Promise.resolve()
    this.stalls++
    return new Promise((resolve) => this.waiters.push({ need, resolve }))
  }

  /** The peer is gone: no write waits any more. */
  lost(): void {
    this.gone = true
    this.reads.clear()
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w.resolve()
  }
}

/** a write waiting for the backup to perform read `need` */
interface Waiter {
  need: number
  resolve: () => void
}

function checkRange(lba: number, blocks: number): void {
  if (!Number.isSafeInteger(lba) || lba < 0 || !Number.isSafeInteger(blocks) || blocks < 0) throw new StorageError('InvalidArgument', `invalid block range: lba ${lba}, ${blocks} blocks`)
}

import { StorageError } from '../../disk-formats/errors.js'
import type { Timers } from '../vm/timers.js'
import { Fifo } from './fifo.js'
import { percentiles, type Percentiles } from './stats.js'

/**
 * The output rule of an FT primary (issue 17 "The output rule"; ft-architecture.md §1.2, §1.3).
 *
 * An output — console bytes, a NIC frame, a disk write becoming visible — produced by the
 * instruction at count `at` leaves only once the backup has acknowledged receiving the log below
 * `at + 1` (`ACK.received > at`) and the primary's claim on the VM is current. The guest keeps
 * running meanwhile: the caller has copied the output and hands the gate a `release` callback.
 *
 * - Order: outputs leave in order of `at`, and in the order they were held among equal `at`.
 * - `acked(received)`: the backup's receive horizon (only ever grows; a lower one is ignored).
 * - `claimed(false)`: the peer is lost and the claim not yet won; nothing leaves, even if acked,
 *   until `claimed(true)`. A gate starts claimed (the primary holds the VM's lock).
 * - `halt()`: the claim was lost: everything held is dropped, never released, and so is every
 *   later output. Final.
 * - Backstop: `heldBytes` counts the sizes the caller passes (console bytes, frame lengths, write
 *   lengths); `overLimit` once more than `limitBytes` (64 MiB) wait, so the primary pauses
 *   (`whenUnder()`) instead of holding without bound behind a backup that stopped acking.
 * - Metrics: the delay from hold to release of each output, on `timers.now()`.
 *
 * A `release` callback runs synchronously inside `hold`, `acked` or `claimed`. One that throws
 * does not stop the others: the first error is rethrown once all due outputs have left.
 */

export type OutputKind = 'console' | 'frame' | 'disk'

/** Unacknowledged output bytes past which the primary pauses (ft-architecture.md §1.2 backstop). */
export const OUTPUT_GATE_LIMIT_BYTES = 64 * 1024 * 1024
/** Release delays kept for the metrics' percentiles, and waiting for `takeDelays()`. */
export const OUTPUT_GATE_MAX_DELAYS = 4096

export interface OutputGateOptions {
  limitBytes?: number
  maxDelays?: number
}

export interface OutputDelay {
  kind: OutputKind
  /** ms from hold to release */
  ms: number
}

export interface OutputGateSnapshot {
  held: number
  heldBytes: number
  /** outputs released so far, by kind */
  released: Record<OutputKind, number>
  /** outputs dropped by `halt()` */
  dropped: number
  /** release delays (ms) of the last `maxDelays` outputs */
  delay: Percentiles
}

interface Held {
  kind: OutputKind
  at: number
  bytes: number
  since: number
  release: () => void
}

export class OutputGate {
  private readonly limitBytes: number
  private readonly maxDelays: number
  /** held outputs by `at`, in hold order among equal ones */
  private queue = new Fifo<Held>()
  private bytes = 0
  private horizon = 0
  private current = true
  private halted = false
  private underWaiters: (() => void)[] = []
  private recent: number[] = []
  private untaken: OutputDelay[] = []
  private readonly releasedBy: Record<OutputKind, number> = { console: 0, frame: 0, disk: 0 }
  private droppedCount = 0

  constructor(
    private readonly timers: Pick<Timers, 'now'>,
    o: OutputGateOptions = {},
  ) {
    this.limitBytes = o.limitBytes ?? OUTPUT_GATE_LIMIT_BYTES
    this.maxDelays = Math.max(1, o.maxDelays ?? OUTPUT_GATE_MAX_DELAYS)
  }

  /** outputs waiting */
  get held(): number {
    return this.queue.length
  }

  get heldBytes(): number {
    return this.bytes
  }

  /** more than `limitBytes` wait: the primary should pause (`whenUnder()`) */
  get overLimit(): boolean {
    return this.bytes > this.limitBytes
  }

  /** the backup's receive horizon as last acknowledged */
  get received(): number {
    return this.horizon
  }

  get isHalted(): boolean {
    return this.halted
  }

  /**
   * Holds the output of the instruction at `at` until the rule lets it go (see the module);
   * `bytes` counts towards the backstop. Released at once if already due.
   */
  hold(kind: OutputKind, at: number, release: () => void, bytes = 0): void {
    if (!Number.isFinite(at) || at < 0 || !Number.isFinite(bytes) || bytes < 0) throw new StorageError('InvalidArgument', `invalid held output: at ${at}, ${bytes} bytes`)
    if (this.halted) {
      this.droppedCount++
      return
    }
    const item: Held = { kind, at, bytes, since: this.timers.now(), release }
    // before the first held item with a larger `at`: equal ones stay in the order they came
    this.queue.insert(this.queue.partition((h) => h.at <= at), item)
    this.bytes += bytes
    this.releaseDue()
  }

  /** The backup has received the log below `received`: releases what that covers (see the module). */
  acked(received: number): void {
    if (received > this.horizon) this.horizon = received
    this.releaseDue()
  }

  /** Whether the primary's claim on the VM is current (see the module); true releases what is due. */
  claimed(current: boolean): void {
    this.current = current
    this.releaseDue()
  }

  /** Drops everything held and every later output; nothing is released again. */
  halt(): void {
    this.halted = true
    this.droppedCount += this.held
    this.queue.clear()
    this.bytes = 0
    this.wakeUnder()
  }

  /** Resolves once no more than `limitBytes` are held (at once if so), or when halted. */
  whenUnder(): Promise<void> {
    if (!this.overLimit || this.halted) return Promise.resolve()
    return new Promise((resolve) => this.underWaiters.push(resolve))
  }

  /** The release delays since the last call, oldest first (at most `maxDelays`), for a histogram. */
  takeDelays(): OutputDelay[] {
    const out = this.untaken.slice(-this.maxDelays)
    this.untaken = []
    return out
  }

  snapshot(): OutputGateSnapshot {
    return { held: this.held, heldBytes: this.bytes, released: { ...this.releasedBy }, dropped: this.droppedCount, delay: percentiles(this.recent.slice(-this.maxDelays)) }
  }

  private releaseDue(): void {
    if (this.halted || !this.current) return
    let failed: { error: unknown } | undefined
    for (let item = this.queue.peek(); item && item.at < this.horizon && !this.halted && this.current; item = this.queue.peek()) {
      this.queue.shift()
      this.bytes -= item.bytes
      this.record(item)
      try {
        item.release()
      } catch (error) {
        failed ??= { error }
      }
    }
    if (!this.overLimit) this.wakeUnder()
    if (failed) throw failed.error
  }

  private record(item: Held): void {
    const ms = this.timers.now() - item.since
    this.releasedBy[item.kind]++
    this.recent.push(ms)
    if (this.recent.length > this.maxDelays * 2) this.recent = this.recent.slice(-this.maxDelays)
    this.untaken.push({ kind: item.kind, ms })
    if (this.untaken.length > this.maxDelays * 2) this.untaken = this.untaken.slice(-this.maxDelays)
  }

  private wakeUnder(): void {
    const waiters = this.underWaiters
    this.underWaiters = []
    for (const w of waiters) w()
  }
}

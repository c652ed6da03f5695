import type { Timers } from '../../vm/timers.js'
import type { OutputStream } from './messages.js'

/** A primary's output waiting for the secondary's counterpart. */
interface Held {
  stream: OutputStream
  bytes: Buffer
  /** timers ms when produced */
  at: number
  release: () => void
  matched: boolean
}

export type MismatchReason = 'mismatch' | 'timeout' | 'overflow'

export interface ComparatorOptions {
  timers: Timers
  /** an output of the primary unmatched for this long forces a resync (default 100) */
  timeoutMs?: number
  /** the outputs differ or the secondary's did not come in time: resync (called once per epoch) */
  onMismatch: (reason: MismatchReason, detail: string) => void
  /** outputs released by a match, per stream, counted this epoch */
  onReleased?: (epoch: number, counts: Record<OutputStream, number>) => void
}

/** the secondary's unmatched outputs past which it is taken to have diverged (an output the primary never makes) */
const MAX_AHEAD = 4096

/**
 * The primary's output comparison of quasi-lockstep (colo/SPEC.md "Outputs"): the n-th output of
 * each stream (NIC frames, console lines) of the primary and of the secondary within one epoch
 * (the time between two syncs) are compared byte for byte. The primary's outputs leave in the
 * order made, each as soon as it and every output before it matched. The first difference, an
 * output of the primary unmatched for `timeoutMs`, or the secondary far ahead, reports a
 * mismatch once; the outputs stay held until `nextEpoch` hands them to the resync.
 */
export class OutputComparator {
  epoch = 0
  private held: Held[] = []
  private readonly mine: Record<OutputStream, Held[]> = { frame: [], console: [] }
  private readonly theirs: Record<OutputStream, Buffer[]> = { frame: [], console: [] }
  private readonly released: Record<OutputStream, number> = { frame: 0, console: 0 }
  private diverged = false
  /** outputs released by a match (over all epochs) */
  matched = 0
  readonly timeoutMs: number

  constructor(private readonly o: ComparatorOptions) {
    this.timeoutMs = o.timeoutMs ?? 100
  }

  /** outputs of the primary held now */
  get heldCount(): number {
    return this.held.length
  }

  /** The primary made an output: `release` sends it once matched (or after a resync). */
  primary(stream: OutputStream, bytes: Buffer, release: () => void): void {
    const h: Held = { stream, bytes, at: this.o.timers.now(), release, matched: false }
    this.held.push(h)
    this.mine[stream].push(h)
    this.compare(stream)
  }

  /** The secondary's output of `epoch` (one of an earlier epoch is stale: dropped). */
  secondary(epoch: number, stream: OutputStream, bytes: Buffer): void {
    if (epoch !== this.epoch || this.diverged) return
    this.theirs[stream].push(bytes)
    if (this.theirs[stream].length > MAX_AHEAD) return this.mismatch('overflow', `the secondary is ${MAX_AHEAD} ${stream} outputs ahead`)
    this.compare(stream)
  }

  private compare(stream: OutputStream): void {
    if (this.diverged) return
    const mine = this.mine[stream]
    const theirs = this.theirs[stream]
    while (mine.length && theirs.length) {
      const h = mine.shift()!
      const t = theirs.shift()!
      if (!h.bytes.equals(t)) {
        mine.unshift(h)
        return this.mismatch('mismatch', `${stream} output ${this.released[stream]} differs (${h.bytes.length} and ${t.length} bytes)`)
      }
      h.matched = true
    }
    this.releaseMatched()
  }

  private releaseMatched(): void {
    let n = 0
    while (this.held.length && this.held[0].matched) {
      const h = this.held.shift()!
      this.released[h.stream]++
      this.matched++
      n++
      h.release()
    }
    if (n) this.o.onReleased?.(this.epoch, { ...this.released })
  }

  private mismatch(reason: MismatchReason, detail: string): void {
    if (this.diverged) return
    this.diverged = true
    this.o.onMismatch(reason, detail)
  }

  /** Checks the oldest held output's age (call periodically): past timeoutMs, a timeout mismatch. */
  tick(): void {
    if (this.diverged || !this.held.length) return
    const age = this.o.timers.now() - this.held[0].at
    if (age > this.timeoutMs) this.mismatch('timeout', `${this.held[0].stream} output ${this.released[this.held[0].stream]} unmatched for ${Math.round(age)} ms`)
  }

  /** ms the oldest held output has waited (0: none) */
  get oldestAge(): number {
    return this.held.length ? this.o.timers.now() - this.held[0].at : 0
  }

  /**
   * A resync captured the primary now: the epoch's held outputs (in order) go to the caller, who
   * releases them once the secondary has the state; comparison starts over in the next epoch.
   */
  nextEpoch(): Array<{ release: () => void; at: number }> {
    const out = this.held
    this.held = []
    for (const s of ['frame', 'console'] as const) {
      this.mine[s] = []
      this.theirs[s] = []
      this.released[s] = 0
    }
    this.diverged = false
    this.epoch++
    return out
  }
}

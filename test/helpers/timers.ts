import { realTimers, type Timers } from '../../src/client/vm/timers.js'
import { settle } from './locks.js'

/**
 * Fake `Timers` for the VM engine: time moves only in `advance()`; sleepers wake at exactly their
 * due time, earliest first (ties in the order they slept), each with its promise chains settled
 * before the next. `yield()` is a real turn of the event loop (it waits for no time).
 */
export class FakeTimers implements Timers {
  t = 0
  private sleepers: { at: number; seq: number; wake: () => void }[] = []
  private seq = 0
  /** every sleep asked for, in ms, in order */
  readonly slept: number[] = []

  now(): number {
    return this.t
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    this.slept.push(ms)
    if (signal?.aborted) return Promise.resolve()
    return new Promise((resolve) => {
      const onAbort = () => {
        this.sleepers = this.sleepers.filter((x) => x !== s)
        resolve()
      }
      // a sleeper woken on time stops listening, as node's timers do (a loop reusing one signal)
      const s = { at: this.t + Math.max(0, ms), seq: this.seq++, wake: () => (signal?.removeEventListener('abort', onAbort), resolve()) }
      this.sleepers.push(s)
      signal?.addEventListener('abort', onAbort, { once: true })
    })
  }

  yield(): Promise<void> {
    return new Promise((r) => setImmediate(r))
  }

  /** How many sleepers wait. */
  get sleeping(): number {
    return this.sleepers.length
  }

  /** The earliest sleeper's due time. */
  get nextWake(): number | undefined {
    return this.sleepers.length ? Math.min(...this.sleepers.map((s) => s.at)) : undefined
  }

  /** Moves time forward by `ms`, waking every sleeper due on the way at its due time. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms
    for (;;) {
      const due = this.sleepers.filter((s) => s.at <= end).sort((a, b) => a.at - b.at || a.seq - b.seq)[0]
      if (!due) break
      this.sleepers = this.sleepers.filter((s) => s !== due)
      this.t = Math.max(this.t, due.at)
      due.wake()
      await settle()
    }
    this.t = end
    await settle()
  }
}

/**
 * The real timers, but a clock on which no time passes: a Machine run on them never learns its rate
 * and keeps its shortest slices (SLICE_MIN), for tests whose steps must land while a guest still runs.
 */
export const timersWithoutTime: Timers = { ...realTimers, now: () => 0 }

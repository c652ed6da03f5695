/** One-shot timers, injected so tests can fire them on a fake clock (handshake limits, shutdown grace). */
export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

export const realTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
}

/**
 * A promise that resolves `ms` after `start(ms)`, or at once on `expire()` (whichever is first).
 * The shutdown grace: connections get until then to finish.
 */
export class Deadline {
  readonly reached: Promise<void>
  private resolve!: () => void
  private handle: unknown = null
  private done = false

  constructor(private readonly timers: Timers = realTimers) {
    this.reached = new Promise((r) => (this.resolve = r))
  }

  /** Starts the countdown (once; later calls keep the first one). */
  start(ms: number): void {
    if (this.done || this.handle !== null) return
    this.handle = this.timers.setTimeout(() => this.expire(), ms)
  }

  expire(): void {
    if (this.done) return
    this.done = true
    if (this.handle !== null) this.timers.clearTimeout(this.handle)
    this.resolve()
  }
}

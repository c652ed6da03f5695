import { StorageError } from '../../disk-formats/errors.js'
import { realTimers, type Timers } from './timers.js'

/**
 * The period over which the share holds. At PCT % the VM runs about PCT % of it, then sleeps the
 * rest: 20 ms keeps the longest stall a guest sees below 20 ms (under its timer ticks and network
 * timeouts), while its sleeps (≤ 50 a second) cost nothing measurable and a timer's 1 ms of slack
 * is at most 5 % of a period (and repaid, since the sleep actually taken is measured).
 */
export const CPU_LIMIT_PERIOD_MS = 20
/**
 * At most this much sleep is owed at once. A single slice longer than a period (a GC pause, the
 * machine's other work) is repaid in full up to it; a pause of the whole process (SIGSTOP, a
 * suspended host) is not repaid beyond it.
 */
export const CPU_LIMIT_MAX_DEBT_MS = 1000

/** A CPU share in whole percent of one core, 1 to 100; `what` names it in the error. */
export function checkCpuPercent(pct: unknown, what = 'CPU limit', shown = JSON.stringify(pct)): number {
  if (typeof pct !== 'number' || !Number.isInteger(pct) || pct < 1 || pct > 100) {
    throw new StorageError('InvalidArgument', `invalid ${what} ${shown}: a whole percentage of one core, 1 to 100`)
  }
  return pct
}

/** A command-line CPU share (`--cpu-limit 50`): decimal digits, 1 to 100. */
export function parseCpuPercent(text: string, what = '--cpu-limit'): number {
  return checkCpuPercent(/^[0-9]{1,3}$/.test(text) ? Number(text) : NaN, what, `'${text}'`)
}

/**
 * Holds a VM to `percent` % of one core (SPEC.md "CPU limit"). The run loop calls `afterSlice()`
 * after every run slice and passes the WFI wait through `idle()`. Time on the `Timers` clock is
 * busy unless spent in `idle()` or in the limiter's own sleeps. Each busy ms adds
 * (100 − pct) / pct ms of sleep owed; idle time pays it; once a period's idle share is owed
 * (busy ≈ pct % of a period), `afterSlice()` sleeps it and counts the sleep actually taken.
 * Idle time beyond the debt earns at most one period's idle share of credit, so a VM that waited
 * long does not then run flat out for as long. At 100 % both calls return at once.
 */
export class CpuLimiter {
  private pct: number
  /** sleep owed in ms; negative: credit */
  private debt = 0
  /** the last time accounted for */
  private mark = 0
  /** idle time since `mark` (in idle(), not yet accounted) */
  private idleMs = 0

  constructor(
    percent: number,
    private readonly timers: Timers = realTimers,
    private readonly periodMs = CPU_LIMIT_PERIOD_MS,
  ) {
    this.pct = checkCpuPercent(percent)
    this.mark = timers.now()
  }

  get percent(): number {
    return this.pct
  }

  /** Changes the share from now on (FT throttles a primary with it); what is owed is forgotten. */
  setPercent(percent: number): void {
    this.pct = checkCpuPercent(percent)
    this.debt = 0
    this.idleMs = 0
    this.mark = this.timers.now()
  }

  /** Awaits `wait` (the guest's WFI), counting the time as idle. */
  async idle<T>(wait: Promise<T>): Promise<T> {
    if (this.pct === 100) return wait
    const t0 = this.timers.now()
    try {
      return await wait
    } finally {
      this.idleMs += this.timers.now() - t0
    }
  }

  /** After a run slice: sleeps what is owed once a period's idle share is owed. True if it slept. */
  async afterSlice(signal?: AbortSignal): Promise<boolean> {
    if (this.pct === 100) return false
    const now = this.timers.now()
    const idle = Math.min(this.idleMs, now - this.mark)
    const busy = now - this.mark - idle
    this.mark = now
    this.idleMs = 0
    const idleShare = (this.periodMs * (100 - this.pct)) / 100
    this.debt = Math.max(-idleShare, Math.min(CPU_LIMIT_MAX_DEBT_MS, this.debt + (busy * (100 - this.pct)) / this.pct - idle))
    if (this.debt < Math.max(idleShare, 1) || signal?.aborted) return false
    await this.timers.sleep(this.debt, signal)
    const after = this.timers.now()
    this.debt = Math.max(-idleShare, this.debt - (after - this.mark))
    this.mark = after
    return true
  }
}

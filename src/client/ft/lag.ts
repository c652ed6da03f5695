import { StorageError } from '../../disk-formats/errors.js'
import type { CpuLimiter } from '../vm/cpu-limit.js'
import type { Timers } from '../vm/timers.js'
import { Fifo } from './fifo.js'
import { median, percentiles, type Percentiles } from './stats.js'

/**
 * Execution lag of an FT pair and the primary's CPU limit that keeps it small (issue 17 "Lag
 * control"; ft-architecture.md §1.2 "Lag", §2 S1; LAG.md).
 *
 * Lag of a point of execution (an instruction count) = the time the backup had executed it minus
 * the time the primary had, both on the primary's clock (DESIGN §6: one clock only). The primary
 * knows when it executed a point from its own progress marks, and learns when the backup did from
 * the backup's acks as they arrive: a lag includes the ack's trip back, as does the wait of an
 * output held for that ack.
 *
 * - `LagMeter` turns marks and acks into lag samples, keeps a window of them for metrics, and
 *   says how far behind a backup that stopped acknowledging is.
 * - `LagController` is the rule: every sample period, on the period's median lag, cut the
 *   limit in proportion to the lag above target, raise it in small steps below half the target.
 * - `FtLagControl` runs the rule on a timer and applies it to the primary's `CpuLimiter`.
 */

/** At most this many progress marks are kept unacknowledged; beyond it every other one is dropped (coarser, lags still lower bounds). */
export const LAG_MAX_MARKS = 8192
/** Lag samples older than this (on the acks' clock) leave the metrics window. */
export const LAG_WINDOW_MS = 10_000
/** At most this many samples are kept in the window (acks at 1 kHz fill 10 s). */
export const LAG_MAX_SAMPLES = 16_384

export interface LagMeterOptions {
  maxMarks?: number
  windowMs?: number
  maxSamples?: number
}

/** The lag window as the metrics show it: percentiles of the samples, and how far behind the backup is now. */
export interface LagSnapshot extends Percentiles {
  /** ms: the lag a backup still at its last acknowledged point has at `now` (0 when it has everything the primary executed) */
  behind: number
}

/**
 * Lag from progress marks and acks, on the primary.
 *
 * `progress(instret, t)`: at primary time t, the primary had executed (and logged) every
 * instruction below `instret`. Marks come in order: instret and t never decrease. A mark that
 * repeats the last instret (an idle primary's heartbeat) is not kept: the earliest time counts.
 *
 * `ack(executed, now)`: the backup has executed every instruction below `executed` (monotonic; at
 * most the newest mark, since a backup never passes the logged horizon). The primary had executed
 * them by tP = the time of the earliest mark with instret ≥ executed, so the lag is now − tP: exact
 * when `executed` is a mark (a backup stops at a horizon, which is one), and otherwise low by less
 * than the gap between two marks (one run slice). No interpolation: the primary may have slept
 * (CPU limit, WFI) anywhere between two marks. Marks below `executed` are dropped.
 * An ack that does not advance `executed` records no sample (it says nothing new about when the
 * backup got there) and returns `behind(now)`.
 *
 * Bounds: at most `maxMarks` marks wait for an ack (then the ring is thinned to half and later
 * marks kept at its mean spacing: lags stay lower bounds, low by at most that spacing), and the
 * metrics window keeps at most `maxSamples` samples of the last `windowMs`.
 *
 * `behind(now)`: the backup has not executed instruction `executed` (the next one), which the
 * primary had by the first mark above it, so its lag at `now` is at least now − that mark's time;
 * 0 when no mark is above it (the backup is level with what the primary reported). This grows
 * while a backup stalls, when no acks (samples) come.
 */
export class LagMeter {
  private readonly maxMarks: number
  private readonly windowMs: number
  private readonly maxSamples: number
  /** the marks not yet passed by an ack, by instret */
  private marksHeld = new Fifo<{ instret: number; t: number }>()
  /** ms: once thinned, the least time between two kept marks */
  private spacingMs = 0
  private executedTo = 0
  /** the window's samples, by time */
  private samples = new Fifo<{ t: number; lag: number }>()

  constructor(o: LagMeterOptions = {}) {
    this.maxMarks = Math.max(4, o.maxMarks ?? LAG_MAX_MARKS)
    this.windowMs = o.windowMs ?? LAG_WINDOW_MS
    this.maxSamples = Math.max(1, o.maxSamples ?? LAG_MAX_SAMPLES)
  }

  /** the backup's last acknowledged point: every instruction below it executed */
  get executed(): number {
    return this.executedTo
  }

  /** how many marks wait for an ack */
  get marks(): number {
    return this.marksHeld.length
  }

  /** Records a progress mark (see the class). InvalidArgument if instret or t goes back. */
  progress(instret: number, tMs: number): void {
    const marks = this.marksHeld
    const last = marks.last()
    if (last) {
      if (instret < last.instret || tMs < last.t) throw new StorageError('InvalidArgument', `progress mark (${instret}, ${tMs} ms) goes back from (${last.instret}, ${last.t} ms)`)
      if (instret === last.instret) return
      if (this.spacingMs > 0 && marks.length >= 2 && tMs - marks.at(marks.length - 2)!.t < this.spacingMs) {
        // thinned: the newest mark moves on instead of adding one (the newest is always kept)
        last.instret = instret
        last.t = tMs
        return
      }
    } else if (instret < this.executedTo) {
      throw new StorageError('InvalidArgument', `progress mark ${instret} is below the acknowledged point ${this.executedTo}`)
    }
    marks.push({ instret, t: tMs })
    if (marks.length > this.maxMarks) this.thin()
  }

  /**
   * Records the backup's ack at `nowMs` and returns the lag in ms (see the class).
   * InvalidArgument (a peer breaking the protocol) if `executed` goes back or passes the newest mark.
   */
  ack(executed: number, nowMs: number): number {
    if (executed < this.executedTo) throw new StorageError('InvalidArgument', `ack of executed ${executed} goes back from ${this.executedTo}`)
    if (executed === this.executedTo) return this.behind(nowMs)
    const j = this.firstAtLeast(executed)
    const mark = this.marksHeld.at(j)
    if (!mark) throw new StorageError('InvalidArgument', `ack of executed ${executed} passes the logged horizon ${this.marksHeld.last()?.instret ?? this.executedTo}`)
    const lag = Math.max(0, nowMs - mark.t)
    this.executedTo = executed
    this.marksHeld.drop(j)
    if (this.spacingMs > 0 && this.marks < this.maxMarks / 4) this.spacingMs = 0
    this.addSample(nowMs, lag)
    return lag
  }

  /** The lag at `nowMs` of a backup still at its last acknowledged point (see the class). */
  behind(nowMs: number): number {
    const mark = this.marksHeld.at(this.firstAtLeast(this.executedTo + 1))
    return mark ? Math.max(0, nowMs - mark.t) : 0
  }

  /** The lag samples taken after `sinceMs` (exclusive), oldest first. */
  samplesSince(sinceMs: number): number[] {
    const out: number[] = []
    for (let i = this.samples.length - 1; i >= 0 && this.samples.at(i)!.t > sinceMs; i--) out.push(this.samples.at(i)!.lag)
    return out.reverse()
  }

  /**
   * The lag of the period after `fromMs` up to `nowMs`, as the controller takes it: the median of
   * its samples, or `behind(nowMs)` when none came (a silent backup still counts).
   */
  periodLag(fromMs: number, nowMs: number): number {
    const samples = this.samplesSince(fromMs)
    return samples.length ? median(samples) : this.behind(nowMs)
  }

  /** Percentiles of the samples of the last `windowMs` before `nowMs`, and `behind(nowMs)`. */
  snapshot(nowMs: number, windowMs = this.windowMs): LagSnapshot {
    return { ...percentiles(this.samplesSince(nowMs - windowMs)), behind: this.behind(nowMs) }
  }

  /** position of the first mark with instret ≥ x (`marks` if none) */
  private firstAtLeast(x: number): number {
    return this.marksHeld.partition((m) => m.instret < x)
  }

  /**
   * Drops every other mark, keeping the newest, and from then on keeps marks at least the
   * resulting mean spacing apart (until the backup catches up to a quarter of the ring): the ring
   * stays evenly spaced in time, and since the earliest mark ≥ x only moves later, lags stay
   * lower bounds, low by at most one spacing.
   */
  private thin(): void {
    const all = this.marksHeld.toArray()
    const kept = all.filter((_, i) => (all.length - 1 - i) % 2 === 0)
    this.marksHeld = new Fifo()
    for (const m of kept) this.marksHeld.push(m)
    this.spacingMs = (kept[kept.length - 1].t - kept[0].t) / (kept.length - 1)
  }

  private addSample(t: number, lag: number): void {
    const samples = this.samples
    samples.push({ t, lag })
    const oldest = t - this.windowMs
    let n = 0
    while (n < samples.length && (samples.at(n)!.t <= oldest || samples.length - n > this.maxSamples)) n++
    samples.drop(n)
  }
}

/** The controller's parameters (LAG.md has the table and the reasons). */
export interface LagControllerOptions {
  /** ms: the lag to stay under (VMware FT: < 100 ms typical) */
  targetMs?: number
  /** ms: past it, every sample cuts by the maximum step (VMware FT throttles past ~1 s) */
  highMs?: number
  /** ms between two decisions */
  sampleMs?: number
  /** the limit never goes below this percent of a core (the primary keeps making progress) */
  minPercent?: number
  /** the limit never goes above it (a VM started with `--cpu-limit N` keeps N as its ceiling) */
  maxPercent?: number
  /** percentage points cut at lag = target (and the least cut above target) */
  minStepDownPercent?: number
  /** the most percentage points cut in one sample */
  maxStepDownPercent?: number
  /** percentage points added per sample while lag < target / 2 */
  stepUpPercent?: number
  /** ms: a lag more than this above the last period's is rising: no raise */
  riseMs?: number
  /** the limit to start from */
  startPercent?: number
  /** false: `update` never changes the limit (the "controller off" experiment) */
  enabled?: boolean
}

export const LAG_CONTROL_DEFAULTS: Required<LagControllerOptions> = {
  targetMs: 100,
  highMs: 1000,
  sampleMs: 250,
  minPercent: 5,
  maxPercent: 100,
  minStepDownPercent: 2,
  maxStepDownPercent: 20,
  stepUpPercent: 2,
  riseMs: 5,
  startPercent: 100,
  enabled: true,
}

/**
 * The lag-control rule (LAG.md "The rule"). The limit is whole percent of a core,
 * minPercent..maxPercent, as `CpuLimiter.setPercent` takes it. `update(lag)` is called once a
 * sample period with the period's lag m (its median sample) and returns the new limit:
 * 1. m > target: cut by minStep × m / target points, at least minStep, at most maxStep, and
 *    maxStep once m ≥ highMs — in proportion to m / target (defaults: 2 points at 100 ms, 20 at 1 s);
 * 2. else if m is rising (more than riseMs above the last period's): cut by minStep when
 *    m ≥ target / 2, else hold — the primary is outrunning the backup (the lag is the integral of
 *    the speed difference: a rule on its level alone overshoots both ways);
 * 3. else m < target / 2: raise by stepUp points, up to maxPercent (as high as possible, as soon as
 *    the lag allows); otherwise hold.
 * An unknown lag (NaN) holds. Disabled, it returns the limit unchanged (and still tracks m).
 */
export class LagController {
  readonly options: Readonly<Required<LagControllerOptions>>
  enabled: boolean
  private pct: number
  private lastLag = NaN

  constructor(o: LagControllerOptions = {}) {
    const opt = { ...LAG_CONTROL_DEFAULTS, ...o }
    const whole = (v: number, lo: number, hi: number) => Number.isInteger(v) && v >= lo && v <= hi
    if (!(opt.targetMs > 0) || !(opt.highMs >= opt.targetMs) || !(opt.sampleMs > 0)) {
      throw new StorageError('InvalidArgument', `invalid lag control times: target ${opt.targetMs} ms, high ${opt.highMs} ms, sample ${opt.sampleMs} ms (need 0 < target ≤ high, sample > 0)`)
    }
    if (!whole(opt.minPercent, 1, 100) || !whole(opt.maxPercent, opt.minPercent, 100) || !whole(opt.startPercent, opt.minPercent, opt.maxPercent) || !whole(opt.minStepDownPercent, 1, 100) || !whole(opt.maxStepDownPercent, opt.minStepDownPercent, 100) || !whole(opt.stepUpPercent, 1, 100)) {
      throw new StorageError('InvalidArgument', `invalid lag control steps: min ${opt.minPercent} %, max ${opt.maxPercent} %, start ${opt.startPercent} %, cut ${opt.minStepDownPercent}–${opt.maxStepDownPercent}, raise ${opt.stepUpPercent} (whole percent; min ≤ start ≤ max ≤ 100, 1 ≤ min cut ≤ max cut)`)
    }
    this.options = opt
    this.enabled = opt.enabled
    this.pct = opt.startPercent
  }

  /** the current limit, whole percent of a core */
  get percent(): number {
    return this.pct
  }

  /** One decision on the period's lag (ms); returns the limit (see the class). */
  update(lagMs: number): number {
    if (Number.isNaN(lagMs)) return this.pct
    const o = this.options
    if (!this.enabled) {
      this.lastLag = lagMs
      return this.pct
    }
    const rising = lagMs > this.lastLag + o.riseMs
    if (lagMs > o.targetMs) {
      const step = lagMs >= o.highMs ? o.maxStepDownPercent : Math.min(o.maxStepDownPercent, Math.max(o.minStepDownPercent, Math.round((o.minStepDownPercent * lagMs) / o.targetMs)))
      this.pct = Math.max(o.minPercent, this.pct - step)
    } else if (rising) {
      if (lagMs >= o.targetMs / 2) this.pct = Math.max(o.minPercent, this.pct - o.minStepDownPercent)
    } else if (lagMs < o.targetMs / 2) {
      this.pct = Math.min(o.maxPercent, this.pct + o.stepUpPercent)
    }
    this.lastLag = lagMs
    return this.pct
  }
}

/**
 * Lag control on a running primary: every `sampleMs` on `timers`, the period's lag
 * (`LagMeter.periodLag`) goes to the controller, and a changed limit to `limiter.setPercent`;
 * `stop()` ends it. By default the controller starts at the limiter's percent and keeps it as
 * its ceiling (and as its floor too when it is below minPercent). Its fields are what the metrics show (`tandem_ft_lag_seconds`, `tandem_vm_cpu_limit_ratio`).
 */
export class FtLagControl {
  /** the last period's lag in ms (NaN before the first period) */
  lagMs = NaN
  /** how many periods have been decided */
  periods = 0
  private readonly abort = new AbortController()
  private readonly done: Promise<void>

  constructor(
    readonly meter: LagMeter,
    readonly limiter: CpuLimiter,
    private readonly timers: Timers,
    readonly controller = new LagController({ startPercent: limiter.percent, maxPercent: limiter.percent, minPercent: Math.min(LAG_CONTROL_DEFAULTS.minPercent, limiter.percent) }),
  ) {
    this.done = this.loop()
  }

  /** the limit applied now, whole percent of a core */
  get percent(): number {
    return this.limiter.percent
  }

  /** What the metrics show now: the limit, the last period's lag, and the meter's window. */
  snapshot(): { percent: number; lagMs: number; lag: LagSnapshot } {
    return { percent: this.percent, lagMs: this.lagMs, lag: this.meter.snapshot(this.timers.now()) }
  }

  /** Stops deciding; the limit stays where it is. Resolves when the loop has ended. */
  stop(): Promise<void> {
    this.abort.abort()
    return this.done
  }

  private async loop(): Promise<void> {
    const { signal } = this.abort
    let from = this.timers.now()
    while (!signal.aborted) {
      await this.timers.sleep(this.controller.options.sampleMs, signal)
      if (signal.aborted) break
      const now = this.timers.now()
      this.lagMs = this.meter.periodLag(from, now)
      from = now
      this.periods++
      const pct = this.controller.update(this.lagMs)
      if (pct !== this.limiter.percent) this.limiter.setPercent(pct)
    }
  }
}

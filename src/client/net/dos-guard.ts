import { StorageError } from '../../disk-formats/errors.js'
import type { MonitorClock, TrafficRate } from './traffic-monitor.js'

/**
 * The bounds a VM's inbound traffic is held to (README "DoS guard" gives the reasons). A VM is
 * over them when any of these holds over the monitor's window:
 *  - more than `smallPpsHigh` small frames a second while it answers fewer than `replyRatioLow`
 *    of its inbound frames (a small-frame flood: what a client sends, it answers);
 *  - more than `smallPpsMax` small frames a second, answered or not (a flood a warm guest keeps up
 *    with: the kvstore guest answers ~15 000 a second, a core's worth of work taken from the others);
 *  - more than `ppsHigh` frames a second of any size (more than a guest consumes at all);
 *  - more than `bpsHigh` bytes a second.
 * Over them continuously for `holdMs`, it is flagged (detected); under them continuously for
 * `cooldownMs`, the flag clears (and a suspended VM is resumed).
 */
export interface DosBounds {
  smallPpsHigh: number
  replyRatioLow: number
  smallPpsMax: number
  ppsHigh: number
  bpsHigh: number
  holdMs: number
  cooldownMs: number
  /** VMs suspended at once at most (null: all but one of the host's VMs) */
  maxSuspended: number | null
}

export const DOS_DEFAULTS: DosBounds = {
  smallPpsHigh: 2000,
  replyRatioLow: 0.5,
  smallPpsMax: 6000,
  ppsHigh: 50_000,
  bpsHigh: 100e6,
  holdMs: 20,
  cooldownMs: 2000,
  maxSuspended: null,
}

/** The priority of a VM started without one. */
export const DEFAULT_PRIORITY = 100

/** A VM's priority: an integer, 0 to 1000, or an InvalidArgument naming `what`. */
export function checkPriority(v: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 1000) throw new StorageError('InvalidArgument', `invalid ${what} ${v}: an integer, 0 to 1000`)
  return v
}

/** A priority given as text (a CLI option). */
export function parsePriority(s: string, what: string): number {
  if (!/^\d{1,4}$/.test(s)) throw new StorageError('InvalidArgument', `invalid ${what} '${s}': an integer, 0 to 1000`)
  return checkPriority(Number(s), what)
}

/** Checks bounds given by a user; what it returns is trusted. */
export function checkBounds(b: Partial<DosBounds>): DosBounds {
  const out = { ...DOS_DEFAULTS, ...b }
  const pos = (k: keyof DosBounds, max: number) => {
    const v = out[k]
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > max) throw new StorageError('InvalidArgument', `invalid DoS bound ${k} ${String(v)} (more than 0, at most ${max})`)
  }
  pos('smallPpsHigh', 1e9)
  pos('smallPpsMax', 1e9)
  pos('ppsHigh', 1e9)
  pos('bpsHigh', 1e12)
  pos('holdMs', 60_000)
  pos('cooldownMs', 3_600_000)
  if (!(out.replyRatioLow >= 0 && out.replyRatioLow <= 1)) throw new StorageError('InvalidArgument', `invalid DoS bound replyRatioLow ${out.replyRatioLow} (0 to 1)`)
  if (out.maxSuspended !== null && !(Number.isInteger(out.maxSuspended) && out.maxSuspended >= 0)) throw new StorageError('InvalidArgument', `invalid DoS bound maxSuspended ${out.maxSuspended} (an integer, 0 or more)`)
  return out
}

/** `key=value,...` of DosBounds' keys (a CLI option), over the defaults. */
export function parseBounds(spec: string, what: string): DosBounds {
  const b: Record<string, number | null> = {}
  for (const part of spec.split(',').filter((x) => x.trim() !== '')) {
    const m = /^\s*(\w+)=([^=]+)$/.exec(part)
    if (!m || !(m[1] in DOS_DEFAULTS)) throw new StorageError('InvalidArgument', `invalid ${what} '${part}': KEY=VALUE, KEY one of ${Object.keys(DOS_DEFAULTS).join(', ')}`)
    const v = Number(m[2])
    if (m[2].trim() === '' || !Number.isFinite(v)) throw new StorageError('InvalidArgument', `invalid ${what} '${part}': the value must be a number`)
    b[m[1]] = v
  }
  return checkBounds(b as Partial<DosBounds>)
}

/** Which bound a rate is over, or null. */
export function overBounds(r: TrafficRate, b: DosBounds): string | null {
  if (r.pps > b.ppsHigh) return `${Math.round(r.pps)} frames/s > ${b.ppsHigh}`
  if (r.bps > b.bpsHigh) return `${Math.round(r.bps)} bytes/s > ${b.bpsHigh}`
  if (r.smallPps > b.smallPpsMax) return `${Math.round(r.smallPps)} small frames/s > ${b.smallPpsMax}`
  if (r.smallPps > b.smallPpsHigh && r.replyRatio < b.replyRatioLow) return `${Math.round(r.smallPps)} small frames/s > ${b.smallPpsHigh}, replies ${r.replyRatio.toFixed(2)} < ${b.replyRatioLow}`
  return null
}

/** A VM the guard watches: its port's meter, and how to suspend and resume it. */
export interface GuardedVm {
  name: string
  /** lower is suspended first */
  priority: number
  monitor: { rate(): TrafficRate; blocked: boolean }
  /** stops the VM running (its inbound frames are already being dropped) */
  suspend(): Promise<void>
  resume(): Promise<void>
  /**
   * Holds the VM to a small CPU share while it is over the bounds but not yet flagged (the hold),
   * and lets it go again (`false`) when it falls back under them or is resumed: a flood does not
   * take the others' CPU for the hold's length before the suspension.
   */
  throttle?(on: boolean): Promise<void>
}

export type DosEventKind = 'detected' | 'suspended' | 'resumed' | 'cleared' | 'suspend-failed' | 'resume-failed'

export interface DosEvent {
  seq: number
  /** the guard clock's ms (the host's: epoch ms) */
  at: number
  vm: string
  kind: DosEventKind
  priority: number
  /** detected: when the traffic first went over the bounds (at - onset >= holdMs) */
  onset?: number
  reason?: string
  rate: TrafficRate
}

interface Watch {
  vm: GuardedVm
  overSince: number | null
  quietSince: number | null
  flagged: boolean
  suspended: boolean
  /** held to a small CPU share (GuardedVm.throttle) */
  throttled: boolean
  /** suspend or resume in flight */
  busy: Promise<void> | null
}

/** Events kept for the REST API. */
const MAX_EVENTS = 1000

/**
 * Per-VM DoS detection and the host's answer (issue #19 item 5). `tick()` (every few ms) reads
 * every VM's rate: a VM over the bounds for holdMs is flagged; flagged VMs are suspended lowest
 * priority first (then by name), at most maxSuspended at once: its inbound frames are dropped at
 * once (monitor.blocked) and then `suspend()` pauses it. A flagged VM's flag clears after
 * cooldownMs under the bounds; a suspended one is then resumed (frames pass again, `resume()`).
 * With `act` false (monitor mode) it flags and records, and suspends nothing.
 */
export class DosGuard {
  private readonly watches = new Map<string, Watch>()
  private readonly log: DosEvent[] = []
  private seq = 0
  readonly counts = { detected: 0, suspended: 0, resumed: 0 }
  onEvent: ((e: DosEvent) => void) | null = null

  constructor(
    readonly bounds: DosBounds,
    private readonly clock: MonitorClock,
    readonly act = true,
  ) {}

  add(vm: GuardedVm): void {
    this.watches.set(vm.name, { vm, overSince: null, quietSince: null, flagged: false, suspended: false, throttled: false, busy: null })
  }

  remove(name: string): void {
    this.watches.delete(name)
  }

  /** The watched VMs' state now. */
  state(): { name: string; priority: number; flagged: boolean; suspended: boolean; rate: TrafficRate }[] {
    return [...this.watches.values()].map((w) => ({ name: w.vm.name, priority: w.vm.priority, flagged: w.flagged, suspended: w.suspended, rate: w.vm.monitor.rate() }))
  }

  isSuspended(name: string): boolean {
    return this.watches.get(name)?.suspended ?? false
  }

  /** Events after `since` (a seq), oldest first. */
  events(since = 0): DosEvent[] {
    return this.log.filter((e) => e.seq > since)
  }

  private emit(w: Watch, kind: DosEventKind, rate: TrafficRate, extra: { onset?: number; reason?: string } = {}): void {
    const e: DosEvent = { seq: ++this.seq, at: this.clock.now(), vm: w.vm.name, kind, priority: w.vm.priority, ...extra, rate }
    this.log.push(e)
    if (this.log.length > MAX_EVENTS) this.log.shift()
    this.onEvent?.(e)
  }

  /** One look at every VM; returns the VMs it began to suspend and to resume. */
  tick(): { suspend: string[]; resume: string[] } {
    const now = this.clock.now()
    const out = { suspend: [] as string[], resume: [] as string[] }
    const rates = new Map<Watch, TrafficRate>()
    for (const w of this.watches.values()) {
      const r = w.vm.monitor.rate()
      rates.set(w, r)
      const reason = overBounds(r, this.bounds)
      if (reason) {
        w.quietSince = null
        w.overSince ??= now
        if (this.act && !w.flagged) this.setThrottle(w, true)
        if (!w.flagged && now - w.overSince >= this.bounds.holdMs) {
          w.flagged = true
          this.counts.detected++
          this.emit(w, 'detected', r, { onset: w.overSince, reason })
        }
      } else {
        w.overSince = null
        w.quietSince ??= now
        if (!w.flagged && !w.suspended) this.setThrottle(w, false)
        if (w.flagged && now - w.quietSince >= this.bounds.cooldownMs) {
          w.flagged = false
          if (w.suspended && !w.busy) {
            w.suspended = false
            out.resume.push(w.vm.name)
            this.resume(w, r)
          } else if (!w.suspended) this.emit(w, 'cleared', r)
        }
      }
    }
    if (!this.act) return out
    const max = this.bounds.maxSuspended ?? Math.max(0, this.watches.size - 1)
    let suspended = [...this.watches.values()].filter((w) => w.suspended).length
    const candidates = [...this.watches.values()].filter((w) => w.flagged && !w.suspended && !w.busy).sort((a, b) => a.vm.priority - b.vm.priority || (a.vm.name < b.vm.name ? -1 : 1))
    for (const w of candidates) {
      if (suspended >= max) break
      suspended++
      this.counts.suspended++
      w.suspended = true
      w.vm.monitor.blocked = true
      out.suspend.push(w.vm.name)
      this.emit(w, 'suspended', rates.get(w)!)
      w.busy = w.vm.suspend().then(
        () => {
          w.busy = null
        },
        (e: Error) => {
          w.busy = null
          this.emit(w, 'suspend-failed', w.vm.monitor.rate(), { reason: e.message })
        },
      )
    }
    return out
  }

  /** Throttles a VM over the bounds (or lets it go); a failure is left to the suspension that follows. */
  private setThrottle(w: Watch, on: boolean): void {
    if (w.throttled === on || !w.vm.throttle) return
    w.throttled = on
    w.vm.throttle(on).catch(() => undefined)
  }

  private resume(w: Watch, r: TrafficRate): void {
    w.busy = w.vm.resume().then(
      () => {
        w.busy = null
        this.setThrottle(w, false)
        w.vm.monitor.blocked = false
        this.counts.resumed++
        this.emit(w, 'resumed', w.vm.monitor.rate())
      },
      (e: Error) => {
        w.busy = null
        w.vm.monitor.blocked = false
        this.emit(w, 'resume-failed', r, { reason: e.message })
      },
    )
  }

  /** Suspend and resume requests in flight have settled. */
  async settled(): Promise<void> {
    await Promise.all([...this.watches.values()].map((w) => w.busy))
  }
}

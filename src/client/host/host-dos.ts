import type { Logger } from 'pino'
import { requestJson } from '../api/http.js'
import { parseUdpAddress } from '../net/address.js'
import { DosGuard, type DosBounds, type DosEvent } from '../net/dos-guard.js'
import type { MonitorClock } from '../net/traffic-monitor.js'
import { GuardedPort } from './guarded-port.js'

/** off: VMs join the switch directly; monitor: detect and record, suspend nothing; on: suspend. */
export type DosMode = 'off' | 'monitor' | 'on'

export interface HostDosOptions {
  mode: Exclude<DosMode, 'off'>
  bounds: DosBounds
  /** how often the guard looks (default 5 ms) */
  tickMs?: number
  /** default: epoch ms, to the µs (performance.timeOrigin + performance.now()), so events compare across processes */
  clock?: MonitorClock
}

const epochClock: MonitorClock = { now: () => performance.timeOrigin + performance.now() }
/** a pause or resume through the control socket takes at most this long */
const CONTROL_MS = 5000
/** a VM over the bounds, during the hold before its suspension, runs at this CPU share (% of a core) */
const THROTTLE_PERCENT = 5

/**
 * The host's DoS guard (`tandem host --dos-guard monitor|on`): every plain VM on a tandem switch
 * gets a GuardedPort (its switch port, metered, kept by the host), and one DosGuard looks at all
 * of them every tickMs. Suspending a VM drops its inbound frames at its port at once and pauses it
 * through its control socket (POST /api/v1/vm/pause: it stops between run slices and uses no CPU);
 * resuming is the reverse. A fault-tolerant pair's sides are not guarded (pausing a primary stalls
 * its backup's feed, and a pair has its own split-brain rules).
 */
export class HostDos {
  readonly guard: DosGuard
  private readonly ports = new Map<string, GuardedPort>()
  private readonly timer: NodeJS.Timeout

  constructor(
    readonly o: HostDosOptions,
    private readonly log: Logger,
  ) {
    this.guard = new DosGuard(o.bounds, o.clock ?? epochClock, o.mode === 'on')
    this.guard.onEvent = (e) => (e.kind.endsWith('failed') ? log.warn(eventFields(e), `dos: ${e.kind}`) : log.info(eventFields(e), `dos: ${e.kind}`))
    this.timer = setInterval(() => this.guard.tick(), o.tickMs ?? 5)
    this.timer.unref()
  }

  /** Opens the VM's guarded port on `switchUrl` (udp:HOST:PORT); resolves to the address the VM joins instead. */
  async attach(vm: string, priority: number, switchUrl: string, control: string, cpuLimit = 100): Promise<string> {
    const port = await GuardedPort.open(parseUdpAddress(switchUrl, 'switch'), this.o.clock ?? epochClock)
    this.ports.set(vm, port)
    const ctl = (what: 'pause' | 'resume') => requestJson(`unix:${control}`, 'POST', `/api/v1/vm/${what}`, {}, { timeoutMs: CONTROL_MS }).then(() => undefined)
    const throttle = (on: boolean) => requestJson(`unix:${control}`, 'POST', '/api/v1/vm/cpu-limit', { percent: on ? Math.min(THROTTLE_PERCENT, cpuLimit) : cpuLimit }, { timeoutMs: CONTROL_MS }).then(() => undefined)
    this.guard.add({ name: vm, priority, monitor: port.monitor, suspend: () => ctl('pause'), resume: () => ctl('resume'), throttle })
    return port.address
  }

  /** The VM ended: its port closes. */
  detach(vm: string): void {
    this.guard.remove(vm)
    this.ports.get(vm)?.close()
    this.ports.delete(vm)
  }

  /** A VM's guard figures for VmInfo, or null when it is not guarded. */
  info(vm: string): { suspended: boolean; dropped: number; framesIn: number } | null {
    const p = this.ports.get(vm)
    if (!p) return null
    return { suspended: this.guard.isSuspended(vm), dropped: p.monitor.totals.dropped, framesIn: p.monitor.totals.framesIn }
  }

  /** GET /api/v1/dos: the mode, the bounds and every guarded VM's rates now. */
  view() {
    return {
      mode: this.o.mode,
      bounds: this.o.bounds,
      counts: this.guard.counts,
      vms: this.guard.state().map((s) => ({ ...s, ...this.ports.get(s.name)!.monitor.totals })),
    }
  }

  close(): void {
    clearInterval(this.timer)
    for (const vm of [...this.ports.keys()]) this.detach(vm)
  }
}

function eventFields(e: DosEvent): object {
  return { vm: e.vm, priority: e.priority, reason: e.reason, onset: e.onset, pps: Math.round(e.rate.pps), smallPps: Math.round(e.rate.smallPps), replyRatio: Number(e.rate.replyRatio.toFixed(2)) }
}

import type { SwitchPort } from '../vm/net.js'

/** Monotonic milliseconds (fractional): the only time the monitor and the guard read. */
export interface MonitorClock {
  now(): number
}

export const MONITOR_DEFAULTS = {
  /** counts are kept per bucket of this many ms */
  bucketMs: 10,
  /** rates are taken over the last windowMs (whole buckets plus the current one) */
  windowMs: 50,
  /** an inbound frame of at most this many bytes is a small frame (a kvstore GET is 14 + 4 + key bytes) */
  smallFrame: 128,
} as const

/** A port's traffic over the monitor's window, per second; inbound includes frames dropped while blocked. */
export interface TrafficRate {
  /** inbound frames (switch to VM) */
  pps: number
  /** inbound bytes */
  bps: number
  /** inbound frames of at most `smallFrame` bytes */
  smallPps: number
  /** outbound frames (VM to switch): its replies */
  outPps: number
  /** outbound over inbound frames in the window (1 when nothing came in) */
  replyRatio: number
}

const IN = 0
const BYTES = 1
const SMALL = 2
const OUT = 3

/**
 * A switch port with a traffic meter between it and its user: frames from the switch (inbound, to
 * the VM) and to the switch (outbound, the VM's replies) are counted in buckets of `bucketMs`, and
 * `rate()` gives them per second over the last `windowMs`. While `blocked`, inbound frames are
 * dropped here and counted (`dropped`); they still count as inbound, so a flood is still seen.
 */
export class TrafficMonitor implements SwitchPort {
  onReceive: ((frame: Buffer) => void) | null = null
  private isBlocked = false
  /** called when `blocked` changes (a GuardedPort asks its switch to hold the frames) */
  onBlocked: ((blocked: boolean) => void) | null = null
  /** totals since the port opened */
  readonly totals = { framesIn: 0, bytesIn: 0, framesOut: 0, dropped: 0 }
  private readonly bucketMs: number
  private readonly smallFrame: number
  private readonly slots: Float64Array[]
  private head: number
  private readonly since: number

  constructor(
    private readonly inner: SwitchPort,
    private readonly clock: MonitorClock,
    o: { bucketMs?: number; windowMs?: number; smallFrame?: number } = {},
  ) {
    this.bucketMs = o.bucketMs ?? MONITOR_DEFAULTS.bucketMs
    this.smallFrame = o.smallFrame ?? MONITOR_DEFAULTS.smallFrame
    const n = Math.max(1, Math.ceil((o.windowMs ?? MONITOR_DEFAULTS.windowMs) / this.bucketMs)) + 1
    this.slots = Array.from({ length: n }, () => new Float64Array(4))
    this.since = clock.now()
    this.head = Math.floor(this.since / this.bucketMs)
    inner.onReceive = (frame) => this.arrive(frame)
  }

  /** drop inbound frames (a suspended VM) */
  get blocked(): boolean {
    return this.isBlocked
  }

  set blocked(b: boolean) {
    if (b === this.isBlocked) return
    this.isBlocked = b
    this.onBlocked?.(b)
  }

  /** Frames dropped before they reached this port (held at the switch): inbound, and dropped. */
  countHeld(frames: number, bytes: number, small: number): void {
    const s = this.slot()
    s[IN] += frames
    s[BYTES] += bytes
    s[SMALL] += small
    this.totals.framesIn += frames
    this.totals.bytesIn += bytes
    this.totals.dropped += frames
  }

  /** A frame from the VM to the switch. */
  send(frame: Buffer): void {
    if (frame.length > 0) {
      this.slot()[OUT]++
      this.totals.framesOut++
    }
    this.inner.send(frame)
  }

  private arrive(frame: Buffer): void {
    const s = this.slot()
    s[IN]++
    s[BYTES] += frame.length
    if (frame.length <= this.smallFrame) s[SMALL]++
    this.totals.framesIn++
    this.totals.bytesIn += frame.length
    if (this.isBlocked) {
      this.totals.dropped++
      return
    }
    this.onReceive?.(frame)
  }

  /** The current bucket, the ones that fell out of the window cleared. */
  private slot(): Float64Array {
    const b = Math.floor(this.clock.now() / this.bucketMs)
    const n = this.slots.length
    for (let k = Math.max(this.head + 1, b - n + 1); k <= b; k++) this.slots[k % n].fill(0)
    if (b > this.head) this.head = b
    return this.slots[this.head % n]
  }

  /** Rates over the window that ends now (over the time since the port opened, when shorter). */
  rate(): TrafficRate {
    this.slot()
    const now = this.clock.now()
    const sum = new Float64Array(4)
    for (const s of this.slots) for (let i = 0; i < 4; i++) sum[i] += s[i]
    const start = Math.max(this.since, (this.head - this.slots.length + 1) * this.bucketMs)
    const seconds = Math.max(this.bucketMs, now - start) / 1000
    return {
      pps: sum[IN] / seconds,
      bps: sum[BYTES] / seconds,
      smallPps: sum[SMALL] / seconds,
      outPps: sum[OUT] / seconds,
      replyRatio: sum[IN] === 0 ? 1 : sum[OUT] / sum[IN],
    }
  }

  close(): void {
    this.inner.close()
  }
}

import type { EventSource } from '../vm/event-source.js'
import { FT_MARK, type LogEvent } from '../vm/events.js'
import type { Machine, MachineOptions } from '../vm/machine.js'
import type { SwitchPort } from '../vm/net.js'
import type { ScsiPath } from '../vm/scsi-path.js'
import type { Timers } from '../vm/timers.js'
import type { BackupDisk } from './backup-disk.js'
import { PAIR_SLICE, type Ack } from './primary.js'

/** The RARP broadcast a VM's MAC sends from its new port at go-live (EtherType 0x8035, RFC 903). */
export function rarpAnnouncement(mac: Buffer): Buffer {
  const f = Buffer.alloc(60)
  f.fill(0xff, 0, 6)
  mac.copy(f, 6)
  f.writeUInt16BE(0x8035, 12)
  // hardware Ethernet, protocol IPv4, lengths 6 and 4, operation 3 (reverse request), sender = target = this MAC
  f.writeUInt16BE(1, 14)
  f.writeUInt16BE(0x0800, 16)
  f[18] = 6
  f[19] = 4
  f.writeUInt16BE(3, 20)
  mac.copy(f, 22)
  mac.copy(f, 32)
  return f
}

/** The VM's outputs on the backup's host: the NIC's port (joined at go-live), its MAC, the console. */
export interface BackupOutputs {
  net?: SwitchPort
  mac?: Buffer
  onConsole?: (b: number) => void
  /** makes the port keep announcing the MAC (a tandem switch's uplink), beside the RARP broadcast */
  announce?: () => void
}

export interface BackupOptions {
  /** the log from the primary (pushed as LOG messages arrive) */
  source: EventSource
  /** the VM's disk as a backup sees it: requests recorded, results from the log */
  disk?: BackupDisk
  /** the disk path the VM uses once live (default: the backup disk's shared path) */
  liveDisk?: () => ScsiPath | Promise<ScsiPath>
  /** sends an ACK to the primary */
  ack: (a: Ack) => void
  timers: Timers
  /** at most one executed-ACK per this many ms between slices (default ACK_EVERY_MS) */
  ackEveryMs?: number
}

/**
 * Between slices a backup acknowledges its count at most this often (a LOG is acknowledged at
 * once: an output held on the primary waits for that; so is a replay that reaches the log's
 * horizon). The primary's lag control decides on the
 * median of ~40 samples per 250-ms period instead of ~250; each ACK it reads costs it ~40 µs.
 */
export const ACK_EVERY_MS = 6

interface HeldOutput {
  at: number
  frame?: Buffer
  console?: number
}

/**
 * The backup of a fault-tolerant pair (ft/SPEC.md): replays the primary's log as it streams in,
 * never passing the last progress mark; acknowledges what it has received and executed; keeps the
 * outputs its replay produces that the primary may not have released yet; and, once it has won
 * the VM's claim (`failover`), replays to the last progress mark and goes live: the guest clock
 * from the log, the pending disk requests issued, the VM's MAC announced, the kept outputs sent.
 */
export class FtBackup {
  private m: Machine | null = null
  private held: HeldOutput[] = []
  private releasedTo = 0
  private lastTicks = 0n
  private acking = true
  private lastAckAt = -Infinity
  private lastExecuted = -1
  /** true once the VM runs live */
  live = false
  /** outputs sent at go-live (produced after the primary's last release mark) */
  resent = 0
  private out: BackupOutputs = {}

  constructor(private readonly o: BackupOptions) {
    o.source.onMark = (e) => this.mark(e)
  }

  /** The machine options that make a VM this pair's backup, its outputs on this host being `out`. */
  machineOptions(out: BackupOutputs = {}): Partial<MachineOptions> {
    const { o } = this
    this.out = out
    return {
      replay: o.source,
      goLive: true,
      disk: o.disk,
      net: out.net,
      mac: out.mac,
      onConsole: (b) => {
        if (this.live) out.onConsole?.(b)
        else this.held.push({ at: this.m?.hart.instret ?? 0, console: b })
      },
      onReplayedFrame: (frame, at) => this.held.push({ at, frame }),
      onDiskResult: o.disk ? (e) => o.disk!.record(e) : undefined,
      afterSlice: (m) => this.afterSlice(m),
      slice: PAIR_SLICE,
      // the guest's exit replayed: acknowledged at once (the primary's lag and held outputs wait for it)
      onExit: (m) => {
        this.m = m
        if (!this.live) this.sendAck()
      },
      onLive: (m) => this.goLive(m),
    }
  }

  attach(m: Machine): void {
    this.m = m
  }

  /** Log bytes from the primary: fed to the replay, acknowledged at once. */
  received(bytes: Buffer): void {
    this.o.source.push(bytes)
    this.sendAck()
  }

  private mark(e: LogEvent): void {
    if (e.kind === FT_MARK.PROGRESS && e.extra && e.extra.length >= 8) this.lastTicks = e.extra.readBigUInt64LE(0)
    else if (e.kind === FT_MARK.RELEASED && e.extra && e.extra.length >= 8) {
      this.releasedTo = Math.max(this.releasedTo, e.extra.readDoubleLE(0))
      let i = 0
      while (i < this.held.length && this.held[i].at < this.releasedTo) i++
      if (i) this.held = this.held.slice(i)
    }
  }

  private sendAck(): void {
    if (!this.acking) return
    const executed = this.m?.hart.instret ?? 0
    this.lastExecuted = executed
    this.lastAckAt = this.o.timers.now()
    // a complete log (its close mark or END arrived) is received whole: past every count
    const h = this.o.source.horizon
    this.o.ack({ received: h === Infinity ? Number.MAX_SAFE_INTEGER : h, executed, readsDone: this.o.disk ? this.o.disk.readsDone + 1 : 0 })
  }

  private afterSlice(m: Machine): void {
    this.m = m
    if (this.live || m.hart.instret === this.lastExecuted) return
    // at the log's horizon, about to wait for more: acknowledged at once (an exact lag sample, at
    // most once per LOG, and no later than the deferred ACK below would have gone)
    if (m.hart.instret >= this.o.source.horizon) return this.sendAck()
    const wait = (this.o.ackEveryMs ?? ACK_EVERY_MS) - (this.o.timers.now() - this.lastAckAt)
    if (wait <= 0) return this.sendAck()
    // acked less than ackEveryMs ago: this count goes out once that much has passed, even if the
    // replay now waits (caught up with an idle primary) and no slice or LOG comes to send it — else
    // the primary would measure, and its lag control act on, a lag as long as the guest stays idle
    if (this.ackDue) return
    this.ackDue = true
    void this.o.timers.sleep(wait).then(() => {
      this.ackDue = false
      if (!this.live && this.m && this.m.hart.instret !== this.lastExecuted) this.sendAck()
    })
  }
  /** a deferred executed-ACK is on its way (afterSlice) */
  private ackDue = false

  /** The primary is gone: no more acks (its outputs stay held there). */
  peerLost(): void {
    this.acking = false
  }

  /**
   * The claim is won: the log ends at the last horizon (records past it dropped), and the VM goes
   * live when its replay gets there.
   */
  failover(): void {
    this.acking = false
    this.o.source.end(this.o.source.horizon)
  }

  private goLive(m: Machine): void {
    this.live = true
    m.setGuestTime(this.lastTicks)
    const disk = this.o.disk
    if (disk) disk.goLive(this.o.liveDisk?.() ?? disk.shared)
    const { net, mac, onConsole } = this.out
    if (net && mac) net.send(rarpAnnouncement(mac))
    this.out.announce?.()
    const held = this.held.filter((h) => h.at >= this.releasedTo)
    this.held = []
    for (const h of held) {
      if (h.frame) net?.send(h.frame)
      else if (h.console !== undefined) onConsole?.(h.console)
    }
    this.resent = held.length
  }
}

import { ChunkedSink, type EventSink } from '../vm/event-sink.js'
import type { EventKind } from '../vm/event-format.js'
import { FT_MARK } from '../vm/events.js'
import type { Machine, MachineOptions } from '../vm/machine.js'
import type { SwitchPort } from '../vm/net.js'
import { mediumRange, type ScsiPath } from '../vm/scsi-path.js'
import type { Timers } from '../vm/timers.js'
import type { BackupReads } from './backup-disk.js'
import type { LagMeter } from './lag.js'
import type { OutputGate } from './output-gate.js'
import type { WriteAfterReadGuard } from './write-after-read.js'

/** What a primary sends its backup (the channel's LOG messages). */
export interface LogLink {
  /** whole records of the log, in order */
  log(bytes: Buffer): void
  /** bytes queued towards the backup and not yet taken by the kernel */
  readonly bufferedBytes: number
  /** resolves once the queue has drained (or the link is gone) */
  drained(): Promise<void>
}

/** An acknowledgement from the backup (ft/SPEC.md ACK). */
export interface Ack {
  /** every record below this instruction count has arrived */
  received: number
  /** the backup has executed every instruction below this count */
  executed: number
  /** the backup has made every READ with a request number below this */
  readsDone: number
}

/** commands that change nothing a later reader sees: not outputs */
const READ_ONLY = new Set([0x00, 0x03, 0x12, 0x1a, 0x5a, 0x25, 0x9e, 0xa0, 0x5e, 0x08, 0x28, 0xa8, 0x88, 0x37, 0xb7, 0x4d])
/**
 * The slices of both sides of a pair (vm/SPEC.md §Hart): ~6 ms where a plain VM's are ~1 ms. Each
 * slice's end costs a primary a LOG frame and an event-loop turn that reads the backup's ACKs:
 * ~100 µs of its time against ~20 µs of a plain VM's, a tenth of a CPU-bound guest's run at 1 ms
 * slices (`cpu10` pinned, per slice: README §FT); at 4 ms the pair still ran ~0.93–0.95 of plain,
 * at 6 ms ~0.98 (the lag p50 6 → 9 ms). A backup following at 1 ms slices ran its replay ~5 %
 * slower than its primary and fell behind (lag p99 48–95 ms against 27–40 ms). Nothing waits for
 * a slice to end: an output ends the slice after its instruction; a guest with a disk request in
 * flight or a NIC on a switch runs SLICE_MIN slices, a replay stops at its log's next event. At
 * most 6 M instructions (~5.5 ms of the translator's fastest guest): a slice that turns slow
 * (~50 MIPS, interpreted or invalidated code) still ends within ~120 ms, well inside the pair's
 * 300-ms loss timeout.
 */
export const PAIR_SLICE = { ms: 6, maxInstructions: 6_000_000 }
/**
 * With no output waiting, the log goes out at most this often (at each of a CPU-bound guest's
 * ~6 ms slices); an output, or a WFI wait, ships it at once.
 */
export const FLUSH_EVERY_MS = 6
/** queued towards the backup past which the primary waits between slices (with the gate's own 64 MiB backstop) */
const LINK_HIGH_WATER = 8 << 20

/** The log of a primary, shipped at each progress mark (and whenever a chunk fills). */
class LinkSink extends ChunkedSink {
  constructor(private readonly link: LogLink) {
    super(64 * 1024)
  }
  get pendingBytes(): number {
    return this.unshipped + this.link.bufferedBytes
  }
  protected ship(chunk: Buffer): void {
    this.link.log(chunk)
  }
  /** Ships every record so far. */
  push(): void {
    this.cut()
  }
  async drain(): Promise<void> {}
  async flush(): Promise<void> {
    this.cut()
  }
  async close(): Promise<void> {
    if (!this.closed) this.seal()
  }
}

/**
 * The machine's recorder on the side that runs a VM live: the log of its current pairing, or
 * nothing while the VM runs alone (count 0: a state saved when a new pairing starts has log position 0).
 */
class PairingSink implements EventSink {
  target: LinkSink | null = null
  add(kind: EventKind, arg: number, instret: number, value: number, extra?: Buffer): void {
    this.target?.add(kind, arg, instret, value, extra)
  }
  get count(): number {
    return this.target?.count ?? 0
  }
  get pendingBytes(): number {
    return this.target?.pendingBytes ?? 0
  }
  async drain(): Promise<void> {}
  async flush(): Promise<void> {
    await this.target?.flush()
  }
  async close(): Promise<void> {
    await this.target?.close()
  }
}

/** A backup this side is paired with: the link its log goes down and the gate its outputs wait in. */
export interface Pairing {
  link: LogLink
  gate: OutputGate
  lag: LagMeter
  /** disk mode: the primary's writes wait for the backup's reads of the same blocks */
  war?: WriteAfterReadGuard
}

export interface PrimaryOptions extends Partial<Pairing> {
  timers: Timers
  reads: BackupReads
}

/**
 * The side of a fault-tolerant pair that runs the VM live (ft/SPEC.md), in one of two modes.
 * Paired (`pair()`): it records the VM's inputs into a log it streams to the backup, holds each
 * output (console bytes, frames, disk writes) in the pairing's gate until the backup has
 * acknowledged the log past the instruction that produced it, and measures the lag from the
 * acks; the VM keeps running while outputs wait. Alone (`alone()`, or built without a link): it
 * records nothing and every output leaves at once. The mode changes between slices (a redundancy
 * restore pairs it inside the pause of a live checkpoint); the wrapped port, console and disk
 * stay the machine's throughout.
 */
export class FtPrimary {
  readonly sink = new PairingSink()
  private m: Machine | null = null
  private console: { bytes: number[]; at: number } = { bytes: [], at: 0 }
  private p: Pairing | null = null
  private lastMark = -1
  private releasedTo = 0
  private markedReleased = 0
  private sinkCountAtMark = -1
  private flushedAt = -Infinity
  /** an output was held since the last flush: its instruction's log must go now */
  private outputWaits = false
  /** bytes of log shipped, over every pairing */
  get logBytes(): number {
    return this.shipped
  }
  private shipped = 0

  constructor(private readonly o: PrimaryOptions) {
    if (o.link && o.gate && o.lag) this.pair({ link: o.link, gate: o.gate, lag: o.lag, war: o.war })
  }

  /** true while outputs wait for a backup's acks */
  get paired(): boolean {
    return this.p !== null
  }

  /** the current pairing's gate (null: alone) */
  get gate(): OutputGate | null {
    return this.p?.gate ?? null
  }

  /**
   * From now on (call between slices: the VM paused, or not yet running) the log goes to `p`'s link
   * from a fresh start and every output waits in `p`'s gate.
   */
  pair(p: Pairing): void {
    const link = p.link
    this.p = p
    this.sink.target = new LinkSink({
      log: (b) => {
        this.shipped += b.length
        link.log(b)
      },
      get bufferedBytes() {
        return link.bufferedBytes
      },
      drained: () => link.drained(),
    })
    this.lastMark = -1
    this.releasedTo = 0
    this.markedReleased = 0
    this.sinkCountAtMark = -1
    this.flushedAt = -Infinity
  }

  /** From now on the VM runs alone: nothing is logged, outputs leave at once (what the gate held is the caller's). */
  alone(): void {
    const c = this.console
    this.p = null
    this.sink.target = null
    // a partial console line held back for the next flush leaves now
    this.console = { bytes: [], at: 0 }
    if (c.bytes.length && this.consoleSink) c.bytes.forEach(this.consoleSink)
  }

  /** The machine options that make a VM this pair's primary (its record, disk, NIC and console wrapped). */
  machineOptions(base: { disk?: ScsiPath; net?: SwitchPort; onConsole?: (b: number) => void }): Partial<MachineOptions> {
    return {
      record: this.sink,
      logDiskResults: this.o.reads === 'log' ? 'data' : 'status',
      disk: base.disk && this.disk(base.disk),
      net: base.net && this.port(base.net),
      onConsole: base.onConsole && this.consoleWriter(base.onConsole),
      afterSlice: (m, waiting) => this.afterSlice(m, waiting === true),
      slice: PAIR_SLICE,
      onExit: (m) => this.flush(m),
    }
  }

  private get instret(): number {
    return this.m?.hart.instret ?? 0
  }

  /** Frames the guest sends leave once acknowledged (alone: at once). */
  port(p: SwitchPort): SwitchPort {
    const outer: SwitchPort = {
      onReceive: null,
      send: (frame) => {
        const gate = this.p?.gate
        if (!gate) return p.send(frame)
        gate.hold('frame', this.instret, () => p.send(frame), frame.length)
        this.outputWaits = true
        this.m?.hart.requestStop()
      },
      close: () => p.close(),
    }
    // frames from the switch reach the NIC at once (they are inputs: logged when delivered)
    p.onReceive = (f) => outer.onReceive?.(f)
    return outer
  }

  /** Console bytes leave a line at a time (or at the slice's end), once acknowledged (alone: at once). */
  consoleWriter(write: (b: number) => void): (b: number) => void {
    this.consoleSink = write
    return (b) => {
      if (!this.p) return write(b)
      this.console.bytes.push(b)
      this.console.at = this.instret
      if (b === 10) {
        this.holdConsole()
        this.m?.hart.requestStop()
      }
    }
  }

  private holdConsole(): void {
    const c = this.console
    const w = this.consoleSink
    const gate = this.p?.gate
    if (!c.bytes.length || !w || !gate) return
    const bytes = c.bytes
    this.console = { bytes: [], at: 0 }
    gate.hold('console', c.at, () => bytes.forEach(w), bytes.length)
  }
  private consoleSink: ((b: number) => void) | undefined

  /**
   * The disk: reads go at once (in disk mode noted for the write-after-read guard); every other
   * command that changes the disk waits until the backup has the log past its submission.
   */
  disk(path: ScsiPath): ScsiPath {
    return {
      get blocks() {
        return path.blocks
      },
      execute: async (cdb, dataOut, dataInLength, req) => {
        const p = this.p
        if (!p) return path.execute(cdb, dataOut, dataInLength, req)
        const { gate, war } = p
        const range = mediumRange(cdb)
        if (range && !range.write) {
          if (war && req) war.read(req.seq, range.lba, range.blocks)
        } else if (!READ_ONLY.has(cdb[0])) {
          const at = req?.at ?? this.instret
          const held = new Promise<void>((resolve) => gate.hold('disk', at, resolve, dataOut?.length ?? 0))
          this.outputWaits = true
          await held
          if (war && range) await war.beforeWrite(range.lba, range.blocks)
        }
        return path.execute(cdb, dataOut, dataInLength, req)
      },
    }
  }

  /** Between slices: the console's partial line held, the log shipped with a progress mark. */
  async afterSlice(m: Machine, waiting: boolean): Promise<void> {
    this.m = m
    const p = this.p
    if (!p) return
    const now = this.o.timers.now()
    if (waiting || this.outputWaits || this.console.bytes.length > 0 || now - this.flushedAt >= FLUSH_EVERY_MS) {
      this.flush(m)
      this.flushedAt = now
    }
    if (p.gate.overLimit) await p.gate.whenUnder()
    if (p.link.bufferedBytes > LINK_HIGH_WATER) await p.link.drained()
  }

  /** Ships everything logged so far, with a progress mark at the VM's count (a paused VM: all of it). */
  flush(m: Machine): void {
    this.m = m
    const p = this.p
    const sink = this.sink.target
    if (!p || !sink) return
    this.outputWaits = false
    this.holdConsole()
    const now = this.o.timers.now()
    const at = m.hart.instret
    if (this.releasedTo > this.markedReleased) {
      const x = Buffer.alloc(8)
      x.writeDoubleLE(this.releasedTo)
      sink.add(FT_MARK.RELEASED, 0, at, 0, x)
      this.markedReleased = this.releasedTo
    }
    if (at !== this.lastMark || sink.count !== this.sinkCountAtMark) {
      const x = Buffer.alloc(16)
      x.writeBigUInt64LE(m.guestTicks)
      x.writeDoubleLE(now, 8)
      sink.add(FT_MARK.PROGRESS, 0, at, 0, x)
      this.sinkCountAtMark = sink.count
      this.lastMark = at
      p.lag.progress(at, now)
    }
    sink.push()
  }

/** Binds the machine (before it runs): outputs take its instruction count. */
  attach(m: Machine): void {
    this.m = m
  }

  /** An ACK from the backup (of the current pairing; alone: ignored). */
  ack(a: Ack): void {
    const p = this.p
    if (!p) return
    const before = p.gate.held
    p.gate.acked(a.received)
    if (p.gate.held < before) this.releasedTo = Math.max(this.releasedTo, Math.min(a.received, this.lastMark))
    p.war?.backupDone(a.readsDone)
    if (this.lastMark >= 0) p.lag.ack(Math.min(a.executed, this.lastMark), this.o.timers.now())
  }
}

import { createHash } from 'node:crypto'
import { loadElf } from './elf.js'
import { EVENT, EVENT_NAMES, ReplayError, type EventKind, type EventRecorder, type EventReplayer } from './events.js'
import { HBA_CDB_BYTES, HBA_COMPLETION_AT, HBA_SLOT_BYTES, HbaCompletion, HbaRequest } from './hba-slot.js'
import { Hart, IRQ, type Bus, type Fault } from './hart.js'
import { Memory } from './memory.js'
import { realTimers, type Timers } from './timers.js'
import type { CpuLimiter } from './cpu-limit.js'
import type { ScsiPath, ScsiResult } from './scsi-path.js'
import type { SwitchPort } from './net.js'

/**
 * A Tandem VM (SPEC.md): one RV32IM hart, RAM at 0x80000000, and memory-mapped devices at the
 * addresses of qemu's `virt` machine where one exists there (test finisher, CLINT, ns16550
 * UART), so that a guest that uses only those runs unchanged on qemu-system-riscv32.
 */
export const MMIO = {
  FINISHER: 0x00100000,
  CLINT: 0x02000000,
  UART: 0x10000000,
  ENTROPY: 0x10001000,
  HBA: 0x10002000,
  NIC: 0x10003000,
} as const
/** mtime ticks per second (qemu virt's timebase) */
export const TIMEBASE_HZ = 10_000_000
/** instructions per run slice: how often the host looks at the timer and the disk */
const SLICE = 50_000
const HBA_MAX_SLOTS = 64

export interface HostClock {
  /** monotonic nanoseconds */
  now(): bigint
  /** wall-clock nanoseconds since the epoch */
  wall(): bigint
}
export const systemClock: HostClock = { now: () => process.hrtime.bigint(), wall: () => BigInt(Date.now()) * 1_000_000n }

export interface MachineOptions {
  image: Buffer
  imageName?: string
  memory: number
  /** how the virtual SCSI HBA reaches its disk: each guest CDB goes to it unchanged */
  disk?: ScsiPath
  record?: EventRecorder
  replay?: EventReplayer
  maxInstructions?: number
  clock?: HostClock
  entropy?: () => number
  /** console bytes as they are written */
  onConsole?: (b: number) => void
  /** the NIC's port on a virtual switch (absent: a NIC with no cable) */
  net?: SwitchPort
  /** the NIC's MAC address (default 02:00:00:00:00:01) */
  mac?: Buffer
  /**
   * Stops the run between two slices (Ctrl-C of `tandem vm run`): a recording ends with an END
   * record marked "stopped by the host", and its replay stops at the same instruction.
   */
  signal?: AbortSignal
  /** called at every multiple of `every` retired instructions, exactly there (tests compare runs) */
  observe?: { every: number; fn: (m: Machine) => void }
  /** how the host waits (WFI) and yields between slices (default: real timers) */
  timers?: Timers
  /** holds the run to a share of one core (SPEC.md "CPU limit"); WFI waits count as idle */
  limiter?: CpuLimiter
}
/** frames waiting for the guest beyond this are dropped (a host-side queue bound) */
const RX_QUEUE = 256
export const NIC_DESC_BYTES = 16
const NIC_MAX_SLOTS = 256

export type RunEnd = 'exit' | 'limit' | 'fault' | 'halt' | 'replay-error' | 'stopped'

export interface RunSummary {
  end: RunEnd
  exitCode: number | null
  instructions: number
  seconds: number
  mips: number
  stateHash: string
  consoleHash: string
  console: string
  interrupts: number
  events: number
  message?: string
  fault?: Fault
}

interface DiskRequest {
  slot: number
  dataAddr: number
  dataLen: number
  dir: number
  done: Promise<ScsiResult>
  result?: ScsiResult
}

export class Machine {
  readonly mem: Memory
  readonly hart: Hart
  readonly console: number[] = []
  private readonly clock: HostClock
  private readonly startNs: bigint
  private mtimecmp = 0xffffffffffffffffn
  private exitCode: number | null = null
  private observedAt = -1
  private stoppedByHost = false
  private interrupts = 0
  // HBA registers
  private ringAddr = 0
  private ringSize = 0
  private submitted = 0
  private completed = 0
  private hbaIrq = false
  private readonly inflight: DiskRequest[] = []
  // NIC registers (two descriptor rings) and host-side queue
  private readonly mac: Buffer
  private txRing = 0
  private txSize = 0
  private txDone = 0
  private rxRing = 0
  private rxSize = 0
  private rxPosted = 0
  private rxFilled = 0
  private nicIrq = false
  private readonly rxQueue: Buffer[] = []
  private rxArrived: (() => void) | null = null
  framesOut = 0
  framesDropped = 0
  private diskChain: Promise<unknown> = Promise.resolve()
  readonly imageSha: Buffer

  constructor(private readonly opts: MachineOptions) {
    this.mem = new Memory(opts.memory)
    this.clock = opts.clock ?? systemClock
    this.startNs = this.clock.now()
    const bus: Bus = { load: (a, s) => this.load(a, s), store: (a, s, v) => this.store(a, s, v) }
    this.hart = new Hart(this.mem, bus, (high) => this.input(EVENT.TIME, high ? 3 : 2, () => this.mtimeWord(high)))
    this.hart.pc = loadElf(opts.image, this.mem, opts.imageName)
    this.imageSha = createHash('sha256').update(opts.image).digest()
    this.mac = opts.mac ?? Buffer.from([2, 0, 0, 0, 0, 1])
    if (opts.net && !opts.replay) {
      opts.net.onReceive = (frame) => {
        // the NIC's address filter: frames for its MAC, broadcast and multicast
        if (!(frame[0] & 1) && !frame.subarray(0, 6).equals(this.mac)) return
        if (this.rxQueue.length >= RX_QUEUE) this.framesDropped++
        else this.rxQueue.push(frame)
        this.rxArrived?.()
      }
    }
  }

  // ---- non-deterministic inputs --------------------------------------------------------

  /** A value the guest reads that the outside world decides: live (and logged) or from the log. */
  private input(kind: EventKind, arg: number, live: () => number): number {
    const r = this.opts.replay
    const at = this.hart.instret
    if (r) {
      const e = r.next()
      if (!e) throw new ReplayError(`replay log ends (record ${r.position}) where the guest makes a ${EVENT_NAMES[kind]} at instruction ${at}`, at)
      if (e.kind !== kind || e.arg !== arg || e.instret !== at) {
        throw new ReplayError(`replay diverged at instruction ${at}: the guest makes a ${EVENT_NAMES[kind]}, the log has a ${EVENT_NAMES[e.kind] ?? e.kind} at instruction ${e.instret}`, at)
      }
      return e.value | 0
    }
    const v = live() | 0
    this.opts.record?.add(kind, arg, at, v)
    return v
  }

  private mtime(): bigint {
    return ((this.clock.now() - this.startNs) * BigInt(TIMEBASE_HZ)) / 1_000_000_000n
  }

  private mtimeWord(high: boolean): number {
    const t = this.mtime()
    return Number(high ? (t >> 32n) & 0xffffffffn : t & 0xffffffffn)
  }

  // ---- the bus -------------------------------------------------------------------------

  private load(addr: number, size: number): number | undefined {
    const a = addr >>> 0
    if (a >= MMIO.UART && a < MMIO.UART + 8) {
      if (size !== 1) return undefined
      return a - MMIO.UART === 5 ? 0x60 : 0 // LSR: transmitter empty, no input
    }
    if (size !== 4) return undefined
    if (a >= MMIO.CLINT && a < MMIO.CLINT + 0x10000) {
      const r = a - MMIO.CLINT
      if (r === 0) return this.hart.mip & (1 << IRQ.MSI) ? 1 : 0
      if (r === 0x4000) return Number(this.mtimecmp & 0xffffffffn) | 0
      if (r === 0x4004) return Number(this.mtimecmp >> 32n) | 0
      if (r === 0xbff8 || r === 0xbffc) return this.input(EVENT.TIME, r === 0xbffc ? 1 : 0, () => this.mtimeWord(r === 0xbffc))
      return 0
    }
    if (a >= MMIO.ENTROPY && a < MMIO.ENTROPY + 0x10) {
      const r = a - MMIO.ENTROPY
      if (r === 0) return this.input(EVENT.ENTROPY, 0, () => (this.opts.entropy ? this.opts.entropy() : randomWord()))
      if (r === 4 || r === 8) {
        const hi = r === 8
        return this.input(EVENT.RTC, hi ? 1 : 0, () => {
          const w = this.clock.wall()
          return Number(hi ? (w >> 32n) & 0xffffffffn : w & 0xffffffffn)
        })
      }
      return 0
    }
    if (a >= MMIO.NIC && a < MMIO.NIC + 0x30) {
      switch (a - MMIO.NIC) {
        case 0x00:
          return this.mac.readInt32LE(0)
        case 0x04:
          return this.mac.readUInt16LE(4)
        case 0x08:
          return this.txRing
        case 0x0c:
          return this.txSize
        case 0x10:
        case 0x14:
          return this.txDone // frames leave when posted: producer and consumer are equal
        case 0x18:
          return this.rxRing
        case 0x1c:
          return this.rxSize
        case 0x20:
          return this.rxPosted
        case 0x24:
          return this.rxFilled // moves only at NET events
        default:
          return 0
      }
    }
    if (a >= MMIO.HBA && a < MMIO.HBA + 0x20) {
      switch (a - MMIO.HBA) {
        case 0x00:
          return this.ringAddr
        case 0x04:
          return this.ringSize
        case 0x08:
          return this.submitted
        case 0x0c:
          return this.completed
        case 0x14:
          return this.opts.disk ? this.opts.disk.blocks : 0
        default:
          return 0
      }
    }
    return undefined
  }

  private store(addr: number, size: number, v: number): boolean {
    const a = addr >>> 0
    if (a >= MMIO.UART && a < MMIO.UART + 8) {
      if (size !== 1) return false
      if (a === MMIO.UART) {
        this.console.push(v & 0xff)
        this.opts.onConsole?.(v & 0xff)
      }
      return true
    }
    if (size !== 4) return false
    if (a === MMIO.FINISHER) {
      const code = v & 0xffff
      if (code === 0x5555) this.exitCode = 0
      else if (code === 0x3333) this.exitCode = (v >>> 16) & 0xffff
      else if (code === 0x7777) this.exitCode = 0 // reset: ends the run
      else return true
      this.hart.requestStop()
      return true
    }
    if (a >= MMIO.CLINT && a < MMIO.CLINT + 0x10000) {
      const r = a - MMIO.CLINT
      if (r === 0) this.hart.setPending(IRQ.MSI, (v & 1) === 1) // deterministic: the guest's own store
      else if (r === 0x4000) this.mtimecmp = (this.mtimecmp & 0xffffffff00000000n) | BigInt(v >>> 0)
      else if (r === 0x4004) this.mtimecmp = (this.mtimecmp & 0xffffffffn) | (BigInt(v >>> 0) << 32n)
      else return true
      if (r !== 0) this.hart.requestStop() // the host looks at the timer again now
      return true
    }
    if (a >= MMIO.NIC && a < MMIO.NIC + 0x30) {
      switch (a - MMIO.NIC) {
        case 0x08:
          this.txRing = v | 0
          return true
        case 0x0c:
          this.txSize = Math.min(v >>> 0, NIC_MAX_SLOTS)
          return true
        case 0x10:
          this.transmit(v >>> 0)
          return true
        case 0x18:
          this.rxRing = v | 0
          return true
        case 0x1c:
          this.rxSize = Math.min(v >>> 0, NIC_MAX_SLOTS)
          return true
        case 0x20:
          this.rxPosted = v >>> 0
          this.hart.requestStop() // a queued frame can be delivered now
          return true
        case 0x28:
          if (v & 1 && this.nicIrq) {
            this.nicIrq = false
            this.updateMei()
          }
          return true
        default:
          return true
      }
    }
    if (a >= MMIO.HBA && a < MMIO.HBA + 0x20) {
      switch (a - MMIO.HBA) {
        case 0x00:
          this.ringAddr = v | 0
          return true
        case 0x04:
          this.ringSize = Math.min(v >>> 0, HBA_MAX_SLOTS)
          return true
        case 0x08:
          this.submit(v >>> 0)
          return true
        case 0x10:
          if (v & 1 && this.hbaIrq) {
            // the guest acknowledges: deterministic, its own store
            this.hbaIrq = false
            this.updateMei()
          }
          return true
        default:
          return true
      }
    }
    return false
  }

  // ---- the virtual SCSI HBA ------------------------------------------------------------

  /** The guest moved its producer index to `upTo`: start every new request, in order. */
  private submit(upTo: number): void {
    const disk = this.opts.disk
    while (this.submitted !== upTo && this.ringSize > 0) {
      const slot = this.submitted % this.ringSize
      const base = this.mem.offsetOf(this.ringAddr + slot * HBA_SLOT_BYTES, HBA_SLOT_BYTES)
      this.submitted = (this.submitted + 1) >>> 0
      const b = this.mem.bytes
      const req: DiskRequest = { slot, dataAddr: 0, dataLen: 0, dir: 0, done: Promise.resolve({ status: 0x02 }) }
      if (base >= 0 && disk) {
        const slotReq = HbaRequest.decode(Buffer.from(b.buffer, b.byteOffset + base, HBA_SLOT_BYTES))
        const cdbLen = Math.min(slotReq.cdbLength, HBA_CDB_BYTES)
        req.dataAddr = slotReq.dataAddr
        req.dataLen = slotReq.dataLength
        req.dir = slotReq.direction
        const cdb = slotReq.cdb.subarray(0, cdbLen)
        let dataOut: Buffer | null = null
        if (req.dir === 1) {
          const at = this.mem.offsetOf(req.dataAddr, req.dataLen)
          dataOut = at >= 0 ? Buffer.from(b.subarray(at, at + req.dataLen)) : null
        }
        const bad = cdbLen < 6 || (req.dir !== 0 && this.mem.offsetOf(req.dataAddr, req.dataLen) < 0) || (req.dir === 1 && !dataOut)
        const prev = this.diskChain
        req.done = bad ? Promise.resolve({ status: 0x02 }) : prev.then(() => disk.execute(cdb, dataOut, req.dir === 2 ? req.dataLen : 0))
        this.diskChain = req.done.catch(() => undefined)
      }
      void req.done.then((r) => (req.result = r)).catch(() => (req.result = { status: 0x02 }))
      this.inflight.push(req)
    }
  }

  /** Completes the oldest `count` requests: data in, status and sense to the guest, interrupt. */
  private async completeDisk(count: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const req = this.inflight.shift()
      if (!req) throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log completes a disk request the guest never submitted`, this.hart.instret)
      const r = req.result ?? (await req.done.catch(() => ({ status: 0x02 }) as ScsiResult))
      const base = this.mem.offsetOf(this.ringAddr + req.slot * HBA_SLOT_BYTES, HBA_SLOT_BYTES)
      if (req.dir === 2 && r.dataIn) {
        const n = Math.min(r.dataIn.length, req.dataLen)
        const at = this.mem.offsetOf(req.dataAddr, n)
        if (at >= 0) {
          this.mem.touchRange(at, n)
          this.mem.bytes.set(r.dataIn.subarray(0, n), at)
        }
      }
      if (base >= 0) {
        this.mem.touchRange(base + HBA_COMPLETION_AT, HBA_SLOT_BYTES - HBA_COMPLETION_AT)
        const view = Buffer.from(this.mem.bytes.buffer, this.mem.bytes.byteOffset + base, HBA_SLOT_BYTES)
        const sense = Buffer.alloc(HbaCompletion.fields.sense.type.bytes)
        const senseLength = r.sense ? r.sense.copy(sense) : 0
        HbaCompletion.encode({ status: r.status, done: 1, senseLength, sense }, view)
      }
      this.completed = (this.completed + 1) >>> 0
    }
    if (count > 0 && !this.hbaIrq) {
      // the completion raises the HBA's interrupt; the DISK event stands for it in the log
      this.hbaIrq = true
      this.interrupts++
      this.updateMei()
    }
  }

  /** The external interrupt line: the HBA's or the NIC's. */
  private updateMei(): void {
    this.hart.setPending(IRQ.MEI, this.hbaIrq || this.nicIrq)
  }

  /** Free receive descriptors the guest has posted. */
  private get rxFree(): number {
    return this.rxSize ? Math.min((this.rxPosted - this.rxFilled) >>> 0, this.rxSize) : 0
  }

  /** A frame into the next posted receive descriptor (a NET event stands for it and its interrupt). */
  private deliverFrame(frame: Buffer): void {
    const d = this.mem.offsetOf(this.rxRing + (this.rxFilled % this.rxSize) * NIC_DESC_BYTES, NIC_DESC_BYTES)
    if (d >= 0) {
      const view = Buffer.from(this.mem.bytes.buffer, this.mem.bytes.byteOffset + d, NIC_DESC_BYTES)
      const n = Math.min(frame.length, view.readUInt32LE(4))
      const at = this.mem.offsetOf(view.readUInt32LE(0), n)
      if (at >= 0) {
        this.mem.touchRange(at, n)
        this.mem.bytes.set(frame.subarray(0, n), at)
      }
      this.mem.touchRange(d + 8, 8)
      view.writeUInt32LE(at >= 0 ? n : 0, 8)
      view.writeUInt32LE(at >= 0 ? 1 : 3, 12) // bit 0: filled; bit 1: the buffer was not in RAM
    }
    this.rxFilled = (this.rxFilled + 1) >>> 0
    if (!this.nicIrq) {
      this.nicIrq = true
      this.interrupts++
      this.updateMei()
    }
  }

  /** The guest moved its transmit producer to `upTo`: every new descriptor's frame leaves now. */
  private transmit(upTo: number): void {
    while (this.txDone !== upTo && this.txSize > 0) {
      const d = this.mem.offsetOf(this.txRing + (this.txDone % this.txSize) * NIC_DESC_BYTES, NIC_DESC_BYTES)
      this.txDone = (this.txDone + 1) >>> 0
      if (d < 0) continue
      const view = Buffer.from(this.mem.bytes.buffer, this.mem.bytes.byteOffset + d, NIC_DESC_BYTES)
      const len = view.readUInt32LE(4)
      const at = this.mem.offsetOf(view.readUInt32LE(0), len)
      if (at < 0 || len === 0 || len > 2048) continue
      this.framesOut++
      // an output, like the console: a replay produces it again but does not send it
      if (!this.opts.replay) this.opts.net?.send(Buffer.from(this.mem.bytes.subarray(at, at + len)))
    }
  }

  // ---- running ---------------------------------------------------------------------------

  private setIrq(irq: number, on: boolean): void {
    const was = (this.hart.mip & (1 << irq)) !== 0
    if (was === on) return
    this.hart.setPending(irq, on)
    if (on) this.interrupts++
    this.opts.record?.add(EVENT.IRQ, irq, this.hart.instret, on ? 1 : 0)
  }

  /** Record/plain mode, between slices: timer and disk completions become events now. */
  private async poll(wfi: boolean): Promise<'go' | 'halt'> {
    for (;;) {
      const done = this.inflight.findIndex((r) => r.result === undefined)
      const ready = done < 0 ? this.inflight.length : done
      if (ready > 0) {
        this.opts.record?.add(EVENT.DISK, 0, this.hart.instret, ready)
        await this.completeDisk(ready)
      }
      while (this.rxFree > 0 && this.rxQueue.length) {
        const frame = this.rxQueue.shift()!
        this.opts.record?.add(EVENT.NET, 0, this.hart.instret, frame.length, frame)
        this.deliverFrame(frame)
      }
      const timerDue = this.mtime() >= this.mtimecmp
      this.setIrq(IRQ.MTI, timerDue)
      if (!wfi || this.hart.mip & this.hart.mie) return 'go'
      // WFI with nothing pending: wait for the timer or the disk, whichever can come first
      const canTimer = (this.hart.mie & (1 << IRQ.MTI)) !== 0 && this.mtimecmp !== 0xffffffffffffffffn
      const canDisk = this.inflight.length > 0 && (this.hart.mie & (1 << IRQ.MEI)) !== 0
      const canNet = this.opts.net !== undefined && this.rxFree > 0 && (this.hart.mie & (1 << IRQ.MEI)) !== 0
      if (!canTimer && !canDisk && !canNet) return 'halt'
      const waits: Promise<unknown>[] = []
      if (canTimer) {
        const ns = ((this.mtimecmp - this.mtime()) * 1_000_000_000n) / BigInt(TIMEBASE_HZ)
        waits.push((this.opts.timers ?? realTimers).sleep(Math.max(0, Math.min(Number(ns / 1_000_000n), 1000))))
      }
      if (canDisk) waits.push(this.inflight[0].done.catch(() => undefined))
      if (canNet) waits.push(new Promise<void>((r) => (this.rxArrived = r)))
      const signal = this.opts.signal
      if (signal?.aborted) return 'go'
      let onAbort: (() => void) | undefined
      if (signal) waits.push(new Promise<void>((r) => signal.addEventListener('abort', (onAbort = () => r()), { once: true })))
      const woken = Promise.race(waits)
      await (this.opts.limiter ? this.opts.limiter.idle(woken) : woken)
      if (onAbort) signal!.removeEventListener('abort', onAbort)
      this.rxArrived = null
    }
  }

  /** Runs to exit, fault, the instruction limit, or a replay error. */
  async run(): Promise<RunSummary> {
    const t0 = process.hrtime.bigint()
    const max = this.opts.maxInstructions ?? Number.MAX_SAFE_INTEGER
    const replay = this.opts.replay
    let end: RunEnd = 'limit'
    let message: string | undefined
    try {
      for (;;) {
        if (this.hart.instret >= max) {
          end = 'limit'
          message = `stopped at the instruction limit (${max})`
          break
        }
        if (this.stoppedByHost || (!replay && this.opts.signal?.aborted)) {
          end = 'stopped'
          message = `stopped by the host at instruction ${this.hart.instret}`
          if (!replay) this.opts.record?.add(EVENT.END, 1, this.hart.instret, 0)
          break
        }
        let limit = Math.min(this.hart.instret + SLICE, max)
        const obs = this.opts.observe
        if (obs) limit = Math.min(limit, (Math.floor(this.hart.instret / obs.every) + 1) * obs.every)
        const next = replay?.peek()
        if (replay && next && next.instret < limit && next.kind !== EVENT.TIME && next.kind !== EVENT.ENTROPY && next.kind !== EVENT.RTC) limit = Math.max(next.instret, this.hart.instret)
        const reason = limit > this.hart.instret ? this.hart.run(limit) : 'limit'
        if (obs && this.hart.instret % obs.every === 0 && this.hart.instret !== this.observedAt) {
          this.observedAt = this.hart.instret
          obs.fn(this)
        }
        if (reason === 'fault') {
          end = 'fault'
          message = this.hart.fault!.message
          break
        }
        if (this.exitCode !== null) {
          end = 'exit'
          break
        }
        if (replay) {
          await this.deliverReplayed(reason === 'wfi')
        } else {
          const p = await this.poll(reason === 'wfi')
          if (p === 'halt') {
            end = 'halt'
            message = `the guest waits for an interrupt (WFI) that cannot come, at instruction ${this.hart.instret}`
            break
          }
          if (reason === 'limit') await (this.opts.timers ?? realTimers).yield()
        }
        if (this.opts.limiter) await this.opts.limiter.afterSlice(this.opts.signal)
      }
      if (end === 'exit') {
        if (replay) {
          const e = replay.next()
          if (!e || e.kind !== EVENT.END || e.instret !== this.hart.instret || e.value !== this.exitCode) {
            throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the guest exits with ${this.exitCode}, the log has ${e ? `a ${EVENT_NAMES[e.kind]} at instruction ${e.instret}` : 'no end record'}`, this.hart.instret)
          }
        } else this.opts.record?.add(EVENT.END, 0, this.hart.instret, this.exitCode ?? 0)
      }
    } catch (e) {
      if (!(e instanceof ReplayError)) throw e
      end = 'replay-error'
      message = e.message
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9
    return {
      end,
      exitCode: this.exitCode,
      instructions: this.hart.instret,
      seconds,
      mips: this.hart.instret / seconds / 1e6,
      stateHash: this.stateHash(),
      consoleHash: createHash('sha256').update(Buffer.from(this.console)).digest('hex'),
      console: Buffer.from(this.console).toString('latin1'),
      interrupts: this.interrupts,
      events: replay ? replay.position : (this.opts.record?.count ?? 0),
      message,
      fault: this.hart.fault ?? undefined,
    }
  }

  /** Replay mode: every interrupt and disk completion logged at this instruction, in order. */
  private async deliverReplayed(wfi: boolean): Promise<void> {
    const r = this.opts.replay!
    for (;;) {
      const e = r.peek()
      if (e && e.instret < this.hart.instret && (e.kind === EVENT.IRQ || e.kind === EVENT.DISK || e.kind === EVENT.NET || e.kind === EVENT.END)) {
        throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log has a ${EVENT_NAMES[e.kind]} at instruction ${e.instret}, which the guest has passed`, this.hart.instret)
      }
      if (!e || e.instret !== this.hart.instret) break
      if (e.kind === EVENT.IRQ) {
        r.next()
        // only the timer's line is logged (the devices' line follows DISK and NET events)
        if (e.arg !== IRQ.MTI || e.value > 1) throw new ReplayError(`'${r.file}': record ${r.position - 1} is not a timer interrupt (line ${e.arg}, value ${e.value})`, this.hart.instret)
        const on = e.value === 1
        if (on && !(this.hart.mip & (1 << e.arg))) this.interrupts++
        this.hart.setPending(e.arg, on)
      } else if (e.kind === EVENT.DISK) {
        r.next()
        await this.completeDisk(e.value)
      } else if (e.kind === EVENT.NET) {
        r.next()
        if (this.rxFree === 0) throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log delivers a network frame, the guest has no receive buffer posted`, this.hart.instret)
        this.deliverFrame(e.extra ?? Buffer.alloc(0))
      } else if (e.kind === EVENT.END && e.arg === 1) {
        // the recording was stopped by its host here: so is the replay
        r.next()
        this.stoppedByHost = true
        return
      } else if (e.kind === EVENT.END) {
        throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log ends the run here, the guest goes on`, this.hart.instret)
      } else break // an input read: consumed by the instruction that makes it
    }
    if (wfi && !(this.hart.mip & this.hart.mie)) {
      const e = r.peek()
      if (!e) throw new ReplayError(`replay log ends at instruction ${this.hart.instret} while the guest waits for an interrupt`, this.hart.instret)
      if (e.instret > this.hart.instret && (e.kind === EVENT.IRQ || e.kind === EVENT.DISK || e.kind === EVENT.NET)) {
        throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the guest waits for an interrupt, the log has the next one at instruction ${e.instret}`, this.hart.instret)
      }
    }
  }

  /** SHA-256 of everything the guest can observe: registers, CSRs, memory, device state. */
  stateHash(): string {
    const h = createHash('sha256')
    const hart = this.hart
    h.update(Buffer.from(hart.x.buffer, hart.x.byteOffset, 128))
    const regs = Buffer.alloc(4 * 12 + 8 * 2)
    ;[hart.pc, hart.mstatus, hart.mie, hart.mip, hart.mtvec, hart.mepc, hart.mcause, hart.mtval, hart.mscratch, this.ringAddr, this.ringSize, this.completed].forEach((v, i) => regs.writeInt32LE(v | 0, i * 4))
    const nic = Buffer.alloc(32)
    ;[this.txRing, this.txSize, this.txDone, this.rxRing, this.rxSize, this.rxPosted, this.rxFilled, (this.nicIrq ? 2 : 0) | (this.hbaIrq ? 4 : 0)].forEach((v, i) => nic.writeInt32LE(v | 0, i * 4))
    h.update(nic)
    regs.writeDoubleLE(hart.instret, 48)
    regs.writeBigUInt64LE(this.mtimecmp, 56)
    h.update(regs)
    h.update(this.mem.bytes)
    return h.digest('hex')
  }
}

function randomWord(): number {
  const b = new Uint32Array(1)
  crypto.getRandomValues(b)
  return b[0]
}

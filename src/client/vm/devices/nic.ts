import { defineStruct, type StructValue } from '../../../disk-formats/struct.js'
import { MAX_FRAME } from '../events.js'
import type { SwitchPort } from '../net.js'
import type { StateReader, StateWriter } from '../state-codec.js'
import { u32, type DeviceContext, type VmDevice } from './device.js'

export const NIC_DESC_BYTES = 16
const MAX_SLOTS = 256
/** frames waiting for the guest beyond this are dropped (a host-side queue bound) */
export const RX_QUEUE = 256

export const NicRegs = defineStruct({
  mac: { offset: 0, type: { bytes: 6 } },
  txRing: { offset: 8, type: 'u32' },
  txSize: { offset: 12, type: 'u32' },
  /** TX producer = consumer: frames leave when posted */
  txDone: { offset: 16, type: 'u32' },
  rxRing: { offset: 20, type: 'u32' },
  rxSize: { offset: 24, type: 'u32' },
  rxPosted: { offset: 28, type: 'u32' },
  /** RX consumer: moves only at NET events */
  rxFilled: { offset: 32, type: 'u32' },
  irq: { offset: 36, type: 'u8' },
  /** frames the guest has sent */
  framesOut: { offset: 40, type: 'f64' },
})

/** The NIC (SPEC.md §NIC descriptor): two descriptor rings and a port on a virtual switch. */
export class Nic implements VmDevice {
  readonly tag = 'NIC '
  readonly size = 0x30
  r: StructValue<typeof NicRegs>
  /** frames from the switch the guest has not received yet (host side) */
  private rxQueue: Buffer[] = []
  /** frames dropped because the queue was full (host side) */
  framesDropped = 0
  private arrived: (() => void) | null = null

  constructor(
    readonly base: number,
    private readonly ctx: DeviceContext,
    mac: Buffer,
    private readonly port: SwitchPort | undefined,
  ) {
    this.r = { mac: Buffer.from(mac), txRing: 0, txSize: 0, txDone: 0, rxRing: 0, rxSize: 0, rxPosted: 0, rxFilled: 0, irq: 0, framesOut: 0 }
    if (!ctx.replaying) this.connect()
  }

  /** Frames from the switch reach the NIC (at start, or when a replay goes live). */
  connect(): void {
    const port = this.port
    if (port && !port.onReceive) {
      port.onReceive = (frame) => {
        // the NIC's address filter: frames for its MAC, broadcast and multicast
        if (!(frame[0] & 1) && !frame.subarray(0, 6).equals(this.r.mac)) return
        if (this.rxQueue.length >= RX_QUEUE) this.framesDropped++
        else this.rxQueue.push(frame)
        this.arrived?.()
      }
    }
  }

  get irq(): boolean {
    return this.r.irq === 1
  }

  /** has a cable: frames can arrive */
  get connected(): boolean {
    return this.port !== undefined
  }

  read(r: number, size: number): number | undefined {
    if (size !== 4) return undefined
    switch (r) {
      case 0x00:
        return this.r.mac.readInt32LE(0)
      case 0x04:
        return this.r.mac.readUInt16LE(4)
      case 0x08:
        return this.r.txRing | 0
      case 0x0c:
        return this.r.txSize
      case 0x10:
      case 0x14:
        return this.r.txDone | 0
      case 0x18:
        return this.r.rxRing | 0
      case 0x1c:
        return this.r.rxSize
      case 0x20:
        return this.r.rxPosted | 0
      case 0x24:
        return this.r.rxFilled | 0
      default:
        return 0
    }
  }

  write(r: number, size: number, v: number): boolean {
    if (size !== 4) return false
    switch (r) {
      case 0x08:
        this.r.txRing = u32(v)
        break
      case 0x0c:
        this.r.txSize = Math.min(v >>> 0, MAX_SLOTS)
        break
      case 0x10:
        this.transmit(v >>> 0)
        break
      case 0x18:
        this.r.rxRing = u32(v)
        break
      case 0x1c:
        this.r.rxSize = Math.min(v >>> 0, MAX_SLOTS)
        break
      case 0x20:
        this.r.rxPosted = v >>> 0
        this.ctx.hart.requestStop() // a queued frame can be delivered now
        break
      case 0x28:
        if (v & 1 && this.r.irq) {
          this.r.irq = 0
          this.ctx.updateExternalIrq()
        }
        break
    }
    return true
  }

  /** free receive descriptors the guest has posted */
  get rxFree(): number {
    return this.r.rxSize ? Math.min((this.r.rxPosted - this.r.rxFilled) >>> 0, this.r.rxSize) : 0
  }

  /** the next frame waiting for the guest, taken off the queue */
  takeQueued(): Buffer | undefined {
    return this.rxQueue.shift()
  }

  get queued(): number {
    return this.rxQueue.length
  }

  /** settles when a frame arrives from the switch */
  arrival(): Promise<void> {
    return new Promise<void>((r) => (this.arrived = r))
  }

  stopWaiting(): void {
    this.arrived = null
  }

  /** A frame into the next posted receive descriptor (a NET event stands for it and its interrupt). */
  deliver(frame: Buffer): void {
    const mem = this.ctx.mem
    const d = mem.offsetOf(this.r.rxRing + (this.r.rxFilled % this.r.rxSize) * NIC_DESC_BYTES, NIC_DESC_BYTES)
    if (d >= 0) {
      const view = Buffer.from(mem.bytes.buffer, mem.bytes.byteOffset + d, NIC_DESC_BYTES)
      const n = Math.min(frame.length, view.readUInt32LE(4))
      const at = mem.offsetOf(view.readUInt32LE(0), n)
      if (at >= 0) {
        mem.touchRange(at, n)
        mem.bytes.set(frame.subarray(0, n), at)
      }
      mem.touchRange(d + 8, 8)
      view.writeUInt32LE(at >= 0 ? n : 0, 8)
      view.writeUInt32LE(at >= 0 ? 1 : 3, 12) // bit 0: filled; bit 1: the buffer was not in RAM
    }
    this.r.rxFilled = (this.r.rxFilled + 1) >>> 0
    if (!this.r.irq) {
      this.r.irq = 1
      this.ctx.interruptRaised()
      this.ctx.updateExternalIrq()
    }
  }

  /** The guest moved its transmit producer to `upTo`: every new descriptor's frame leaves now. */
  private transmit(upTo: number): void {
    const mem = this.ctx.mem
    while (this.r.txDone !== upTo && this.r.txSize > 0) {
      const d = mem.offsetOf(this.r.txRing + (this.r.txDone % this.r.txSize) * NIC_DESC_BYTES, NIC_DESC_BYTES)
      this.r.txDone = (this.r.txDone + 1) >>> 0
      if (d < 0) continue
      const view = Buffer.from(mem.bytes.buffer, mem.bytes.byteOffset + d, NIC_DESC_BYTES)
      const len = view.readUInt32LE(4)
      const at = mem.offsetOf(view.readUInt32LE(0), len)
      if (at < 0 || len === 0 || len > 2048) continue
      this.r.framesOut++
      // an output, like the console: a replay produces it again but does not send it
      if (!this.ctx.replaying) this.port?.send(Buffer.from(mem.bytes.subarray(at, at + len)))
      else this.ctx.replayedFrame?.(Buffer.from(mem.bytes.subarray(at, at + len)))
    }
  }

  save(w: StateWriter): void {
    w.struct(NicRegs, this.r)
  }

  restore(r: StateReader): void {
    this.r = r.struct(NicRegs)
  }

  saveHost(w: StateWriter): void {
    w.u32(this.framesDropped)
    w.list(this.rxQueue, (w, f) => w.bytes(f))
  }

  restoreHost(r: StateReader): void {
    this.framesDropped = r.u32()
    this.rxQueue = r.list(RX_QUEUE, (r) => r.bytes() ?? Buffer.alloc(0)).filter((f) => f.length <= MAX_FRAME)
  }
}

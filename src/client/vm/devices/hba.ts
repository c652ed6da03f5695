import { defineStruct, type StructValue } from '../../../disk-formats/struct.js'
import { ReplayError } from '../events.js'
import { HBA_CDB_BYTES, HBA_COMPLETION_AT, HBA_SLOT_BYTES, HbaCompletion, HbaRequest } from '../hba-slot.js'
import type { ScsiPath, ScsiResult } from '../scsi-path.js'
import { StateError, type StateReader, type StateWriter } from '../state-codec.js'
import { u32, type DeviceContext, type VmDevice } from './device.js'

const MAX_SLOTS = 64
const CHECK_CONDITION: ScsiResult = { status: 0x02 }

export const HbaRegs = defineStruct({
  ringAddr: { offset: 0, type: 'u32' },
  ringSize: { offset: 4, type: 'u32' },
  /** producer index: requests the guest has submitted */
  submitted: { offset: 8, type: 'u32' },
  completed: { offset: 12, type: 'u32' },
  /** the HBA holds the external interrupt until the guest acknowledges */
  irq: { offset: 16, type: 'u8' },
})

/** A request the guest submitted and has not seen complete (SPEC.md §VM state). */
export const HbaInflight = defineStruct({
  slot: { offset: 0, type: 'u32' },
  dataAddr: { offset: 4, type: 'u32' },
  dataLength: { offset: 8, type: 'u32' },
  direction: { offset: 12, type: 'u8' },
  /** 1: refused at submit (bad CDB or buffer), completes with CHECK CONDITION */
  refused: { offset: 13, type: 'u8' },
})

interface DiskRequest extends StructValue<typeof HbaInflight> {
  /** its number (the submitted count before it) and the instruction count at submit */
  seq: number
  at: number
  cdb: Buffer
  dataOut: Buffer | null
  done: Promise<ScsiResult>
  result?: ScsiResult
}

/**
 * The virtual SCSI HBA (SPEC.md §HBA ring slot): the guest's CDBs go to the disk's ScsiPath
 * unchanged, one at a time in submission order; completions reach the guest only when the host
 * (or the replay log) completes them, oldest first.
 */
export class Hba implements VmDevice {
  readonly tag = 'HBA '
  readonly size = 0x20
  r: StructValue<typeof HbaRegs> = { ringAddr: 0, ringSize: 0, submitted: 0, completed: 0, irq: 0 }
  private inflight: DiskRequest[] = []
  private chain: Promise<unknown> = Promise.resolve()

  constructor(
    readonly base: number,
    private readonly ctx: DeviceContext,
    private readonly disk: ScsiPath | undefined,
  ) {}

  get irq(): boolean {
    return this.r.irq === 1
  }

  read(r: number, size: number): number | undefined {
    if (size !== 4) return undefined
    switch (r) {
      case 0x00:
        return this.r.ringAddr | 0
      case 0x04:
        return this.r.ringSize
      case 0x08:
        return this.r.submitted | 0
      case 0x0c:
        return this.r.completed | 0
      case 0x14:
        return this.disk ? this.disk.blocks : 0
      default:
        return 0
    }
  }

  write(r: number, size: number, v: number): boolean {
    if (size !== 4) return false
    if (r === 0x00) this.r.ringAddr = u32(v)
    else if (r === 0x04) this.r.ringSize = Math.min(v >>> 0, MAX_SLOTS)
    else if (r === 0x08) this.submit(v >>> 0)
    else if (r === 0x10 && v & 1 && this.r.irq) {
      // the guest acknowledges: deterministic, its own store
      this.r.irq = 0
      this.ctx.updateExternalIrq()
    }
    return true
  }

  /** The guest moved its producer index to `upTo`: start every new request, in order. */
  private submit(upTo: number): void {
    const mem = this.ctx.mem
    while (this.r.submitted !== upTo && this.r.ringSize > 0) {
      const slot = this.r.submitted % this.r.ringSize
      const base = mem.offsetOf(this.r.ringAddr + slot * HBA_SLOT_BYTES, HBA_SLOT_BYTES)
      const req: DiskRequest = { seq: this.r.submitted, at: this.ctx.hart.instret, slot, dataAddr: 0, dataLength: 0, direction: 0, refused: 1, cdb: Buffer.alloc(0), dataOut: null, done: Promise.resolve(CHECK_CONDITION) }
      this.r.submitted = (this.r.submitted + 1) >>> 0
      if (base >= 0 && this.disk) {
        const b = mem.bytes
        const s = HbaRequest.decode(Buffer.from(b.buffer, b.byteOffset + base, HBA_SLOT_BYTES))
        const cdbLen = Math.min(s.cdbLength, HBA_CDB_BYTES)
        Object.assign(req, { dataAddr: s.dataAddr, dataLength: s.dataLength, direction: s.direction, cdb: s.cdb.subarray(0, cdbLen) })
        if (req.direction === 1) {
          const at = mem.offsetOf(req.dataAddr, req.dataLength)
          req.dataOut = at >= 0 ? Buffer.from(b.subarray(at, at + req.dataLength)) : null
        }
        req.refused = cdbLen < 6 || (req.direction !== 0 && mem.offsetOf(req.dataAddr, req.dataLength) < 0) || (req.direction === 1 && !req.dataOut) ? 1 : 0
      }
      this.issue(req)
      this.inflight.push(req)
    }
    // the request starts once the slice ends (its promise chain runs between slices): end it here
    this.ctx.hart.requestStop()
  }

  /** Sends a request to the disk after the ones before it (or completes a refused one). */
  private issue(req: DiskRequest): void {
    const disk = this.disk
    if (!req.refused && disk) {
      const info = { seq: req.seq, at: req.at }
      req.done = this.chain.then(() => disk.execute(req.cdb, req.dataOut, req.direction === 2 ? req.dataLength : 0, info))
      this.chain = req.done.catch(() => undefined)
    } else req.done = Promise.resolve(CHECK_CONDITION)
    void req.done.then((r) => (req.result = r)).catch(() => (req.result = CHECK_CONDITION))
  }

  /** requests whose results are in, counted from the oldest up to the first still running */
  get ready(): number {
    const i = this.inflight.findIndex((r) => r.result === undefined)
    return i < 0 ? this.inflight.length : i
  }

  get pending(): number {
    return this.inflight.length
  }

  /** The oldest `count` requests and their results (those `ready` counts): what a primary logs. */
  results(count: number): { seq: number; cdb: Buffer; result: ScsiResult }[] {
    return this.inflight.slice(0, count).map((q) => ({ seq: q.seq, cdb: q.cdb, result: q.result ?? CHECK_CONDITION }))
  }

  /** settles when the oldest request has its result */
  oldest(): Promise<unknown> {
    return this.inflight[0]?.done.catch(() => undefined) ?? Promise.resolve()
  }

  /** settles when every request submitted so far has its result (not yet delivered to the guest) */
  async drain(): Promise<void> {
    await Promise.all(this.inflight.map((r) => r.done.catch(() => undefined)))
  }

  /** Completes the oldest `count` requests: data in, status and sense to the guest, interrupt. */
  async complete(count: number): Promise<void> {
    const mem = this.ctx.mem
    for (let i = 0; i < count; i++) {
      const req = this.inflight.shift()
      const at = this.ctx.hart.instret
      if (!req) throw new ReplayError(`replay diverged at instruction ${at}: the log completes a disk request the guest never submitted`, at)
      const r = req.result ?? (await req.done.catch(() => CHECK_CONDITION))
      const base = mem.offsetOf(this.r.ringAddr + req.slot * HBA_SLOT_BYTES, HBA_SLOT_BYTES)
      if (req.direction === 2 && r.dataIn) {
        const n = Math.min(r.dataIn.length, req.dataLength)
        const to = mem.offsetOf(req.dataAddr, n)
        if (to >= 0) {
          mem.touchRange(to, n)
          mem.bytes.set(r.dataIn.subarray(0, n), to)
        }
      }
      if (base >= 0) {
        mem.touchRange(base + HBA_COMPLETION_AT, HBA_SLOT_BYTES - HBA_COMPLETION_AT)
        const view = Buffer.from(mem.bytes.buffer, mem.bytes.byteOffset + base, HBA_SLOT_BYTES)
        const sense = Buffer.alloc(HbaCompletion.fields.sense.type.bytes)
        const senseLength = r.sense ? r.sense.copy(sense) : 0
        HbaCompletion.encode({ status: r.status, done: 1, senseLength, sense }, view)
      }
      this.r.completed = (this.r.completed + 1) >>> 0
    }
    if (count > 0 && !this.r.irq) {
      // the completion raises the HBA's interrupt; the DISK event stands for it in the log
      this.r.irq = 1
      this.ctx.interruptRaised()
      this.ctx.updateExternalIrq()
    }
  }

  save(w: StateWriter): void {
    w.struct(HbaRegs, this.r)
    w.list(this.inflight, (w, q) => {
      w.struct(HbaInflight, q)
      w.bytes(q.cdb)
      w.bytes(q.dataOut)
    })
  }

  restore(r: StateReader): void {
    this.r = r.struct(HbaRegs)
    this.inflight = r.list(MAX_SLOTS * 2, (r) => {
      const q = r.struct(HbaInflight)
      const cdb = r.bytes() ?? Buffer.alloc(0)
      if (cdb.length > HBA_CDB_BYTES) throw new StateError(`a disk request's CDB of ${cdb.length} bytes`)
      return { ...q, seq: 0, at: 0, cdb, dataOut: r.bytes(), done: Promise.resolve(CHECK_CONDITION) }
    })
    // requests complete in order, so the oldest in flight is the one after the last completed
    this.inflight.forEach((q, i) => (q.seq = (this.r.completed + i) >>> 0))
  }

  /** The results in hand (a request without one is issued again at restore, in order). */
  saveHost(w: StateWriter): void {
    w.list(this.inflight, (w, q) => {
      const res = q.result
      w.u32(res ? res.status : 0xffffffff)
      w.bytes(res?.sense)
      w.bytes(res?.dataIn)
    })
  }

  restoreHost(r: StateReader): void {
    const results = r.list(MAX_SLOTS * 2, (r) => {
      const status = r.u32()
      const sense = r.bytes()
      const dataIn = r.bytes()
      return status === 0xffffffff ? undefined : ({ status, ...(sense ? { sense } : {}), ...(dataIn ? { dataIn } : {}) } as ScsiResult)
    })
    if (results.length !== this.inflight.length) throw new StateError(`${results.length} disk results for ${this.inflight.length} requests`)
    this.chain = Promise.resolve()
    this.inflight.forEach((q, i) => {
      const res = results[i]
      if (res) {
        q.result = res
        q.done = Promise.resolve(res)
      } else this.issue(q)
    })
  }
}

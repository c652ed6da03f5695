import { createHash } from 'node:crypto'
import type { BlockDevice, ComparesAndWrites } from '../../disk-formats/block-device.js'
import { isStorageError } from '../../disk-formats/errors.js'
import * as C from './constants.js'
import { invalidField, invalidOpcode, invalidParameter, lbaOutOfRange, parameterLength, SenseError, senseData, senseFor } from './sense.js'
import { Conflict, PersistentReservations, type Access } from './persistent-reservations.js'
import { CopyManager } from './extended-copy.js'

export interface ScsiResult {
  status: number
  dataIn?: Buffer
  sense?: Buffer
}

export interface LogicalUnitOptions {
  /** unit serial number (VPD 0x80) and the seed of the NAA identifier (VPD 0x83) */
  serial: string
  vendor?: string
  product?: string
  revision?: string
}

export const BLOCK = 512
/** Largest transfer accepted and advertised (VPD 0xB0): 32 MiB, as the NBD export. */
export const MAX_TRANSFER_BLOCKS = 65536
/** COMPARE AND WRITE of at most this many blocks (VMFS uses one). */
export const MAX_CAW_BLOCKS = 128
export const MAX_UNMAP_DESCRIPTORS = 256
export const MAX_WRITE_SAME_BLOCKS = 1 << 20
/**
 * WRITE ATOMIC(16): whole 4 KiB pages (aligned to and a multiple of 8 blocks), up to the maximum
 * transfer. Atomic against every other command (the exclusive gate); across a crash each page is
 * written whole, but a write of several pages may be torn at a page boundary (README).
 */
export const ATOMIC_ALIGNMENT = 8
export const MAX_ATOMIC_BLOCKS = MAX_TRANSFER_BLOCKS

/** Shared for ordinary commands, exclusive for COMPARE AND WRITE and ORWRITE (atomic against all others). */
class Gate {
  private readers = 0
  private writer = false
  private waiting: (() => void)[] = []
  private async acquire(exclusive: boolean): Promise<void> {
    while (this.writer || (exclusive && this.readers > 0)) await new Promise<void>((r) => this.waiting.push(r))
    if (exclusive) this.writer = true
    else this.readers++
  }
  private release(exclusive: boolean): void {
    if (exclusive) this.writer = false
    else this.readers--
    const w = this.waiting
    this.waiting = []
    for (const r of w) r()
  }
  async run<T>(exclusive: boolean, fn: () => Promise<T>): Promise<T> {
    await this.acquire(exclusive)
    try {
      return await fn()
    } finally {
      this.release(exclusive)
    }
  }
}

/**
 * A command of one I_T nexus from its reservation check to its answer (a SAM-5 task), so that
 * PREEMPT AND ABORT can abort the task sets of the nexuses it preempts.
 */
interface Task {
  readonly nexus: string
  /** aborted before it reached the medium: it answers TASK ABORTED and has no effect */
  aborted: boolean
  /** its work, once it holds the gate (from then on it runs to its end) */
  running: Promise<ScsiResult> | null
}

const pad = (s: string, n: number) => Buffer.from(s.padEnd(n).slice(0, n), 'ascii')

/**
 * SCSI block-command emulation of one logical unit over a BlockDevice (DESIGN §5), transport-free:
 * `execute(cdb, dataOut, initiator)` → status, data-in, sense. Each CDB is validated once here;
 * storage errors are mapped to sense data by `senseFor`.
 */
export class LogicalUnit {
  private readonly gate = new Gate()
  private readonly tasks = new Set<Task>()
  private reservedBy: string | null = null
  /** I_T nexuses logged in to this LU (count of sessions) and their pending unit attentions, oldest first. */
  private readonly nexuses = new Map<string, { sessions: number; attentions: C.AscName[] }>()
  private readonly pr = new PersistentReservations((nexus, asc) => this.attention(nexus, asc))
  private readonly naa: Buffer
  private readonly copies: CopyManager
  private readonly vendor: string
  private readonly product: string
  private readonly revision: string
  private readonly ownCompareAndWrite: boolean

  constructor(
    readonly dev: BlockDevice,
    readonly opts: LogicalUnitOptions,
  ) {
    // NAA 6 (IEEE registered extended), locally administered OUI 0x02:00:00 plus a hash of the serial.
    const h = createHash('sha256').update(opts.serial).digest()
    this.naa = Buffer.alloc(16)
    this.naa[0] = 0x60 | 0x02
    h.copy(this.naa, 3, 0, 13)
    this.vendor = opts.vendor ?? 'TANDEM'
    this.product = opts.product ?? 'VIRTUAL-DISK'
    this.revision = opts.revision ?? '0001'
    this.copies = new CopyManager(dev, () => this.blocks, this.naaDesignator())
    this.ownCompareAndWrite = typeof (dev as Partial<ComparesAndWrites>).compareAndWrite === 'function'
  }

  /** The NAA designation descriptor of VPD page 0x83 (binary, LU, NAA, 16 bytes). */
  private naaDesignator(): Buffer {
    return Buffer.concat([Buffer.from([0x01, 0x03, 0x00, 16]), this.naa])
  }

  /** A session of this I_T nexus logged in (unit attentions are kept per nexus). */
  nexusJoined(initiator: string): void {
    const n = this.nexuses.get(initiator)
    if (n) n.sessions++
    else this.nexuses.set(initiator, { sessions: 1, attentions: [] })
  }

  /** The I_T nexus went away (logout, connection loss): its RESERVE(6) reservation with it. */
  nexusLost(initiator: string): void {
    if (this.reservedBy === initiator) this.reservedBy = null
    const n = this.nexuses.get(initiator)
    if (n && --n.sessions <= 0) this.nexuses.delete(initiator)
  }

  /**
   * LUN RESET / target reset: RESERVE(6) reservations are cleared (SPC-2 5.5.1) and every I_T
   * nexus, the one that asked included, gets a unit attention (SAM-5 6.3.3 / 6.3.4).
   */
  reset(kind: 'lun' | 'target' = 'lun'): void {
    this.reservedBy = null
    const asc = kind === 'lun' ? 'BUS_DEVICE_RESET_FUNCTION_OCCURRED' : 'POWER_ON_RESET_OR_BUS_DEVICE_RESET'
    for (const n of this.nexuses.keys()) this.attention(n, asc)
  }

  /** Establish a unit attention for one nexus (a duplicate of a pending one is not queued twice). */
  attention(initiator: string, asc: C.AscName): void {
    const n = this.nexuses.get(initiator)
    if (n && !n.attentions.includes(asc)) n.attentions.push(asc)
  }


  get blocks(): number {
    return Math.floor(this.dev.size / BLOCK)
  }

  /**
   * `expected`: the bytes of data-out the transport carries (iSCSI's ExpectedDataTransferLength).
   * A WRITE whose transfer length is longer (an overflow, RFC 7143 §11.4.5) writes only the whole
   * blocks within it; the transport reports the residual.
   */
  async execute(cdb: Buffer, dataOut: Buffer | null, initiator: string, expected?: number): Promise<ScsiResult> {
    const task: Task = { nexus: initiator, aborted: false, running: null }
    this.tasks.add(task)
    try {
      if (expected !== undefined) {
        const need = dataOutLength(cdb)
        if (need?.shrink && expected < need.bytes) cdb = need.shrink(Math.floor(expected / BLOCK))
      }
      if (cdb.length < 6) throw invalidOpcode()
      // A pending unit attention ends any command but INQUIRY, REPORT LUNS and REQUEST SENSE
      // (which reports it as its sense data), and is then cleared (SAM-5 5.14, SPC-4 5.9).
      const ua = this.nexuses.get(initiator)?.attentions
      if (ua?.length && cdb[0] !== C.INQUIRY && cdb[0] !== C.REPORT_LUNS) {
        const s = senseData(new SenseError(C.UNIT_ATTENTION, ua.shift()!))
        if (cdb[0] !== C.REQUEST_SENSE) return { status: C.CHECK_CONDITION, sense: s }
        return { status: C.GOOD, dataIn: s.subarray(0, Math.min(s.length, cdb[4])) }
      }
      if (this.reservedBy !== null && this.reservedBy !== initiator && !RESERVATION_EXEMPT.has(cdb[0])) {
        return { status: C.RESERVATION_CONFLICT }
      }
      if (this.pr.conflicts(initiator, accessOf(cdb))) return { status: C.RESERVATION_CONFLICT }
      if ((cdb[0] === C.RESERVE_6 || cdb[0] === C.RELEASE_6) && this.pr.active) return { status: C.RESERVATION_CONFLICT } // CRH
      // a device's own compare-and-write is atomic against every other user without the gate
      const exclusive = (cdb[0] === C.COMPARE_AND_WRITE && !this.ownCompareAndWrite) || cdb[0] === C.ORWRITE_16 || cdb[0] === C.WRITE_ATOMIC_16
      return await this.gate.run(exclusive, () => {
        if (task.aborted) return Promise.resolve({ status: C.TASK_ABORTED })
        return (task.running = this.dispatch(cdb, dataOut ?? Buffer.alloc(0), task))
      })
    } catch (e) {
      const s = e instanceof SenseError ? e : isStorageError(e) ? senseFor(e.code) : new SenseError(C.HARDWARE_ERROR, 'INTERNAL_TARGET_FAILURE')
      return { status: C.CHECK_CONDITION, sense: senseData(s) }
    } finally {
      this.tasks.delete(task)
    }
  }

  /**
   * Aborts the task sets of `nexuses`, `self` (the PREEMPT AND ABORT) excepted. A task that does
   * not hold the gate yet answers TASK ABORTED (TAS=1) and has no effect; a running one cannot be
   * recalled (its write may be issued), so this waits for its end. Either way, once this resolves
   * no command of those nexuses admitted before it changes the medium any more.
   */
  private async abortTasks(nexuses: ReadonlySet<string>, self: Task): Promise<void> {
    const running: Promise<ScsiResult>[] = []
    for (const t of this.tasks) {
      if (t === self || !nexuses.has(t.nexus)) continue
      if (t.running) running.push(t.running)
      else t.aborted = true
    }
    await Promise.allSettled(running)
  }

  private range(lba: number, count: number): void {
    if (!Number.isSafeInteger(lba) || lba + count > this.blocks) throw lbaOutOfRange()
  }

  private transfer(count: number, byte: number): void {
    if (count > MAX_TRANSFER_BLOCKS) throw invalidField(byte)
  }

  private static need(data: Buffer, bytes: number): void {
    if (data.length < bytes) throw parameterLength()
  }

  private async dispatch(cdb: Buffer, out: Buffer, task: Task): Promise<ScsiResult> {
    const initiator = task.nexus
    const op = cdb[0]
    const len = CDB_LENGTH[op]
    if (len === undefined) throw invalidOpcode()
    if (cdb.length < len) throw invalidField(0)
    switch (op) {
      case C.TEST_UNIT_READY:
      case C.START_STOP_UNIT:
        return { status: C.GOOD }
      case C.REQUEST_SENSE: {
        const d = senseData(new SenseError(C.NO_SENSE, 'NO_ADDITIONAL_SENSE'))
        return { status: C.GOOD, dataIn: d.subarray(0, Math.min(d.length, cdb[4])) }
      }
      case C.INQUIRY:
        return { status: C.GOOD, dataIn: this.inquiry(cdb) }
      case C.READ_CAPACITY_10: {
        if (cdb.readUInt32BE(2) !== 0 && !(cdb[8] & 1)) throw invalidField(2)
        const d = Buffer.alloc(8)
        d.writeUInt32BE(Math.min(this.blocks - 1, 0xffffffff), 0)
        d.writeUInt32BE(BLOCK, 4)
        return { status: C.GOOD, dataIn: d }
      }
      case C.SERVICE_ACTION_IN_16:
        return this.serviceActionIn(cdb)
      case C.READ_6:
      case C.READ_10:
      case C.READ_12:
      case C.READ_16: {
        const { lba, count, fua } = rw(cdb)
        if (op !== C.READ_6 && cdb[1] & 0xe0) throw invalidField(1, 7) // RDPROTECT: no protection information
        this.transfer(count, op === C.READ_6 ? 4 : op === C.READ_10 ? 7 : op === C.READ_12 ? 6 : 10)
        this.range(lba, count)
        void fua
        return { status: C.GOOD, dataIn: count ? await this.dev.read(lba * BLOCK, count * BLOCK) : Buffer.alloc(0) }
      }
      case C.WRITE_6:
      case C.WRITE_10:
      case C.WRITE_12:
      case C.WRITE_16:
      case C.WRITE_AND_VERIFY_10:
      case C.WRITE_AND_VERIFY_12:
      case C.WRITE_AND_VERIFY_16: {
        const { lba, count, fua } = rw(cdb)
        if (op !== C.WRITE_6 && cdb[1] & 0xe0) throw invalidField(1, 7)
        this.transfer(count, op === C.WRITE_6 ? 4 : 7)
        this.range(lba, count)
        LogicalUnit.need(out, count * BLOCK)
        if (count) await this.dev.write(lba * BLOCK, out.subarray(0, count * BLOCK), { fua: fua || op === C.WRITE_AND_VERIFY_10 || op === C.WRITE_AND_VERIFY_12 || op === C.WRITE_AND_VERIFY_16 })
        return { status: C.GOOD }
      }
      case C.WRITE_ATOMIC_16: {
        const { lba, count, fua } = rw(cdb)
        if (cdb[1] & 0xe0) throw invalidField(1, 7)
        if (count > MAX_ATOMIC_BLOCKS) throw invalidField(12)
        this.range(lba, count)
        if (count % ATOMIC_ALIGNMENT) throw invalidField(12)
        if (lba % ATOMIC_ALIGNMENT) throw invalidField(2)
        LogicalUnit.need(out, count * BLOCK)
        if (count) await this.dev.write(lba * BLOCK, out.subarray(0, count * BLOCK), { fua })
        return { status: C.GOOD }
      }
      case C.VERIFY_10:
      case C.VERIFY_12:
      case C.VERIFY_16: {
        const { lba, count } = rw(cdb)
        if (cdb[1] & 0xe0) throw invalidField(1, 7)
        const bytchk = (cdb[1] >> 1) & 3
        if (bytchk === 2) throw invalidField(1, 2)
        this.range(lba, count)
        this.transfer(count, 7)
        if (bytchk === 0 || count === 0) return { status: C.GOOD }
        const want = bytchk === 1 ? out : Buffer.concat(Array.from({ length: count }, () => out.subarray(0, BLOCK)))
        LogicalUnit.need(want, count * BLOCK)
        const have = await this.dev.read(lba * BLOCK, count * BLOCK)
        const at = firstDifference(have, want.subarray(0, count * BLOCK))
        if (at >= 0) throw new SenseError(C.MISCOMPARE, 'MISCOMPARE_DURING_VERIFY_OPERATION', at)
        return { status: C.GOOD }
      }
      case C.PRE_FETCH_10:
      case C.PRE_FETCH_16: {
        const lba = op === C.PRE_FETCH_10 ? cdb.readUInt32BE(2) : Number(cdb.readBigUInt64BE(2))
        const count = op === C.PRE_FETCH_10 ? cdb.readUInt16BE(7) : cdb.readUInt32BE(10)
        this.range(lba, count)
        return { status: C.CONDITION_MET }
      }
      case C.SYNCHRONIZE_CACHE_10:
      case C.SYNCHRONIZE_CACHE_16: {
        const lba = op === C.SYNCHRONIZE_CACHE_10 ? cdb.readUInt32BE(2) : Number(cdb.readBigUInt64BE(2))
        const count = op === C.SYNCHRONIZE_CACHE_10 ? cdb.readUInt16BE(7) : cdb.readUInt32BE(10)
        this.range(lba, count)
        await this.dev.flush()
        return { status: C.GOOD }
      }
      case C.ORWRITE_16: {
        const { lba, count } = rw(cdb)
        if (cdb[1] & 0xe0) throw invalidField(1, 7)
        this.range(lba, count)
        this.transfer(count, 10)
        LogicalUnit.need(out, count * BLOCK)
        if (count === 0) return { status: C.GOOD }
        const cur = await this.dev.read(lba * BLOCK, count * BLOCK)
        for (let i = 0; i < cur.length; i++) cur[i] |= out[i]
        await this.dev.write(lba * BLOCK, cur)
        return { status: C.GOOD }
      }
      case C.COMPARE_AND_WRITE: {
        const lba = Number(cdb.readBigUInt64BE(2))
        const count = cdb[13]
        if (cdb[1] & 0xe0) throw invalidField(1, 7)
        if (count > MAX_CAW_BLOCKS) throw invalidField(13)
        this.range(lba, count)
        if (count === 0) {
          if (out.length > 0) throw invalidField(13) // zero blocks but data sent: the count is wrong
          return { status: C.GOOD }
        }
        const n = count * BLOCK
        if (out.length !== 2 * n) throw parameterLength()
        // Atomic: the device's own compare-and-write is, against all its users; otherwise the
        // gate is exclusive for this command against every other on the LU.
        if (this.ownCompareAndWrite) {
          if (await (this.dev as BlockDevice & ComparesAndWrites).compareAndWrite(lba * BLOCK, out.subarray(0, n), out.subarray(n, 2 * n))) return { status: C.GOOD }
          // where it differed, read after the device's atomic verdict (another user may have written since)
          const at = firstDifference(await this.dev.read(lba * BLOCK, n), out.subarray(0, n))
          throw new SenseError(C.MISCOMPARE, 'MISCOMPARE_DURING_VERIFY_OPERATION', Math.max(at, 0))
        }
        const have = await this.dev.read(lba * BLOCK, n)
        const at = firstDifference(have, out.subarray(0, n))
        if (at >= 0) throw new SenseError(C.MISCOMPARE, 'MISCOMPARE_DURING_VERIFY_OPERATION', at)
        await this.dev.write(lba * BLOCK, out.subarray(n, 2 * n), { fua: (cdb[1] & 0x08) !== 0 })
        return { status: C.GOOD }
      }
      case C.WRITE_SAME_10:
      case C.WRITE_SAME_16: {
        const lba = op === C.WRITE_SAME_10 ? cdb.readUInt32BE(2) : Number(cdb.readBigUInt64BE(2))
        const given = op === C.WRITE_SAME_10 ? cdb.readUInt16BE(7) : cdb.readUInt32BE(10)
        if (!Number.isSafeInteger(lba) || lba >= this.blocks) throw lbaOutOfRange()
        // zero blocks (WSNZ=0): from the LBA to the end of the medium
        const count = given === 0 ? this.blocks - lba : given
        const unmap = (cdb[1] & 0x08) !== 0
        const ndob = op === C.WRITE_SAME_16 && (cdb[1] & 0x01) !== 0
        if (cdb[1] & 0xe0) throw invalidField(1, 7)
        if (cdb[1] & 0x10) throw invalidField(1, 4) // ANCHOR: no anchored state
        if (count > MAX_WRITE_SAME_BLOCKS) throw invalidField(op === C.WRITE_SAME_10 ? 7 : 10)
        this.range(lba, count)
        const block = ndob ? Buffer.alloc(BLOCK) : out.subarray(0, BLOCK)
        if (!ndob) LogicalUnit.need(out, BLOCK)
        // With UNMAP the blocks are deallocated whatever the data (SBC-3 5.44 lets the device
        // choose); deallocated blocks read zero (LBPRZ=1).
        if (unmap || block.every((b) => b === 0)) {
          await this.dev.writeZeroes(lba * BLOCK, count * BLOCK, { mayUnmap: true })
          return { status: C.GOOD }
        }
        const chunkBlocks = Math.min(count, 2048)
        const chunk = Buffer.concat(Array.from({ length: chunkBlocks }, () => block))
        for (let done = 0; done < count; done += chunkBlocks) {
          const k = Math.min(chunkBlocks, count - done)
          await this.dev.write((lba + done) * BLOCK, chunk.subarray(0, k * BLOCK))
        }
        return { status: C.GOOD }
      }
      case C.UNMAP:
        return this.unmap(cdb, out)
      case C.MODE_SENSE_6:
      case C.MODE_SENSE_10:
        return { status: C.GOOD, dataIn: this.modeSense(cdb) }
      case C.MODE_SELECT_6:
      case C.MODE_SELECT_10: {
        const plen = op === C.MODE_SELECT_6 ? cdb[4] : cdb.readUInt16BE(7)
        if (cdb[1] & 0x01) throw invalidField(1, 0) // SP: saving not supported
        LogicalUnit.need(out, plen)
        return { status: C.GOOD } // nothing is changeable; parameters that match are accepted
      }
      case C.REPORT_LUNS: {
        if (cdb[2] > 2) throw invalidField(2)
        const alloc = cdb.readUInt32BE(6)
        if (alloc < 16) throw invalidField(6)
        const d = Buffer.alloc(16)
        d.writeUInt32BE(8, 0)
        return { status: C.GOOD, dataIn: d.subarray(0, Math.min(16, alloc)) }
      }
      case C.MAINTENANCE_IN:
        if ((cdb[1] & 0x1f) !== C.MI_REPORT_SUPPORTED_OPERATION_CODES) throw invalidField(1)
        return { status: C.GOOD, dataIn: this.supportedOpcodes(cdb) }
      case C.READ_DEFECT_DATA_10:
      case C.READ_DEFECT_DATA_12: {
        // no defects: a header with the format asked for and an empty list
        const ten = op === C.READ_DEFECT_DATA_10
        const alloc = ten ? cdb.readUInt16BE(7) : cdb.readUInt32BE(6)
        const fmt = (ten ? cdb[2] : cdb[1]) & 0x1f
        const d = Buffer.alloc(ten ? 4 : 8)
        d[1] = fmt
        return { status: C.GOOD, dataIn: d.subarray(0, Math.min(d.length, alloc)) }
      }
      case C.PERSISTENT_RESERVE_IN:
        return { status: C.GOOD, dataIn: this.pr.in(cdb) }
      case C.EXTENDED_COPY:
        await this.copies.extendedCopy(cdb, out, initiator)
        return { status: C.GOOD }
      case C.RECEIVE_COPY_RESULTS:
        return { status: C.GOOD, dataIn: this.copies.receiveCopyResults(cdb, initiator) }
      case C.PERSISTENT_RESERVE_OUT: {
        let preempted: string[]
        try {
          preempted = this.pr.out(cdb, out, initiator)
        } catch (e) {
          if (e instanceof Conflict) return { status: C.RESERVATION_CONFLICT }
          throw e
        }
        if ((cdb[1] & 0x1f) === C.PRO_PREEMPT_AND_ABORT) await this.abortTasks(new Set(preempted), task)
        return { status: C.GOOD }
      }
      case C.RESERVE_6:
        if (this.reservedBy !== null && this.reservedBy !== initiator) return { status: C.RESERVATION_CONFLICT }
        this.reservedBy = initiator
        return { status: C.GOOD }
      case C.RELEASE_6:
        if (this.reservedBy === initiator) this.reservedBy = null
        return { status: C.GOOD }
      default:
        throw invalidOpcode()
    }
  }

  private inquiry(cdb: Buffer): Buffer {
    const evpd = cdb[1] & 1
    const page = cdb[2]
    const alloc = cdb.readUInt16BE(3)
    if (cdb[1] & 0xfe) throw invalidField(1)
    let d: Buffer
    if (!evpd) {
      if (page !== 0) throw invalidField(2)
      d = Buffer.alloc(96)
      d[0] = 0x00 // direct-access block device
      d[2] = 0x06 // SPC-4
      d[3] = 0x12 // HISUP, response data format 2
      d[4] = d.length - 5
      d[5] = 0x08 // 3PC: third-party copy (EXTENDED COPY)
      d[7] = 0x02 // CMDQUE
      pad(this.vendor, 8).copy(d, 8)
      pad(this.product, 16).copy(d, 16)
      pad(this.revision, 4).copy(d, 32)
      // version descriptors (SPC-4 table 142): SAM-5, iSCSI, SPC-4, SBC-3
      ;[0x00a0, 0x0960, 0x0460, 0x04c0].forEach((v, i) => d.writeUInt16BE(v, 58 + i * 2))
    } else {
      d = this.vpd(page)
    }
    return d.subarray(0, Math.min(d.length, alloc))
  }

  private vpd(page: number): Buffer {
    const wrap = (body: Buffer) => {
      const h = Buffer.alloc(4)
      h[1] = page
      h.writeUInt16BE(body.length, 2)
      return Buffer.concat([h, body])
    }
    switch (page) {
      case 0x00:
        return wrap(Buffer.from(VPD_PAGES))
      case 0x80:
        return wrap(Buffer.from(this.opts.serial, 'ascii'))
      case 0x8f:
        return wrap(this.copies.thirdPartyCopyVpd())
      case 0x83: {
        const naa = this.naaDesignator()
        const t10id = Buffer.concat([pad(this.vendor, 8), Buffer.from(this.opts.serial, 'ascii')])
        const t10 = Buffer.concat([Buffer.from([0x02, 0x01, 0x00, t10id.length]), t10id]) // ASCII, LU, T10 vendor id
        return wrap(Buffer.concat([naa, t10]))
      }
      case 0xb0: {
        const b = Buffer.alloc(0x3c)
        b[0] = 0x00 // WSNZ=0: WRITE SAME of zero blocks writes to the end of the medium
        b[1] = MAX_CAW_BLOCKS
        b.writeUInt16BE(128, 2) // optimal transfer granularity: one 64 KiB grain
        b.writeUInt32BE(MAX_TRANSFER_BLOCKS, 4)
        b.writeUInt32BE(2048, 8) // optimal transfer: 1 MiB
        b.writeUInt32BE(MAX_TRANSFER_BLOCKS, 16) // maximum unmap LBA count
        b.writeUInt32BE(MAX_UNMAP_DESCRIPTORS, 20)
        b.writeUInt32BE(128, 24) // optimal unmap granularity: a grain
        b.writeBigUInt64BE(BigInt(MAX_WRITE_SAME_BLOCKS), 32)
        b.writeUInt32BE(MAX_ATOMIC_BLOCKS, 40) // maximum atomic transfer length
        b.writeUInt32BE(ATOMIC_ALIGNMENT, 44) // atomic alignment
        b.writeUInt32BE(ATOMIC_ALIGNMENT, 48) // atomic transfer length granularity
        return wrap(b)
      }
      case 0xb1: {
        const b = Buffer.alloc(0x3c)
        b.writeUInt16BE(1, 0) // non-rotating medium
        return wrap(b)
      }
      case 0xb2: {
        const b = Buffer.alloc(4)
        b[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
        b[2] = 0x02 // thin provisioned
        return wrap(b)
      }
      default:
        throw invalidField(2)
    }
  }

  private async serviceActionIn(cdb: Buffer): Promise<ScsiResult> {
    const sa = cdb[1] & 0x1f
    const alloc = cdb.readUInt32BE(10)
    if (sa === C.SAI_READ_CAPACITY_16) {
      const d = Buffer.alloc(32)
      d.writeBigUInt64BE(BigInt(this.blocks - 1), 0)
      d.writeUInt32BE(BLOCK, 8)
      d[14] = 0x80 | 0x40 // LBPME, LBPRZ
      return { status: C.GOOD, dataIn: d.subarray(0, Math.min(32, alloc)) }
    }
    if (sa === C.SAI_GET_LBA_STATUS) return this.getLbaStatus(cdb)
    throw invalidField(1)
  }

  private modeSense(cdb: Buffer): Buffer {
    const six = cdb[0] === C.MODE_SENSE_6
    const dbd = (cdb[1] & 0x08) !== 0
    const pc = cdb[2] >> 6
    const page = cdb[2] & 0x3f
    const sub = cdb[3]
    const alloc = six ? cdb[4] : cdb.readUInt16BE(7)
    if (pc === 3) throw new SenseError(C.ILLEGAL_REQUEST, 'SAVING_PARAMETERS_NOT_SUPPORTED')
    if (sub !== 0 && sub !== 0xff) throw invalidField(3)
    const changeable = pc === 1
    const pages: Buffer[] = []
    const caching = () => {
      const p = Buffer.alloc(20)
      p[0] = 0x08
      p[1] = 18
      if (!changeable) p[2] = 0x04 // WCE: a write-back cache (flush is SYNCHRONIZE CACHE)
      return p
    }
    const control = () => {
      const p = Buffer.alloc(12)
      p[0] = 0x0a
      p[1] = 10
      if (!changeable) p[2] = 0x02 // GLTSD
      if (!changeable) p[5] = 0x40 // TAS: a command aborted by another nexus (PREEMPT AND ABORT) answers TASK ABORTED
      return p
    }
    if (page === 0x08 || page === 0x3f) pages.push(caching())
    if (page === 0x0a || page === 0x3f) pages.push(control())
    if (pages.length === 0) throw invalidField(2)
    const bd = Buffer.alloc(dbd ? 0 : 8)
    if (!dbd) {
      bd.writeUInt32BE(Math.min(this.blocks, 0xffffffff), 0)
      bd.writeUIntBE(BLOCK, 5, 3)
    }
    const body = Buffer.concat([bd, ...pages])
    const hdr = Buffer.alloc(six ? 4 : 8)
    const wp = this.dev.readOnly ? 0x80 : 0
    if (six) {
      hdr[0] = hdr.length - 1 + body.length
      hdr[2] = wp | 0x10 // DPOFUA
      hdr[3] = bd.length
    } else {
      hdr.writeUInt16BE(hdr.length - 2 + body.length, 0)
      hdr[3] = wp | 0x10
      hdr.writeUInt16BE(bd.length, 6)
    }
    const d = Buffer.concat([hdr, body])
    return d.subarray(0, Math.min(d.length, alloc))
  }

  private supportedOpcodes(cdb: Buffer): Buffer {
    const rctd = (cdb[2] & 0x80) !== 0
    const options = cdb[2] & 0x07
    const reqOp = cdb[3]
    const reqSa = cdb.readUInt16BE(4)
    const alloc = cdb.readUInt32BE(6)
    const tdesc = () => {
      const b = Buffer.alloc(12)
      b.writeUInt16BE(10, 0)
      return b
    }
    let d: Buffer
    if (options === 0) {
      const list = SUPPORTED.map(([op, sa]) => {
        const b = Buffer.alloc(8)
        b[0] = op
        if (sa !== undefined) {
          b.writeUInt16BE(sa, 2)
          b[5] = 0x01 // SERVACTV
        }
        if (rctd) b[5] |= 0x02 // CTDP
        b.writeUInt16BE(CDB_LENGTH[op], 6)
        return rctd ? Buffer.concat([b, tdesc()]) : b
      })
      const body = Buffer.concat(list)
      const h = Buffer.alloc(4)
      h.writeUInt32BE(body.length, 0)
      d = Buffer.concat([h, body])
    } else if (options === 1 || options === 2) {
      const hasSa = SUPPORTED.some(([op, sa]) => op === reqOp && sa !== undefined)
      if ((options === 1 && hasSa) || (options === 2 && !hasSa && CDB_LENGTH[reqOp] !== undefined)) throw invalidField(2)
      const ok = SUPPORTED.some(([op, sa]) => op === reqOp && (options === 1 ? sa === undefined : sa === reqSa))
      const len = CDB_LENGTH[reqOp] ?? 0
      const h = Buffer.alloc(4)
      h[1] = (ok ? 0x03 : 0x01) | (rctd ? 0x80 : 0) // supported as in the standard / not supported
      h.writeUInt16BE(ok ? len : 0, 2)
      const usage = Buffer.alloc(ok ? len : 0)
      if (ok) usage.fill(0xff)
      if (ok) usage[0] = reqOp
      d = Buffer.concat([h, usage, ...(rctd && ok ? [tdesc()] : [])])
    } else throw invalidField(2)
    return d.subarray(0, Math.min(d.length, alloc))
  }

  private async unmap(cdb: Buffer, out: Buffer): Promise<ScsiResult> {
    if (cdb[1] & 0x01) throw invalidField(1, 0) // ANCHOR
    const plen = cdb.readUInt16BE(7)
    if (plen === 0) return { status: C.GOOD }
    if (plen < 8) throw parameterLength()
    LogicalUnit.need(out, plen)
    const dataLen = out.readUInt16BE(0)
    const descLen = out.readUInt16BE(2)
    if (dataLen !== descLen + 6 && dataLen < descLen + 6) throw parameterLength()
    if (descLen % 16 !== 0 || 8 + descLen > plen) throw parameterLength()
    const n = descLen / 16
    if (n > MAX_UNMAP_DESCRIPTORS) throw invalidParameter(2)
    const ranges: [number, number][] = []
    for (let i = 0; i < n; i++) {
      const lba = Number(out.readBigUInt64BE(8 + i * 16))
      const count = out.readUInt32BE(16 + i * 16)
      if (count > MAX_TRANSFER_BLOCKS) throw invalidParameter(16 + i * 16)
      this.range(lba, count)
      ranges.push([lba, count])
    }
    // LBPRZ=1: an unmapped block reads zero, so unmap is a zeroing that may deallocate.
    for (const [lba, count] of ranges) if (count) await this.dev.writeZeroes(lba * BLOCK, count * BLOCK, { mayUnmap: true })
    return { status: C.GOOD }
  }

  /** GET LBA STATUS: mapped where the chain stores data, deallocated where it reads as unwritten zeros. */
  async getLbaStatus(cdb: Buffer): Promise<ScsiResult> {
    const lba = Number(cdb.readBigUInt64BE(2))
    const alloc = cdb.readUInt32BE(10)
    if (!Number.isSafeInteger(lba) || lba >= this.blocks) throw lbaOutOfRange()
    const span = Math.min(this.blocks - lba, 1 << 21)
    const ext = await this.dev.blockStatus(lba * BLOCK, span * BLOCK)
    const descs: Buffer[] = []
    for (const e of ext) {
      const d = Buffer.alloc(16)
      const start = Math.floor(e.offset / BLOCK)
      const end = Math.ceil((e.offset + e.length) / BLOCK)
      const last = descs.length ? descs[descs.length - 1] : null
      const state = e.data ? 0 : 1
      if (last && last[12] === state) {
        last.writeUInt32BE(last.readUInt32BE(8) + (end - start), 8)
        continue
      }
      d.writeBigUInt64BE(BigInt(start), 0)
      d.writeUInt32BE(end - start, 8)
      d[12] = state
      descs.push(d)
    }
    const body = Buffer.concat(descs)
    const h = Buffer.alloc(8)
    h.writeUInt32BE(4 + body.length, 0)
    const all = Buffer.concat([h, body])
    return { status: C.GOOD, dataIn: all.subarray(0, Math.min(all.length, alloc)) }
  }
}

const WRITE_FAMILY = new Set([C.WRITE_6, C.WRITE_10, C.WRITE_12, C.WRITE_16, C.WRITE_AND_VERIFY_10, C.WRITE_AND_VERIFY_12, C.WRITE_AND_VERIFY_16, C.ORWRITE_16, C.WRITE_ATOMIC_16])

/**
 * The data-out a command carries, in bytes, as its CDB says (the SCSI transfer length), for the
 * transport to compare with its own expected length; and, for the WRITE family, a CDB that
 * transfers only `blocks` (`execute` with an `expected` length shorter than the transfer).
 */
export function dataOutLength(cdb: Buffer): { bytes: number; shrink?: (blocks: number) => Buffer } | null {
  const len = CDB_LENGTH[cdb[0]]
  if (len === undefined || cdb.length < len) return null
  if (WRITE_FAMILY.has(cdb[0])) {
    const { count } = rw(cdb)
    const shrink = (blocks: number) => {
      const c = Buffer.from(cdb)
      if (c[0] === C.WRITE_6) c[4] = blocks
      else if (len === 10) c.writeUInt16BE(blocks, 7)
      else if (len === 12) c.writeUInt32BE(blocks, 6)
      else c.writeUInt32BE(blocks, 10)
      return c
    }
    return { bytes: count * BLOCK, shrink }
  }
  switch (cdb[0]) {
    case C.COMPARE_AND_WRITE:
      return { bytes: 2 * cdb[13] * BLOCK }
    case C.WRITE_SAME_10:
      return { bytes: BLOCK }
    case C.WRITE_SAME_16:
      return { bytes: cdb[1] & 0x01 ? 0 : BLOCK }
    case C.UNMAP:
      return { bytes: cdb.readUInt16BE(7) }
    case C.MODE_SELECT_6:
      return { bytes: cdb[4] }
    case C.MODE_SELECT_10:
      return { bytes: cdb.readUInt16BE(7) }
    case C.VERIFY_10:
    case C.VERIFY_12:
    case C.VERIFY_16: {
      const bytchk = (cdb[1] >> 1) & 3
      return { bytes: bytchk === 1 ? rw(cdb).count * BLOCK : bytchk === 3 ? BLOCK : 0 }
    }
    default:
      return { bytes: 0 }
  }
}

/**
 * Bytes the LU reads from the medium and holds at once to execute `cdb`, beyond its data-out: a
 * READ's data-in, the blocks a VERIFY compares (with BYTCHK 3 also the block pattern repeated to
 * their length), the blocks ORWRITE merges into. 0 for a transfer over the maximum (refused before
 * any read) and for every other command (their answers are small). A transport that bounds its
 * memory reserves this much before it runs the command.
 */
export function mediumReadLength(cdb: Buffer): number {
  const len = CDB_LENGTH[cdb[0]]
  if (len === undefined || cdb.length < len) return 0
  let copies: number
  switch (cdb[0]) {
    case C.READ_6:
    case C.READ_10:
    case C.READ_12:
    case C.READ_16:
    case C.ORWRITE_16:
      copies = 1
      break
    case C.VERIFY_10:
    case C.VERIFY_12:
    case C.VERIFY_16: {
      const bytchk = (cdb[1] >> 1) & 3
      copies = bytchk === 1 ? 1 : bytchk === 3 ? 2 : 0
      break
    }
    default:
      return 0
  }
  const { count } = rw(cdb)
  return count <= MAX_TRANSFER_BLOCKS ? copies * count * BLOCK : 0
}

function rw(cdb: Buffer): { lba: number; count: number; fua: boolean } {
  switch (cdb[0]) {
    case C.READ_6:
    case C.WRITE_6: {
      const count = cdb[4] === 0 ? 256 : cdb[4]
      return { lba: ((cdb[1] & 0x1f) << 16) | cdb.readUInt16BE(2), count, fua: false }
    }
    case C.READ_10:
    case C.WRITE_10:
    case C.WRITE_AND_VERIFY_10:
    case C.VERIFY_10:
      return { lba: cdb.readUInt32BE(2), count: cdb.readUInt16BE(7), fua: (cdb[1] & 0x08) !== 0 }
    case C.READ_12:
    case C.WRITE_12:
    case C.WRITE_AND_VERIFY_12:
    case C.VERIFY_12:
      return { lba: cdb.readUInt32BE(2), count: cdb.readUInt32BE(6), fua: (cdb[1] & 0x08) !== 0 }
    default: {
      const big = cdb.readBigUInt64BE(2)
      const lba = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big)
      return { lba, count: cdb.readUInt32BE(10), fua: (cdb[1] & 0x08) !== 0 }
    }
  }
}

function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i
  return a.length
}

/** CDB length by opcode: the set of commands this LU understands. */
const CDB_LENGTH: Record<number, number> = {
  [C.TEST_UNIT_READY]: 6,
  [C.REQUEST_SENSE]: 6,
  [C.READ_6]: 6,
  [C.WRITE_6]: 6,
  [C.INQUIRY]: 6,
  [C.MODE_SELECT_6]: 6,
  [C.RESERVE_6]: 6,
  [C.RELEASE_6]: 6,
  [C.MODE_SENSE_6]: 6,
  [C.START_STOP_UNIT]: 6,
  [C.READ_CAPACITY_10]: 10,
  [C.READ_DEFECT_DATA_10]: 10,
  [C.PERSISTENT_RESERVE_IN]: 10,
  [C.PERSISTENT_RESERVE_OUT]: 10,
  [C.READ_DEFECT_DATA_12]: 12,
  [C.READ_10]: 10,
  [C.WRITE_10]: 10,
  [C.WRITE_AND_VERIFY_10]: 10,
  [C.VERIFY_10]: 10,
  [C.PRE_FETCH_10]: 10,
  [C.SYNCHRONIZE_CACHE_10]: 10,
  [C.WRITE_SAME_10]: 10,
  [C.UNMAP]: 10,
  [C.MODE_SELECT_10]: 10,
  [C.MODE_SENSE_10]: 10,
  [C.READ_16]: 16,
  [C.COMPARE_AND_WRITE]: 16,
  [C.WRITE_16]: 16,
  [C.ORWRITE_16]: 16,
  [C.WRITE_AND_VERIFY_16]: 16,
  [C.VERIFY_16]: 16,
  [C.PRE_FETCH_16]: 16,
  [C.SYNCHRONIZE_CACHE_16]: 16,
  [C.WRITE_SAME_16]: 16,
  [C.WRITE_ATOMIC_16]: 16,
  [C.SERVICE_ACTION_IN_16]: 16,
  [C.EXTENDED_COPY]: 16,
  [C.RECEIVE_COPY_RESULTS]: 16,
  [C.REPORT_LUNS]: 12,
  [C.MAINTENANCE_IN]: 12,
  [C.READ_12]: 12,
  [C.WRITE_12]: 12,
  [C.WRITE_AND_VERIFY_12]: 12,
  [C.VERIFY_12]: 12,
}

const SUPPORTED: [number, number?][] = [
  ...Object.keys(CDB_LENGTH)
    .map(Number)
    .filter((op) => op !== C.SERVICE_ACTION_IN_16 && op !== C.MAINTENANCE_IN && op !== C.EXTENDED_COPY && op !== C.RECEIVE_COPY_RESULTS)
    .map((op) => [op] as [number]),
  [C.SERVICE_ACTION_IN_16, C.SAI_READ_CAPACITY_16],
  [C.SERVICE_ACTION_IN_16, C.SAI_GET_LBA_STATUS],
  [C.MAINTENANCE_IN, C.MI_REPORT_SUPPORTED_OPERATION_CODES],
  [C.EXTENDED_COPY, 0x00],
  [C.RECEIVE_COPY_RESULTS, 0x00],
  [C.RECEIVE_COPY_RESULTS, 0x03],
]

const VPD_PAGES = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2]

const READS = new Set([C.READ_6, C.READ_10, C.READ_12, C.READ_16, C.VERIFY_10, C.VERIFY_12, C.VERIFY_16, C.PRE_FETCH_10, C.PRE_FETCH_16, C.READ_DEFECT_DATA_10, C.READ_DEFECT_DATA_12])
const WRITES = new Set([C.EXTENDED_COPY, C.WRITE_ATOMIC_16, C.WRITE_6, C.WRITE_10, C.WRITE_12, C.WRITE_16, C.WRITE_AND_VERIFY_10, C.WRITE_AND_VERIFY_12, C.WRITE_AND_VERIFY_16, C.ORWRITE_16, C.COMPARE_AND_WRITE, C.WRITE_SAME_10, C.WRITE_SAME_16, C.UNMAP, C.SYNCHRONIZE_CACHE_10, C.SYNCHRONIZE_CACHE_16, C.MODE_SELECT_6, C.MODE_SELECT_10])

/** How a command touches the medium, for persistent-reservation conflicts (SPC-4 table 56). */
function accessOf(cdb: Buffer): Access {
  if (READS.has(cdb[0])) return 'read'
  if (WRITES.has(cdb[0])) return 'write'
  if (cdb[0] === C.SERVICE_ACTION_IN_16 && (cdb[1] & 0x1f) === C.SAI_GET_LBA_STATUS) return 'read'
  return 'other'
}

/** Commands allowed to a non-holder of a RESERVE(6) reservation (SPC-2 5.5.1). */
const RESERVATION_EXEMPT = new Set([C.INQUIRY, C.REQUEST_SENSE, C.REPORT_LUNS, C.RELEASE_6, C.MAINTENANCE_IN, C.PERSISTENT_RESERVE_IN, C.PERSISTENT_RESERVE_OUT])

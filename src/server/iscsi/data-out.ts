import { readField } from '../../disk-formats/struct.js'
import { copyLun, DataOut, FINAL, header, R2t } from './bhs.js'
import { DROP } from './framing.js'
import type { Params } from './negotiation.js'
import * as P from './pdu.js'

/**
 * Write buffers are reused: a 1 MiB Buffer per command, allocated and collected at hundreds per
 * second, costs more than the copy into it (GC of external memory). A buffer from the pool holds
 * an earlier command's bytes, so it is used only when every byte will be overwritten first:
 * immediate data, then Data-Out strictly in order (DataPDUInOrder=Yes), or the command fails.
 */
const pool = new Map<number, Buffer[]>()
const POOL_PER_SIZE = 32
/** The pool is shared by every connection; its bytes are bounded, whatever sizes clients use. */
const POOL_BYTES = 64 << 20
/** Smaller buffers are not pooled. */
const POOLED_FROM = 64 * 1024
let pooled = 0

/** A buffer for a command's data-out of `size` bytes (from the pool when large). */
function writeBuffer(size: number): Buffer {
  const b = size >= POOLED_FROM ? pool.get(size)?.pop() : undefined
  if (!b) return size >= POOLED_FROM ? Buffer.allocUnsafe(size) : Buffer.alloc(size)
  pooled -= b.length
  return b
}

/** Gives a command's data-out buffer back once the LU is done with it. */
export function recycle(b: Buffer): void {
  if (b.length < POOLED_FROM || b.length > 4 << 20 || pooled + b.length > POOL_BYTES) return
  let list = pool.get(b.length)
  if (!list) pool.set(b.length, (list = []))
  if (list.length < POOL_PER_SIZE) {
    list.push(b)
    pooled += b.length
  }
}

/** Why a write's data-out failed: a sequence error, or a Data-Out with a bad data digest. */
export type DataOutFailure = 'sequence' | 'digest'

interface PendingWrite {
  buf: Buffer
  received: number
  /** DataSN expected next in the current sequence (unsolicited burst or one R2T) */
  dataSN: number
  failed: false | DataOutFailure
  done: () => void
}

/** What the data-out phase needs from its connection. */
export interface DataOutIo {
  /** Sends an R2T with StatSN (not advanced), ExpCmdSN and MaxCmdSN filled in. */
  sendR2t(b: Buffer): void
  reject(bhs: Buffer, reason: number): void
  /** the connection is ending: no command waits any more */
  gone(): boolean
}

const DO = DataOut.fields

/**
 * The data-out phase of a connection's writes (RFC 7143 §10.7-10.8, ErrorRecoveryLevel 0,
 * DataPDUInOrder=Yes, MaxOutstandingR2T=1): immediate data, unsolicited Data-Out up to
 * FirstBurstLength, then one R2T per MaxBurstLength until the command has all its bytes.
 */
export class DataOutPhase {
  private readonly pending = new Map<number, PendingWrite>()
  private nextTTT = 1

  constructor(
    private readonly io: DataOutIo,
    private readonly params: Params,
  ) {}

  /** A task of this tag is waiting for data. */
  has(itt: number): boolean {
    return this.pending.has(itt)
  }

  /**
   * Where a Data-Out's payload is read: straight into its command's buffer when it continues
   * where the last one ended (`receive` checks the rest); dropped when no task waits for it.
   */
  placement(bhs: Buffer): Buffer | typeof DROP | null {
    const w = this.pending.get(P.ittOf(bhs))
    if (!w) return DROP
    return readField(bhs, DO.bufferOffset) === w.received ? w.buf : null
  }

  /** Takes one Data-Out PDU. */
  receive(pdu: P.Pdu): void {
    const { bhs } = pdu
    const w = this.pending.get(P.ittOf(bhs))
    if (!w) {
      this.io.reject(bhs, P.REJECT_PROTOCOL_ERROR)
      return
    }
    const offset = readField(bhs, DO.bufferOffset)
    // DataPDUInOrder=Yes: each PDU continues where the last one ended; anything else (or data
    // past the expected length, or past FirstBurstLength before the first R2T) fails the command
    if (readField(bhs, DO.dataSN) !== w.dataSN || offset !== w.received || offset + pdu.data.length > w.buf.length) {
      // ErrorRecoveryLevel 0: a sequence error fails the command (no SNACK recovery)
      w.failed = 'sequence'
      this.io.reject(bhs, P.REJECT_PROTOCOL_ERROR)
      if (P.finalOf(bhs)) w.done()
      return
    }
    w.dataSN++
    if (!pdu.direct) pdu.data.copy(w.buf, offset)
    w.received += pdu.data.length
    // the end of the data, or of this burst (the command then sends the next R2T)
    if (P.finalOf(bhs)) w.done()
  }

  /** A Data-Out with a bad data digest fails its write. */
  digestError(bhs: Buffer): void {
    const w = this.pending.get(P.ittOf(bhs))
    if (!w) return
    w.failed = 'digest'
    if (P.finalOf(bhs)) w.done()
  }

  /** The connection ends: writes waiting for data end without it. */
  end(): void {
    for (const w of this.pending.values()) w.done()
  }

  /**
   * Collects the `edtl` bytes of data-out of the write `cmd`, whose immediate data is
   * `immediate`. `room`: the command holds its share of the memory budget; if not, its
   * unsolicited data (at most FirstBurstLength) is taken first, then `takeRoom()` waits for it.
   * Resolves with the data, a failure, or null when the connection ended meanwhile.
   */
  async collect(cmd: Buffer, immediate: Buffer, edtl: number, unsolicited: boolean, room: boolean, takeRoom: () => Promise<void>): Promise<Buffer | DataOutFailure | null> {
    const itt = P.ittOf(cmd)
    const buf = room ? writeBuffer(edtl) : Buffer.alloc(Math.max(immediate.length, Math.min(edtl, this.params.firstBurstLength)))
    immediate.copy(buf)
    if (immediate.length >= edtl) return buf
    const w: PendingWrite = { buf, received: immediate.length, dataSN: 0, failed: false, done: () => {} }
    this.pending.set(itt, w)
    try {
      if (unsolicited && w.received < Math.min(edtl, this.params.firstBurstLength)) await new Promise<void>((r) => (w.done = r))
      if (!room && !w.failed && !this.io.gone()) {
        await takeRoom()
        const full = writeBuffer(edtl)
        w.buf.copy(full, 0, 0, w.received)
        w.buf = full
      }
      let r2tSN = 0
      while (w.received < edtl && !this.io.gone() && !w.failed) {
        w.dataSN = 0 // each R2T starts a new data sequence
        const wait = new Promise<void>((r) => (w.done = r))
        const r2t = R2t.assign(header(P.R2T, FINAL), {
          initiatorTaskTag: itt,
          targetTransferTag: this.nextTTT++ >>> 0,
          r2tSN: r2tSN++,
          bufferOffset: w.received,
          desiredDataTransferLength: Math.min(this.params.maxBurstLength, edtl - w.received),
        })
        copyLun(cmd, r2t)
        this.io.sendR2t(r2t)
        await wait
      }
    } finally {
      this.pending.delete(itt)
    }
    if (this.io.gone()) return null
    return w.failed || w.buf
  }
}

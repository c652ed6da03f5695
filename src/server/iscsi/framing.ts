import type { Socket } from 'node:net'
import { crc32c } from '../../disk-formats/crc32c.js'
import { readField, writeField } from '../../disk-formats/struct.js'
import type { ByteQueue } from '../net/byte-queue.js'
import { Basic, BHS_LENGTH, DataIn } from './bhs.js'
import type { Pdu } from './pdu.js'

/**
 * iSCSI framing (RFC 7143 §11.1), for the target and the initiator alike: BHS, AHS, header
 * digest, data segment padded to 4 bytes, data digest. Digests are CRC32C, stored little-endian.
 */

/** CRC32C digests in force: off during the login, then as negotiated. */
export interface Digests {
  header: boolean
  data: boolean
}

/** `place` answer: read the data segment into scratch and drop it. */
export const DROP = Symbol('drop')

/** Data segments at least this long are written without being copied into one buffer with their header. */
const LARGE_SEGMENT = 32 * 1024
const NO_DATA = Buffer.alloc(0)
/** Where data nobody uses is read (shared: nobody reads it back). */
const SCRATCH = Buffer.allocUnsafe(256 * 1024)

const ahsLength = (bhs: Buffer) => readField(bhs, Basic.fields.totalAhsLength) * 4
const padOf = (n: number) => (4 - (n % 4)) % 4

export class PduReader {
  /**
   * `maxData`: our declared MaxRecvDataSegmentLength, which bounds every data segment; `fail`
   * makes the side's error (the framing cannot be trusted any more: the connection ends).
   */
  constructor(
    private readonly q: ByteQueue,
    private readonly digests: Digests,
    private readonly maxData: number,
    private readonly fail: (message: string) => Error,
  ) {}

  /**
   * The next PDU. `place(bhs)` says where its data segment goes: a buffer it is read into at the
   * PDU's BufferOffset with no copy (when it fits there; else a new buffer: `direct` tells),
   * DROP (read and discarded unchecked: `data` is empty), or null (a new buffer). A bad data
   * digest costs this PDU only: `digestError` is set and its data is not to be used.
   */
  async read(place?: (bhs: Buffer) => Buffer | typeof DROP | null): Promise<Pdu> {
    const bhs = await this.q.read(BHS_LENGTH)
    const ahsLen = ahsLength(bhs)
    const dlen = readField(bhs, Basic.fields.dataSegmentLength)
    if (dlen > this.maxData) throw this.fail(`data segment of ${dlen} bytes exceeds MaxRecvDataSegmentLength ${this.maxData}`)
    const ahs = ahsLen ? await this.q.read(ahsLen) : NO_DATA
    if (this.digests.header) {
      const got = (await this.q.read(4)).readUInt32LE(0)
      const want = ahsLen ? crc32c(ahs, crc32c(bhs)) : crc32c(bhs)
      if (got !== want) throw this.fail(`header digest error (got 0x${got.toString(16)}, computed 0x${want.toString(16)})`)
    }
    const pad = padOf(dlen)
    const dest = place ? place(bhs) : null
    if (dest === DROP) {
      // a flood of unused data allocates nothing
      for (let left = dlen ? dlen + pad + (this.digests.data ? 4 : 0) : 0; left > 0; left -= SCRATCH.length) {
        await this.q.readInto(SCRATCH, 0, Math.min(left, SCRATCH.length))
      }
      return { bhs, ahs, data: NO_DATA }
    }
    let data: Buffer = NO_DATA
    let direct = false
    // Data-In and Data-Out have BufferOffset at the same place
    const at = dest && dlen ? readField(bhs, DataIn.fields.bufferOffset) : 0
    if (dest && dlen && at + dlen <= dest.length) {
      await this.q.readInto(dest, at, dlen)
      data = dest.subarray(at, at + dlen)
      direct = true
    } else if (dlen) data = await this.q.read(dlen)
    const padding = pad ? await this.q.read(pad) : null
    if (this.digests.data && dlen) {
      // covers the data segment and its padding (§11.1)
      const got = (await this.q.read(4)).readUInt32LE(0)
      const want = padding ? crc32c(padding, crc32c(data)) : crc32c(data)
      if (got !== want) return { bhs, ahs, data, digestError: true }
    }
    return { bhs, ahs, data, direct }
  }
}

/**
 * Writes one PDU (no AHS): sets its DataSegmentLength, pads the data, adds the digests in force.
 * A small PDU goes out as one buffer; a large data segment is not copied.
 */
export function writePdu(sock: Socket, bhs: Buffer, data: Buffer, digests: Digests): void {
  writeField(bhs, Basic.fields.dataSegmentLength, data.length)
  if (!digests.header && !data.length) {
    sock.write(bhs)
    return
  }
  const parts = [bhs]
  if (digests.header) parts.push(digest(bhs))
  if (data.length) {
    const pad = padOf(data.length)
    const body = pad ? Buffer.concat([data, Buffer.alloc(pad)]) : data
    parts.push(body)
    if (digests.data) parts.push(digest(body))
  }
  if (data.length < LARGE_SEGMENT) sock.write(Buffer.concat(parts))
  else for (const p of parts) sock.write(p)
}

function digest(b: Buffer): Buffer {
  const d = Buffer.allocUnsafe(4)
  d.writeUInt32LE(crc32c(b))
  return d
}

/**
 * The same framing for a receiver handed bytes as they arrive, in any split (a socket's `onread`):
 * PDUs come out synchronously and in order, with no promise or buffer per header. `place` is as
 * PduReader's. A PDU handed to `onPdu` is valid during that call only (its header, and its data
 * unless placed, are views of reused memory): what is kept is copied. A framing error throws
 * `fail`'s error: the connection is to end. `hold()` stops the delivery after the current PDU
 * (what follows is kept, copied) until `resume()`: a login applies each answer (digests) first.
 */
export class PduSplitter {
  /** the header being gathered: BHS, AHS, header digest */
  private readonly head = Buffer.allocUnsafe(BHS_LENGTH + 255 * 4 + 4)
  private readonly bhs = this.head.subarray(0, BHS_LENGTH)
  private headGot = 0
  private headNeed = BHS_LENGTH
  /** 0: header; 1: data segment; 2: padding and data digest */
  private phase = 0
  private dlen = 0
  private got = 0
  /** where the data segment goes: the placed buffer (at `at`), a buffer of its own, or nowhere (DROP) */
  private dest: Buffer | null = null
  private at = 0
  private placed = false
  private readonly tail = Buffer.alloc(8)
  private tailNeed = 0
  private held = false
  /** the buffer `receiveInto` last gave for bytes received in place */
  private offered: Buffer | null = null
  private pending: Buffer[] = []

  constructor(
    private readonly digests: Digests,
    private readonly maxData: number,
    private readonly fail: (message: string) => Error,
    private readonly place: (bhs: Buffer) => Buffer | typeof DROP | null,
    private readonly onPdu: (pdu: Pdu) => void,
  ) {}

  /**
   * Where the next bytes may be received with no copy: the rest of the data segment being placed,
   * when at least `min` bytes of it are missing; else null.
   */
  directTarget(min: number): Buffer | null {
    if (this.phase !== 1 || !this.placed || this.held || this.dlen - this.got < min) return null
    const from = this.at + this.got
    return this.dest!.subarray(from, this.at + this.dlen)
  }

  /** Where the next bytes are best received: straight into place (`directTarget`), else `scratch`. */
  receiveInto(min: number, scratch: Buffer): Buffer {
    return (this.offered = this.directTarget(min)) ?? scratch
  }

  hold(): void {
    this.held = true
  }

  resume(): void {
    this.held = false
    while (!this.held && this.pending.length) this.feed(this.pending.shift()!)
  }

  /** Bytes received (`chunk` may be reused by the caller once this returns). */
  push(chunk: Buffer): void {
    if (this.held) this.pending.push(Buffer.from(chunk))
    else this.feed(chunk)
  }

  /** `n` bytes received into `buf`: the buffer `receiveInto` gave (in place, then nothing to copy), or any other. */
  received(buf: Buffer, n: number): void {
    if (buf !== this.offered) {
      this.push(n === buf.length ? buf : buf.subarray(0, n))
      return
    }
    this.offered = null
    this.got += n
    if (this.got === this.dlen) this.dataDone()
  }

  private feed(chunk: Buffer): void {
    let i = 0
    const n = chunk.length
    while (i < n) {
      if (this.held) {
        this.pending.push(Buffer.from(chunk.subarray(i)))
        return
      }
      if (this.phase === 0) {
        // a few bytes: a loop costs less than Buffer#copy
        const head = this.head
        for (const end = i + Math.min(this.headNeed - this.headGot, n - i); i < end; i++) head[this.headGot++] = chunk[i]
        if (this.headGot === BHS_LENGTH) {
          this.dlen = readField(this.head, Basic.fields.dataSegmentLength)
          if (this.dlen > this.maxData) throw this.fail(`data segment of ${this.dlen} bytes exceeds MaxRecvDataSegmentLength ${this.maxData}`)
          this.headNeed = BHS_LENGTH + ahsLength(this.head) + (this.digests.header ? 4 : 0)
        }
        if (this.headGot === this.headNeed) this.headerDone()
      } else if (this.phase === 1) {
        const k = Math.min(this.dlen - this.got, n - i)
        if (this.dest) this.dest.set(k === n ? chunk : chunk.subarray(i, i + k), this.at + this.got)
        this.got += k
        i += k
        if (this.got === this.dlen) this.dataDone()
      } else {
        const tail = this.tail
        for (const end = i + Math.min(this.tailNeed - this.got, n - i); i < end; i++) tail[this.got++] = chunk[i]
        if (this.got === this.tailNeed) this.deliver()
      }
    }
  }

  private headerDone(): void {
    const bhs = this.bhs
    const ahsEnd = BHS_LENGTH + ahsLength(bhs)
    if (this.digests.header) {
      const got = this.head.readUInt32LE(ahsEnd)
      const want = crc32c(this.head.subarray(0, ahsEnd))
      if (got !== want) throw this.fail(`header digest error (got 0x${got.toString(16)}, computed 0x${want.toString(16)})`)
    }
    this.got = 0
    this.placed = false
    this.dest = null
    if (!this.dlen) {
      this.deliver()
      return
    }
    const where = this.place(bhs)
    if (where === DROP) this.dest = null
    else {
      const at = where ? readField(bhs, DataIn.fields.bufferOffset) : 0
      if (where && at + this.dlen <= where.length) {
        this.dest = where
        this.at = at
        this.placed = true
      } else {
        this.dest = Buffer.allocUnsafe(this.dlen)
        this.at = 0
      }
    }
    this.phase = 1
  }

  private dataDone(): void {
    this.got = 0
    this.tailNeed = padOf(this.dlen) + (this.digests.data ? 4 : 0)
    this.phase = 2
    if (!this.tailNeed) this.deliver()
  }

  private deliver(): void {
    const bhs = this.bhs
    const ahsLen = ahsLength(bhs)
    const ahs = ahsLen ? this.head.subarray(BHS_LENGTH, BHS_LENGTH + ahsLen) : NO_DATA
    const dlen = this.dlen
    const data = !dlen || !this.dest ? NO_DATA : this.dest.subarray(this.at, this.at + dlen)
    let digestError = false
    if (this.digests.data && dlen && this.dest) {
      const pad = padOf(dlen)
      const crc = crc32c(this.tail.subarray(0, pad), crc32c(data))
      digestError = crc !== this.tail.readUInt32LE(pad)
    }
    const direct = this.placed
    this.phase = 0
    this.headGot = 0
    this.headNeed = BHS_LENGTH
    this.dest = null
    this.placed = false
    this.onPdu({ bhs, ahs, data, direct, digestError })
  }
}

/** Small PDUs and their padding and digests are copied into slabs this big; larger data is written as it is. */
const SLAB = 64 * 1024

/**
 * Outgoing PDUs, sent together: every PDU queued in one turn of the event loop goes out in one
 * write (header, padding and digests copied into a shared slab with the small data segments;
 * large ones written in place). `send` sets DataSegmentLength, pads the data and adds the digests
 * in force; `bhs` may be reused once it returns, a large `data` not until it is written.
 */
export class PduBatch {
  private parts: Buffer[] = []
  private slab = Buffer.allocUnsafe(SLAB)
  /** the slab's bytes from `start` to `end` are queued and not yet a part */
  private start = 0
  private end = 0
  private scheduled = false

  constructor(
    private readonly sock: Socket,
    private readonly digests: Digests,
  ) {}

  send(bhs: Buffer, data: Buffer = NO_DATA): void {
    writeField(bhs, Basic.fields.dataSegmentLength, data.length)
    const pad = padOf(data.length)
    const large = data.length >= LARGE_SEGMENT
    this.room(BHS_LENGTH + 8 + pad + (large ? 0 : data.length))
    this.put(bhs)
    if (this.digests.header) this.end = this.slab.writeUInt32LE(crc32c(bhs), this.end)
    if (data.length) {
      if (large) {
        this.cut()
        this.parts.push(data)
      } else this.put(data)
      this.slab.fill(0, this.end, this.end + pad)
      this.end += pad
      if (this.digests.data) this.end = this.slab.writeUInt32LE(crc32c(ZEROS.subarray(0, pad), crc32c(data)), this.end)
    }
    if (!this.scheduled) {
      this.scheduled = true
      process.nextTick(() => this.flush())
    }
  }

  private put(b: Buffer): void {
    this.end += b.copy(this.slab, this.end)
  }

  /** The queued slab bytes become a part (what follows them is a large data segment). */
  private cut(): void {
    if (this.end > this.start) this.parts.push(this.slab.subarray(this.start, this.end))
    this.start = this.end
  }

  private room(n: number): void {
    if (this.slab.length - this.end >= n) return
    this.cut()
    this.slab = Buffer.allocUnsafe(Math.max(SLAB, n))
    this.start = this.end = 0
  }

  private flush(): void {
    this.scheduled = false
    this.cut()
    const parts = this.parts
    this.parts = []
    if (this.sock.destroyed) return
    if (parts.length === 1) {
      this.sock.write(parts[0])
      return
    }
    this.sock.cork()
    for (const p of parts) this.sock.write(p)
    this.sock.uncork()
  }
}

const ZEROS = Buffer.alloc(4)

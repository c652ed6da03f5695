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

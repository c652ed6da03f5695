import type { BlockDevice } from '../../disk-formats/block-device.js'
import * as C from './constants.js'
import { invalidField, invalidParameter, parameterLength, SenseError } from './sense.js'

/**
 * EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): the copy manager copies
 * blocks within this logical unit (the offload VMware's VAAI "full copy" uses to clone a disk).
 * Copy sources and destinations (CSCD descriptors) are identification descriptors (0xE4) that
 * name this LU by its NAA designator; segments are block-to-block (0x02). No inline or held data.
 */
export const XCOPY = {
  MAX_CSCD_DESCRIPTORS: 8,
  MAX_SEGMENT_DESCRIPTORS: 16,
  /** bounds the target and segment descriptor lists together */
  MAX_DESCRIPTOR_LIST_LENGTH: 1024,
  /** blocks per segment: the field is 16 bits */
  MAX_SEGMENT_BLOCKS: 0xffff,
  /** copy status kept per I_T nexus for RECEIVE COPY RESULTS */
  MAX_HELD_STATUS: 64,
} as const

const HEADER = 16
const CSCD_IDENTIFICATION = 0xe4
const SEGMENT_BLOCK_TO_BLOCK = 0x02
const CHUNK_BLOCKS = 2048 // 1 MiB per read/write while copying

const copyAborted = (asc: C.AscName) => new SenseError(C.COPY_ABORTED, asc)

interface CopyStatus {
  /** 1: completed, no errors; 2: completed with errors */
  status: number
  segments: number
  bytes: number
}

interface Cscd {
  nul: boolean
  designator: Buffer
  blockLength: number
}

export class CopyManager {
  /** per I_T nexus: list identifier → status of the last copy with it */
  private readonly held = new Map<string, Map<number, CopyStatus>>()

  constructor(
    private readonly dev: BlockDevice,
    private readonly blocks: () => number,
    /** this LU's designation descriptor as in VPD page 0x83 (header and NAA designator) */
    private readonly designator: Buffer,
  ) {}

  /** EXTENDED COPY(LID1): parse everything first, then copy segment by segment. */
  async extendedCopy(plen: number, data: Buffer, nexus: string): Promise<void> {
    if (plen === 0) return
    if (plen < HEADER || data.length < plen) throw parameterLength()
    const listId = data[0]
    const usage = (data[1] >> 3) & 3
    const cscdLength = data.readUInt16BE(2)
    const segLength = data.readUInt32BE(8)
    const inlineLength = data.readUInt32BE(12)
    if (cscdLength + segLength > XCOPY.MAX_DESCRIPTOR_LIST_LENGTH) throw parameterLength()
    if (HEADER + cscdLength + segLength + inlineLength > plen) throw parameterLength()
    if (inlineLength) throw invalidParameter(12) // no inline data
    if (cscdLength % 32) throw parameterLength()
    if (cscdLength / 32 > XCOPY.MAX_CSCD_DESCRIPTORS) throw new SenseError(C.ILLEGAL_REQUEST, 'TOO_MANY_TARGET_DESCRIPTORS')
    const cscds: Cscd[] = []
    for (let at = HEADER; at < HEADER + cscdLength; at += 32) {
      const d = data.subarray(at, at + 32)
      if (d[0] !== CSCD_IDENTIFICATION) throw new SenseError(C.ILLEGAL_REQUEST, 'UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE', undefined, { cd: false, byte: at })
      // LU ID TYPE (bits 7-6) qualifies an LU IDENTIFIER field, which an identification descriptor
      // does not have: the designator names the LU, so the field is not checked (libiscsi 1.19's
      // ExtendedCopy.ValidTgtDescr expects a reserved value to be accepted)
      if ((d[1] & 0x1f) !== 0) throw invalidParameter(at + 1) // peripheral type: block devices
      const len = d[7]
      if (len > 20) throw invalidParameter(at + 7)
      cscds.push({ nul: (d[1] & 0x20) !== 0, designator: Buffer.from(d.subarray(4, 8 + len)), blockLength: d.readUIntBE(29, 3) })
    }
    const segments: Buffer[] = []
    for (let at = HEADER + cscdLength; at < HEADER + cscdLength + segLength; ) {
      if (at + 4 > HEADER + cscdLength + segLength) throw parameterLength()
      const type = data[at]
      const len = data.readUInt16BE(at + 2) + 4
      if (segments.length >= XCOPY.MAX_SEGMENT_DESCRIPTORS) throw new SenseError(C.ILLEGAL_REQUEST, 'TOO_MANY_SEGMENT_DESCRIPTORS')
      if (type !== SEGMENT_BLOCK_TO_BLOCK) throw new SenseError(C.ILLEGAL_REQUEST, 'UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE', undefined, { cd: false, byte: at })
      if (len !== 28) throw invalidParameter(at + 2)
      if (at + len > HEADER + cscdLength + segLength) throw parameterLength()
      segments.push(data.subarray(at, at + len))
      at += len
    }
    const status: CopyStatus = { status: 1, segments: 0, bytes: 0 }
    try {
      for (const s of segments) {
        const src = this.resolve(cscds, s.readUInt16BE(4))
        const dst = this.resolve(cscds, s.readUInt16BE(6))
        const count = s.readUInt16BE(10)
        const srcLba = Number(s.readBigUInt64BE(12))
        const dstLba = Number(s.readBigUInt64BE(20))
        if (src.blockLength !== 512 || dst.blockLength !== 512) throw copyAborted('INVALID_FIELD_IN_PARAMETER_LIST')
        // a range past the end of the LU aborts the copy (COPY ABORTED, no further code)
        if (!Number.isSafeInteger(srcLba) || srcLba + count > this.blocks()) throw copyAborted('NO_ADDITIONAL_SENSE')
        if (!Number.isSafeInteger(dstLba) || dstLba + count > this.blocks()) throw copyAborted('NO_ADDITIONAL_SENSE')
        for (let done = 0; done < count; done += CHUNK_BLOCKS) {
          const n = Math.min(CHUNK_BLOCKS, count - done)
          const buf = await this.dev.read((srcLba + done) * 512, n * 512)
          await this.dev.write((dstLba + done) * 512, buf)
          status.bytes += n * 512
        }
        status.segments++
      }
    } catch (e) {
      status.status = 2
      throw e
    } finally {
      // LIST ID USAGE 00b: hold the status for RECEIVE COPY RESULTS
      if (usage === 0) this.hold(nexus, listId, status)
    }
  }

  /** A CSCD descriptor this copy manager can reach: this LU, by its designator. */
  private resolve(cscds: Cscd[], index: number): Cscd {
    const c = cscds[index]
    if (!c || c.nul || !c.designator.equals(this.designator)) throw copyAborted('UNREACHABLE_COPY_TARGET')
    return c
  }

  private hold(nexus: string, listId: number, s: CopyStatus): void {
    let m = this.held.get(nexus)
    if (!m) this.held.set(nexus, (m = new Map()))
    m.delete(listId)
    m.set(listId, s)
    if (m.size > XCOPY.MAX_HELD_STATUS) m.delete(m.keys().next().value!)
  }

  /** RECEIVE COPY RESULTS: COPY STATUS (00h) of a held list, or OPERATING PARAMETERS (03h). */
  receiveCopyResults(sa: number, listId: number, alloc: number, nexus: string): Buffer {
    let d: Buffer
    if (sa === 0x00) {
      const s = this.held.get(nexus)?.get(listId)
      if (!s) throw invalidField(2) // no copy with this list identifier
      d = Buffer.alloc(12)
      d.writeUInt32BE(8, 0)
      d[4] = s.status
      d.writeUInt16BE(s.segments, 5)
      d[7] = 1 // transfer count in KiB
      d.writeUInt32BE(Math.floor(s.bytes / 1024), 8)
    } else if (sa === 0x03) {
      const codes = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]
      d = Buffer.alloc(44 + codes.length)
      d.writeUInt32BE(d.length - 4, 0)
      d.writeUInt16BE(XCOPY.MAX_CSCD_DESCRIPTORS, 8)
      d.writeUInt16BE(XCOPY.MAX_SEGMENT_DESCRIPTORS, 10)
      d.writeUInt32BE(XCOPY.MAX_DESCRIPTOR_LIST_LENGTH, 12)
      d.writeUInt32BE(XCOPY.MAX_SEGMENT_BLOCKS * 512, 16) // maximum segment length (bytes)
      d.writeUInt32BE(0, 20) // maximum inline data length
      d.writeUInt32BE(0, 24) // held data limit
      d.writeUInt16BE(1, 34) // total concurrent copies
      d[36] = 1 // maximum concurrent copies
      d[37] = 9 // data segment granularity: 2^9 = one block
      d[43] = codes.length
      codes.forEach((c, i) => (d[44 + i] = c))
    } else throw invalidField(1)
    return d.subarray(0, Math.min(d.length, alloc))
  }

  /**
   * VPD page 0x8F (Third-party Copy): the descriptors this copy manager takes, and `commands`
   * (opcode, service actions) that reach it.
   */
  thirdPartyCopyVpd(commands: readonly (readonly [number, readonly number[]])[]): Buffer {
    const desc = (type: number, body: Buffer) => {
      const padded = Buffer.alloc(Math.ceil(body.length / 4) * 4)
      body.copy(padded)
      const h = Buffer.alloc(4)
      h.writeUInt16BE(type, 0)
      h.writeUInt16BE(padded.length, 2)
      return Buffer.concat([h, padded])
    }
    // Supported Commands (0001h): EXTENDED COPY(LID1); RECEIVE COPY RESULTS: COPY STATUS, OPERATING PARAMETERS
    const cmds = Buffer.from(commands.flatMap(([op, sas]) => [op, sas.length, ...sas]))
    const supported = desc(0x0001, Buffer.concat([Buffer.from([cmds.length]), cmds]))
    // Parameter Data (0008h)
    const p = Buffer.alloc(28)
    p.writeUInt16BE(XCOPY.MAX_CSCD_DESCRIPTORS, 4)
    p.writeUInt16BE(XCOPY.MAX_SEGMENT_DESCRIPTORS, 6)
    p.writeUInt32BE(XCOPY.MAX_DESCRIPTOR_LIST_LENGTH, 8)
    const params = desc(0x0008, p)
    // Supported Descriptors (000Ch), Supported CSCD Descriptor IDs (000Dh: none beyond the list)
    const descs = desc(0x000c, Buffer.from([2, SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION]))
    return Buffer.concat([supported, params, descs])
  }
}

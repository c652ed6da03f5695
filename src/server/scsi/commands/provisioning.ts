import * as C from '../constants.js'
import { CDB10, CDB16, type BlockFields, type BlockFormat } from '../cdb.js'
import { BLOCK, MAX_TRANSFER_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS } from '../limits.js'
import { invalidField, invalidParameter, lbaOutOfRange, parameterLength } from '../sense.js'
import { blocks, command, dataOutHolds, good, inRange, unprotected, type Command, type Medium } from './command.js'

const ANCHOR = 0x10
const UNMAP = 0x08
const NDOB = 0x01

/** WRITE SAME of zero blocks (WSNZ=0): from the LBA to the end of the medium. */
const sameCount = (f: BlockFields, m: { blocks: number }) => (f.count === 0 ? m.blocks - f.lba : f.count)

function startsOnMedium(m: Medium, lba: number): void {
  if (!Number.isSafeInteger(lba) || lba >= m.blocks) throw lbaOutOfRange()
}

/**
 * WRITE SAME(10/16) (SBC-3 5.41, 5.42). With UNMAP the blocks are deallocated whatever the data
 * (SBC-3 lets the device choose); deallocated blocks read zero (LBPRZ=1). NDOB (16 only): no data-out, zeros.
 */
function writeSame(name: string, opcode: number, cdbLength: 10 | 16, fmt: BlockFormat): Command {
  const ndob = (f: BlockFields) => cdbLength === 16 && (f.flags & NDOB) !== 0
  return command<BlockFields>({
    name, opcode, cdbLength, access: 'write', metrics: 'write_same',
    fields: fmt.fields,
    check(f, m) {
      startsOnMedium(m, f.lba)
      unprotected(f.flags)
      if (f.flags & ANCHOR) throw invalidField(1, 4) // no anchored state
      const count = sameCount(f, m)
      if (count > MAX_WRITE_SAME_BLOCKS) throw invalidField(fmt.countByte)
      inRange(m, f.lba, count)
      if (!ndob(f)) dataOutHolds(m.dataOut, BLOCK)
    },
    dataOut: (f) => (ndob(f) ? 0 : BLOCK),
    async run(u, f, out) {
      const count = sameCount(f, u)
      const block = ndob(f) ? Buffer.alloc(BLOCK) : out.subarray(0, BLOCK)
      if (f.flags & UNMAP || block.every((b) => b === 0)) {
        await u.dev.writeZeroes(blocks(f.lba), blocks(count), { mayUnmap: true })
        return good()
      }
      const chunkBlocks = Math.min(count, 2048)
      const chunk = Buffer.concat(Array.from({ length: chunkBlocks }, () => block))
      for (let done = 0; done < count; done += chunkBlocks) {
        const k = Math.min(chunkBlocks, count - done)
        await u.dev.write(blocks(f.lba + done), chunk.subarray(0, blocks(k)))
      }
      return good()
    },
  })
}

/** UNMAP (SBC-3 5.28): block descriptors of 16 bytes after an 8-byte header; LBPRZ=1, so a zeroing that may deallocate. */
const unmap = command<{ anchor: boolean; plen: number }>({
  name: 'UNMAP', opcode: C.UNMAP, cdbLength: 10, access: 'write', metrics: 'unmap',
  fields: (cdb) => ({ anchor: (cdb[1] & 0x01) !== 0, plen: cdb.readUInt16BE(7) }),
  check(f) {
    if (f.anchor) throw invalidField(1, 0)
  },
  dataOut: (f) => f.plen,
  async run(u, { plen }, out) {
    if (plen === 0) return good()
    if (plen < 8) throw parameterLength()
    dataOutHolds(out.length, plen)
    const dataLen = out.readUInt16BE(0)
    const descLen = out.readUInt16BE(2)
    if (dataLen < descLen + 6) throw parameterLength()
    if (descLen % 16 !== 0 || 8 + descLen > plen) throw parameterLength()
    const n = descLen / 16
    if (n > MAX_UNMAP_DESCRIPTORS) throw invalidParameter(2)
    const ranges: [number, number][] = []
    for (let i = 0; i < n; i++) {
      const lba = Number(out.readBigUInt64BE(8 + i * 16))
      const count = out.readUInt32BE(16 + i * 16)
      if (count > MAX_TRANSFER_BLOCKS) throw invalidParameter(16 + i * 16)
      inRange(u, lba, count)
      ranges.push([lba, count])
    }
    for (const [lba, count] of ranges) if (count) await u.dev.writeZeroes(blocks(lba), blocks(count), { mayUnmap: true })
    return good()
  },
})

/** GET LBA STATUS (SBC-3 5.5): mapped where the chain stores data, deallocated where it reads as unwritten zeros. */
const getLbaStatus = command<{ lba: number; alloc: number }>({
  name: 'GET LBA STATUS', opcode: C.SERVICE_ACTION_IN_16, serviceAction: C.SAI_GET_LBA_STATUS, cdbLength: 16, access: 'read', metrics: 'other',
  fields: (cdb) => {
    const f = CDB16.fields(cdb)
    return { lba: f.lba, alloc: f.count }
  },
  check: (f, m) => startsOnMedium(m, f.lba),
  async run(u, { lba, alloc }) {
    const span = Math.min(u.blocks - lba, 1 << 21)
    const descs: Buffer[] = []
    for (const e of await u.dev.blockStatus(blocks(lba), blocks(span))) {
      const start = Math.floor(e.offset / BLOCK)
      const end = Math.ceil((e.offset + e.length) / BLOCK)
      const last = descs.length ? descs[descs.length - 1] : null
      const state = e.data ? 0 : 1
      if (last && last[12] === state) {
        last.writeUInt32BE(last.readUInt32BE(8) + (end - start), 8)
        continue
      }
      const d = Buffer.alloc(16)
      d.writeBigUInt64BE(BigInt(start), 0)
      d.writeUInt32BE(end - start, 8)
      d[12] = state
      descs.push(d)
    }
    const body = Buffer.concat(descs)
    const h = Buffer.alloc(8)
    h.writeUInt32BE(4 + body.length, 0)
    const all = Buffer.concat([h, body])
    return good(all.subarray(0, Math.min(all.length, alloc)))
  },
})

export const PROVISIONING: readonly Command[] = [writeSame('WRITE SAME(10)', C.WRITE_SAME_10, 10, CDB10), writeSame('WRITE SAME(16)', C.WRITE_SAME_16, 16, CDB16), unmap, getLbaStatus]

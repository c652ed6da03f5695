import type { BlockDevice, ComparesAndWrites } from '../../../disk-formats/block-device.js'
import * as C from '../constants.js'
import { ATOMIC16, ATOMIC_BOUNDARY_BYTE, CAW16, CDB10, CDB12, CDB16, CDB6, type BlockFields, type BlockFormat } from '../cdb.js'
import { ATOMIC_ALIGNMENT, BLOCK, MAX_ATOMIC_BLOCKS, MAX_CAW_BLOCKS, MAX_TRANSFER_BLOCKS } from '../limits.js'
import { invalidField, parameterLength, SenseError } from '../sense.js'
import { blocks, command, dataOutHolds, firstDifference, good, inRange, transferable, unprotected, type Command, type MetricsClass, type Unit } from './command.js'

const FUA = 0x08
/** bytes a transfer of `count` blocks holds, 0 over the maximum (refused before any read) */
const held = (count: number, copies: number) => (count <= MAX_TRANSFER_BLOCKS ? copies * blocks(count) : 0)

/** The CDB-derived parts of a command whose data-out is its blocks: the WRITE family. */
const carriesBlocks = (fmt: BlockFormat) => ({ fields: fmt.fields, dataOut: (f: BlockFields) => blocks(f.count), shrink: fmt.withCount })

async function writeBlocks(u: Unit, f: BlockFields, out: Buffer, fua: boolean) {
  if (f.count) await u.dev.write(blocks(f.lba), out.subarray(0, blocks(f.count)), { fua: fua || (f.flags & FUA) !== 0 })
  return good()
}

/** READ(6/10/12/16) (SBC-3 5.8-5.11). */
function read(name: string, opcode: number, cdbLength: 6 | 10 | 12 | 16, fmt: BlockFormat): Command {
  return command<BlockFields>({
    name, opcode, cdbLength, access: 'read', metrics: 'read',
    fields: fmt.fields,
    check(f, m) {
      unprotected(f.flags)
      transferable(f.count, fmt.countByte)
      inRange(m, f.lba, f.count)
    },
    mediumRead: (f) => held(f.count, 1),
    run: async (u, f) => good(f.count ? await u.dev.read(blocks(f.lba), blocks(f.count)) : Buffer.alloc(0)),
  })
}

/** WRITE(6/10/12/16) and WRITE AND VERIFY(10/12/16): the verify is a write with FUA (SBC-3 5.40). */
function write(name: string, opcode: number, cdbLength: 6 | 10 | 12 | 16, fmt: BlockFormat, metrics: MetricsClass): Command {
  const verify = metrics === 'write_verify'
  return command<BlockFields>({
    name, opcode, cdbLength, access: 'write', metrics,
    ...carriesBlocks(fmt),
    check(f, m) {
      unprotected(f.flags)
      transferable(f.count, fmt.countByte)
      inRange(m, f.lba, f.count)
      dataOutHolds(m.dataOut, blocks(f.count))
    },
    run: (u, f, out) => writeBlocks(u, f, out, verify),
  })
}

/** VERIFY(10/12/16) (SBC-3 5.30): BYTCHK 0 checks nothing, 1 compares the data-out, 3 one block repeated. */
function verify(name: string, opcode: number, cdbLength: 10 | 12 | 16, fmt: BlockFormat): Command {
  const bytchk = (f: BlockFields) => (f.flags >> 1) & 3
  return command<BlockFields>({
    name, opcode, cdbLength, access: 'read', metrics: 'other',
    fields: fmt.fields,
    check(f, m) {
      unprotected(f.flags)
      if (bytchk(f) === 2) throw invalidField(1, 2)
      inRange(m, f.lba, f.count)
      transferable(f.count, fmt.countByte)
      if (f.count && bytchk(f)) dataOutHolds(m.dataOut, bytchk(f) === 1 ? blocks(f.count) : BLOCK)
    },
    dataOut: (f) => (bytchk(f) === 1 ? blocks(f.count) : bytchk(f) === 3 ? BLOCK : 0),
    mediumRead: (f) => held(f.count, bytchk(f) === 1 ? 1 : bytchk(f) === 3 ? 2 : 0),
    async run(u, f, out) {
      if (bytchk(f) === 0 || f.count === 0) return good()
      const n = blocks(f.count)
      const want = bytchk(f) === 1 ? out.subarray(0, n) : Buffer.concat(Array.from({ length: f.count }, () => out.subarray(0, BLOCK)))
      const at = firstDifference(await u.dev.read(blocks(f.lba), n), want)
      if (at >= 0) throw new SenseError(C.MISCOMPARE, 'MISCOMPARE_DURING_VERIFY_OPERATION', at)
      return good()
    },
  })
}

/** PRE-FETCH(10/16): nothing to cache ahead; CONDITION MET (SBC-3 5.3). */
function preFetch(name: string, opcode: number, cdbLength: 10 | 16, fmt: BlockFormat): Command {
  return command<BlockFields>({
    name, opcode, cdbLength, access: 'read', metrics: 'other',
    fields: fmt.fields,
    check: (f, m) => inRange(m, f.lba, f.count),
    run: async () => ({ status: C.CONDITION_MET }),
  })
}

/** SYNCHRONIZE CACHE(10/16): flushes the whole device whatever the range (SBC-3 5.22). */
function synchronizeCache(name: string, opcode: number, cdbLength: 10 | 16, fmt: BlockFormat): Command {
  return command<BlockFields>({
    name, opcode, cdbLength, access: 'write', metrics: 'flush',
    fields: fmt.fields,
    check: (f, m) => inRange(m, f.lba, f.count),
    async run(u) {
      await u.dev.flush()
      return good()
    },
  })
}

/** ORWRITE(16) (SBC-3 5.9): the data-out ORed into the blocks, atomic against every other command. */
const orWrite = command<BlockFields>({
  name: 'ORWRITE(16)', opcode: C.ORWRITE_16, cdbLength: 16, access: 'write', metrics: 'write', exclusive: () => true,
  ...carriesBlocks(CDB16),
  check(f, m) {
    unprotected(f.flags)
    inRange(m, f.lba, f.count)
    transferable(f.count, CDB16.countByte)
    dataOutHolds(m.dataOut, blocks(f.count))
  },
  mediumRead: (f) => held(f.count, 1),
  async run(u, f, out) {
    if (f.count === 0) return good()
    const cur = await u.dev.read(blocks(f.lba), blocks(f.count))
    for (let i = 0; i < cur.length; i++) cur[i] |= out[i]
    await u.dev.write(blocks(f.lba), cur)
    return good()
  },
})

/** WRITE ATOMIC(16) (SBC-4 5.48): whole pages (ATOMIC_ALIGNMENT), no atomic boundary. */
const writeAtomic = command<BlockFields>({
  name: 'WRITE ATOMIC(16)', opcode: C.WRITE_ATOMIC_16, cdbLength: 16, access: 'write', metrics: 'write', exclusive: () => true,
  ...carriesBlocks(ATOMIC16),
  check(f, m) {
    unprotected(f.flags)
    if (f.boundary !== 0) throw invalidField(ATOMIC_BOUNDARY_BYTE) // MAXIMUM ATOMIC BOUNDARY SIZE is 0 (VPD 0xB0)
    if (f.count > MAX_ATOMIC_BLOCKS) throw invalidField(ATOMIC16.countByte)
    inRange(m, f.lba, f.count)
    if (f.count % ATOMIC_ALIGNMENT) throw invalidField(ATOMIC16.countByte)
    if (f.lba % ATOMIC_ALIGNMENT) throw invalidField(ATOMIC16.lbaByte)
    dataOutHolds(m.dataOut, blocks(f.count))
  },
  run: (u, f, out) => writeBlocks(u, f, out, false),
})

/**
 * COMPARE AND WRITE (SBC-3 5.2): the data-out is the expected blocks then the new ones. Atomic: the
 * device's own compare-and-write is, against all its users; otherwise the gate is exclusive.
 */
const compareAndWrite = command<BlockFields>({
  name: 'COMPARE AND WRITE', opcode: C.COMPARE_AND_WRITE, cdbLength: 16, access: 'write', metrics: 'compare_and_write', exclusive: (u) => !u.ownCompareAndWrite,
  fields: CAW16.fields,
  check(f, m) {
    unprotected(f.flags)
    if (f.count > MAX_CAW_BLOCKS) throw invalidField(CAW16.countByte)
    inRange(m, f.lba, f.count)
    if (f.count === 0 && m.dataOut > 0) throw invalidField(CAW16.countByte) // zero blocks but data sent: the count is wrong
    if (f.count > 0 && m.dataOut !== 2 * blocks(f.count)) throw parameterLength()
  },
  dataOut: (f) => 2 * blocks(f.count),
  async run(u, f, out) {
    if (f.count === 0) return good()
    const at = blocks(f.lba)
    const n = blocks(f.count)
    const [expected, data] = [out.subarray(0, n), out.subarray(n, 2 * n)]
    if (u.ownCompareAndWrite) {
      if (await (u.dev as BlockDevice & ComparesAndWrites).compareAndWrite(at, expected, data)) return good()
      // where it differed, read after the device's atomic verdict (another user may have written since)
      const where = firstDifference(await u.dev.read(at, n), expected)
      throw new SenseError(C.MISCOMPARE, 'MISCOMPARE_DURING_VERIFY_OPERATION', Math.max(where, 0))
    }
    const where = firstDifference(await u.dev.read(at, n), expected)
    if (where >= 0) throw new SenseError(C.MISCOMPARE, 'MISCOMPARE_DURING_VERIFY_OPERATION', where)
    await u.dev.write(at, data, { fua: (f.flags & FUA) !== 0 })
    return good()
  },
})

export const BLOCK_IO: readonly Command[] = [
  read('READ(6)', C.READ_6, 6, CDB6),
  read('READ(10)', C.READ_10, 10, CDB10),
  read('READ(12)', C.READ_12, 12, CDB12),
  read('READ(16)', C.READ_16, 16, CDB16),
  write('WRITE(6)', C.WRITE_6, 6, CDB6, 'write'),
  write('WRITE(10)', C.WRITE_10, 10, CDB10, 'write'),
  write('WRITE(12)', C.WRITE_12, 12, CDB12, 'write'),
  write('WRITE(16)', C.WRITE_16, 16, CDB16, 'write'),
  write('WRITE AND VERIFY(10)', C.WRITE_AND_VERIFY_10, 10, CDB10, 'write_verify'),
  write('WRITE AND VERIFY(12)', C.WRITE_AND_VERIFY_12, 12, CDB12, 'write_verify'),
  write('WRITE AND VERIFY(16)', C.WRITE_AND_VERIFY_16, 16, CDB16, 'write_verify'),
  verify('VERIFY(10)', C.VERIFY_10, 10, CDB10),
  verify('VERIFY(12)', C.VERIFY_12, 12, CDB12),
  verify('VERIFY(16)', C.VERIFY_16, 16, CDB16),
  preFetch('PRE-FETCH(10)', C.PRE_FETCH_10, 10, CDB10),
  preFetch('PRE-FETCH(16)', C.PRE_FETCH_16, 16, CDB16),
  synchronizeCache('SYNCHRONIZE CACHE(10)', C.SYNCHRONIZE_CACHE_10, 10, CDB10),
  synchronizeCache('SYNCHRONIZE CACHE(16)', C.SYNCHRONIZE_CACHE_16, 16, CDB16),
  orWrite,
  writeAtomic,
  compareAndWrite,
]

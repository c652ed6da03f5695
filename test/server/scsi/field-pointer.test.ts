import t from 'tap'
import type { BlockDevice } from '../../../src/disk-formats/index.js'
import { COMMANDS, LogicalUnit, metricsClass, SCSI } from '../../../src/server/scsi/index.js'

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')

/** A 1 GiB device (2^21 blocks, more than WRITE SAME's 2^20) on which any I/O fails the test. */
function untouchable(t: { fail(msg: string): void }): BlockDevice {
  const io = (name: string) => async () => {
    t.fail(`${name} issued for a CDB that should have been refused`)
    throw new Error(name)
  }
  return { size: 1 << 30, readOnly: false, read: io('read'), write: io('write'), writeZeroes: io('writeZeroes'), discard: io('discard'), flush: io('flush'), blockStatus: io('blockStatus'), close: async () => {} }
}

/**
 * The sense-key specific bytes of INVALID FIELD IN CDB (SPC-4 4.5.2.4.2): SKSV and C/D set, no
 * bit pointer, the field pointer at the count field's first byte. READ/WRITE(6) and the 10-byte
 * READ, WRITE, WRITE AND VERIFY and VERIFY cannot ask for more than the maximum transfer (65536
 * blocks): their count fields hold at most 256 and 65535.
 */
const oversized: [string, string, number][] = [
  ['READ(12)', 'a8 00 00000000 00010001 00 00', 6],
  ['READ(16)', '88 00 0000000000000000 00010001 00 00', 10],
  ['WRITE(12)', 'aa 00 00000000 00010001 00 00', 6],
  ['WRITE(16)', '8a 00 0000000000000000 00010001 00 00', 10],
  ['WRITE AND VERIFY(12)', 'ae 00 00000000 00010001 00 00', 6],
  ['WRITE AND VERIFY(16)', '8e 00 0000000000000000 00010001 00 00', 10],
  ['VERIFY(12) BYTCHK=1', 'af 02 00000000 00010001 00 00', 6],
  ['VERIFY(16) BYTCHK=1', '8f 02 0000000000000000 00010001 00 00', 10],
  ['ORWRITE(16)', '8b 00 0000000000000000 00010001 00 00', 10],
  ['COMPARE AND WRITE of 129 blocks', '89 00 0000000000000000 000000 81 00 00', 13],
  ['WRITE SAME(16) of 2^20 + 1 blocks', '93 00 0000000000000000 00100001 00 00', 10],
  ['WRITE SAME(10) of 0 blocks (to the end: 2^21)', '41 00 00000000 00 0000 00', 7],
  ['WRITE ATOMIC(16) of 9 blocks (not whole pages)', '9c 00 0000000000000000 0000 0009 00 00', 12],
  ['WRITE ATOMIC(16) with an ATOMIC BOUNDARY (none is offered)', '9c 00 0000000000000000 0008 0008 00 00', 10],
]

t.test('an oversized transfer of every READ/WRITE variant names its own count field', async (t) => {
  const u = new LogicalUnit(untouchable(t), { serial: 'fp' })
  for (const [name, cdb, byte] of oversized) {
    const r = await u.execute(hex(cdb), null, 'iqn.2026-11.test:one')
    t.equal(r.status, SCSI.CHECK_CONDITION, `${name}: CHECK CONDITION`)
    const s = r.sense!
    t.same([s[2] & 0x0f, s[12], s[13]], [SCSI.ILLEGAL_REQUEST, 0x24, 0x00], `${name}: INVALID FIELD IN CDB`)
    t.equal(s[15], 0x80 | 0x40, `${name}: SKSV and C/D set, no bit pointer`)
    t.equal(s.readUInt16BE(16), byte, `${name}: field pointer at byte ${byte}`)
  }
})

t.test('REPORT SUPPORTED OPERATION CODES and the metrics classes come from the table', async (t) => {
  const u = new LogicalUnit(untouchable(t), { serial: 'fp' })
  const d = (await u.execute(hex('a3 0c 00 00 0000 00010000 00 00'), null, 'iqn.2026-11.test:one')).dataIn!
  const listed: string[] = []
  for (let o = 4; o < 4 + d.readUInt32BE(0); o += 8) listed.push(`${d[o]}/${d[o + 5] & 1 ? d.readUInt16BE(o + 2) : '-'}/${d.readUInt16BE(o + 6)}`)
  const rows = COMMANDS.map((c) => `${c.opcode}/${c.serviceAction ?? '-'}/${c.cdbLength}`)
  t.same([...listed].sort(), [...rows].sort(), 'one descriptor per row: opcode, service action, CDB length')
  t.equal(new Set(rows).size, rows.length, 'no command twice')
  t.same(
    [0x28, 0xaa, 0x8e, 0x35, 0x93, 0x42, 0x89, 0x83, 0x2f, 0xc7].map(metricsClass),
    ['read', 'write', 'write_verify', 'flush', 'write_same', 'unmap', 'compare_and_write', 'xcopy', 'other', 'other'],
  )
})

import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmp, pattern, rng } from '../../helpers/peers.js'
import { createVmdk, openVmdk, RawFile } from '../../../src/disk-formats/index.js'
import { LogicalUnit, SCSI } from '../../../src/server/scsi/index.js'
import { readOnly } from '../../../src/disk-formats/filters/index.js'

const I1 = 'iqn.2026-11.test:one'
const I2 = 'iqn.2026-11.test:two'

async function lu(t: { teardown(fn: () => unknown): void }, sizeBytes = 8 << 20) {
  const d = tmp(t)
  const f = join(d, 'lu.vmdk')
  await createVmdk(f, { size: sizeBytes })
  const dev = await openVmdk(f)
  t.teardown(() => dev.close())
  return new LogicalUnit(dev, { serial: 'tandem-test-0001' })
}

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')
/** sense key / ASC / ASCQ of a result */
const sk = (r: { sense?: Buffer }) => (r.sense ? [r.sense[2] & 0xf, r.sense[12], r.sense[13]] : null)

t.test('INQUIRY: standard data and VPD pages', async (t) => {
  const u = await lu(t)
  const std = await u.execute(hex('12 00 00 00 60 00'), null, I1)
  t.equal(std.status, SCSI.GOOD)
  t.equal(std.dataIn!.length, 96)
  t.equal(std.dataIn!.readUInt16BE(64), 0x04c0, 'claims SBC-3')
  t.equal(std.dataIn!.toString('ascii', 8, 16), 'TANDEM  ')
  t.equal(std.dataIn![2], 6, 'SPC-4')
  const pages = await u.execute(hex('12 01 00 00 ff 00'), null, I1)
  t.same([...pages.dataIn!.subarray(4)], [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2])
  const serial = await u.execute(hex('12 01 80 00 ff 00'), null, I1)
  t.equal(serial.dataIn!.toString('ascii', 4), 'tandem-test-0001')
  const ids = (await u.execute(hex('12 01 83 00 ff 00'), null, I1)).dataIn!
  t.equal(ids[4 + 1] & 0x0f, 3, 'first designator is NAA')
  t.equal(ids[8] >> 4, 6, 'NAA 6')
  const bl = (await u.execute(hex('12 01 b0 00 ff 00'), null, I1)).dataIn!
  t.equal(bl.readUInt16BE(2), 0x3c)
  t.equal(bl[5], 128, 'maximum COMPARE AND WRITE length')
  const lbp = (await u.execute(hex('12 01 b2 00 ff 00'), null, I1)).dataIn!
  t.equal(lbp[5] & 0x80, 0x80, 'LBPU: UNMAP supported')
  t.same(sk(await u.execute(hex('12 00 83 00 ff 00'), null, I1)), [5, 0x24, 0], 'page code without EVPD: invalid field')
  t.same(sk(await u.execute(hex('12 01 42 00 ff 00'), null, I1)), [5, 0x24, 0], 'unknown VPD page')
  t.equal((await u.execute(hex('12 00 00 00 05 00'), null, I1)).dataIn!.length, 5, 'allocation length truncates')
})

t.test('READ CAPACITY 10/16', async (t) => {
  const u = await lu(t)
  const rc10 = (await u.execute(hex('25 00 00000000 0000 00 00'), null, I1)).dataIn!
  t.equal(rc10.readUInt32BE(0), (8 << 20) / 512 - 1)
  t.equal(rc10.readUInt32BE(4), 512)
  const rc16 = (await u.execute(hex('9e 10 0000000000000000 00000020 00 00'), null, I1)).dataIn!
  t.equal(Number(rc16.readBigUInt64BE(0)), (8 << 20) / 512 - 1)
  t.equal(rc16[14] & 0xc0, 0xc0, 'LBPME and LBPRZ')
})

t.test('READ CAPACITY of a device with no blocks: NOT READY, MEDIUM NOT PRESENT (not a hardware error from a negative last LBA)', async (t) => {
  const d = tmp(t)
  const f = join(d, 'empty.raw')
  writeFileSync(f, '')
  const dev = await RawFile.open(f)
  t.teardown(() => dev.close())
  const u = new LogicalUnit(dev, { serial: 'empty' })
  t.same(sk(await u.execute(hex('25 00 00000000 0000 00 00'), null, I1)), [2, 0x3a, 0], 'READ CAPACITY(10)')
  t.same(sk(await u.execute(hex('9e 10 0000000000000000 00000020 00 00'), null, I1)), [2, 0x3a, 0], 'READ CAPACITY(16)')
})

t.test('READ/WRITE 6/10/12/16 round trips; range and field errors', async (t) => {
  const u = await lu(t)
  const data = pattern(4 * 512, 1)
  t.equal((await u.execute(hex('2a 00 00000010 00 0004 00'), data, I1)).status, SCSI.GOOD)
  const r10 = await u.execute(hex('28 00 00000010 00 0004 00'), null, I1)
  t.ok(r10.dataIn!.equals(data), 'READ(10)')
  t.ok((await u.execute(hex('88 00 0000000000000010 00000004 00 00'), null, I1)).dataIn!.equals(data), 'READ(16)')
  t.ok((await u.execute(hex('a8 00 00000010 00000004 00 00'), null, I1)).dataIn!.equals(data), 'READ(12)')
  t.ok((await u.execute(hex('08 00 00 10 04 00'), null, I1)).dataIn!.equals(data), 'READ(6)')
  const d6 = pattern(512, 2)
  t.equal((await u.execute(hex('0a 00 00 20 01 00'), d6, I1)).status, SCSI.GOOD, 'WRITE(6)')
  t.ok((await u.execute(hex('28 00 00000020 00 0001 00'), null, I1)).dataIn!.equals(d6))
  const last = (8 << 20) / 512 - 1
  t.same(sk(await u.execute(hex(`28 00 ${last.toString(16).padStart(8, '0')} 00 0002 00`), null, I1)), [5, 0x21, 0], 'past the end: LBA out of range')
  t.same(sk(await u.execute(hex('88 00 ffffffffffffffff 00000001 00 00'), null, I1)), [5, 0x21, 0])
  t.same(sk(await u.execute(hex('28 e0 00000000 00 0001 00'), null, I1)), [5, 0x24, 0], 'RDPROTECT: no protection information')
  t.same(sk(await u.execute(hex('28 00 00 00 00 00'), null, I1)), [5, 0x24, 0], 'a READ(10) CDB of 6 bytes')
  t.same(sk(await u.execute(hex('28 00 00 00'), null, I1)), [5, 0x20, 0], 'a CDB shorter than any command')
  t.same(sk(await u.execute(hex('c7 00 00 00 00 00'), null, I1)), [5, 0x20, 0], 'unknown opcode')
  t.same(sk(await u.execute(hex('2a 00 00000000 00 0004 00'), Buffer.alloc(512), I1)), [5, 0x1a, 0], 'too little data-out')
  t.same(sk(await u.execute(hex('88 00 0000000000000000 00100000 00 00'), null, I1)), [5, 0x24, 0], 'more than the maximum transfer')
})

t.test('COMPARE AND WRITE: success, miscompare with the offset, atomic against other commands', async (t) => {
  const u = await lu(t)
  const old = pattern(512, 3)
  await u.execute(hex('2a 00 00000005 00 0001 00'), old, I1)
  const next = pattern(512, 4)
  const caw = hex('89 00 0000000000000005 000000 01 00 00')
  t.equal((await u.execute(caw, Buffer.concat([old, next]), I1)).status, SCSI.GOOD)
  t.ok((await u.execute(hex('28 00 00000005 00 0001 00'), null, I1)).dataIn!.equals(next))
  const wrong = Buffer.from(next)
  wrong[100] ^= 1
  const mis = await u.execute(caw, Buffer.concat([wrong, old]), I1)
  t.equal(mis.status, SCSI.CHECK_CONDITION)
  t.same(sk(mis), [0x0e, 0x1d, 0], 'MISCOMPARE')
  t.equal(mis.sense!.readUInt32BE(3), 100, 'INFORMATION: offset of the first differing byte')
  t.ok((await u.execute(hex('28 00 00000005 00 0001 00'), null, I1)).dataIn!.equals(next), 'nothing written on miscompare')
  t.same(sk(await u.execute(caw, next, I1)), [5, 0x1a, 0], 'data-out must be twice the blocks')
  // 200 hosts race to increment a counter with compare-and-write: exactly one wins each round
  const counter = (v: number) => {
    const b = Buffer.alloc(512)
    b.writeUInt32BE(v)
    return b
  }
  await u.execute(hex('2a 00 00000007 00 0001 00'), counter(0), I1)
  const cawAt7 = hex('89 00 0000000000000007 000000 01 00 00')
  let wins = 0
  const r = rng(1)
  await Promise.all(
    Array.from({ length: 200 }, async (_, i) => {
      for (;;) {
        const cur = (await u.execute(hex('28 00 00000007 00 0001 00'), null, `h${i}`)).dataIn!
        const v = cur.readUInt32BE(0)
        await new Promise((res) => setImmediate(res))
        const res = await u.execute(cawAt7, Buffer.concat([counter(v), counter(v + 1)]), `h${i}`)
        if (res.status === SCSI.GOOD) {
          wins++
          return
        }
        if (r() % 2) await new Promise((res2) => setImmediate(res2))
      }
    }),
  )
  const final = (await u.execute(hex('28 00 00000007 00 0001 00'), null, I1)).dataIn!.readUInt32BE(0)
  t.equal(final, 200, 'no lost update: 200 increments')
  t.equal(wins, 200)
})

t.test('WRITE SAME, UNMAP and GET LBA STATUS', async (t) => {
  const u = await lu(t)
  const lbaStatus = async (lba: number) => {
    const d = (await u.execute(hex(`9e 12 ${lba.toString(16).padStart(16, '0')} 00001000 00 00`), null, I1)).dataIn!
    const out: [number, number, number][] = []
    for (let o = 8; o < d.length; o += 16) out.push([Number(d.readBigUInt64BE(o)), d.readUInt32BE(o + 8), d[o + 12]])
    return out
  }
  t.same(await lbaStatus(0), [[0, 16384, 1]], 'a new disk is all deallocated')
  const block = pattern(512, 5)
  t.equal((await u.execute(hex('41 00 00000080 00 0100 00'), block, I1)).status, SCSI.GOOD, 'WRITE SAME(10) 256 blocks')
  const back = (await u.execute(hex('28 00 00000080 00 0100 00'), null, I1)).dataIn!
  t.ok(back.equals(Buffer.concat(Array.from({ length: 256 }, () => block))))
  t.same((await lbaStatus(0)).slice(0, 2), [[0, 128, 1], [128, 256, 0]], 'mapped where written')
  t.equal((await u.execute(hex('41 00 00003f00 00 0000 00'), block, I1)).status, SCSI.GOOD, 'zero blocks: to the end of the medium')
  t.ok((await u.execute(hex('28 00 00003fff 00 0001 00'), null, I1)).dataIn!.equals(block), 'the last block was written')
  await u.execute(hex('41 00 00003f00 00 0000 00'), Buffer.alloc(512), I1)
  t.equal((await u.execute(hex('41 08 00000080 00 0001 00'), block, I1)).status, SCSI.GOOD, 'UNMAP bit with non-zero data: deallocated')
  t.ok((await u.execute(hex('28 00 00000080 00 0001 00'), null, I1)).dataIn!.every((b) => b === 0), 'reads zero (LBPRZ)')
  await u.execute(hex('41 00 00000080 00 0001 00'), block, I1)
  // UNMAP 128 blocks at 128: they read back as zero (LBPRZ)
  const param = hex('0016 0010 00000000 0000000000000080 00000080 00000000')
  t.equal((await u.execute(hex('42 00 00 00 00 00 00 0018 00'), param, I1)).status, SCSI.GOOD)
  t.ok((await u.execute(hex('28 00 00000080 00 0080 00'), null, I1)).dataIn!.every((b) => b === 0), 'unmapped blocks read zero')
  const bad = hex('0016 0010 00000000 00000000ffffff00 00000080 00000000')
  t.same(sk(await u.execute(hex('42 00 00 00 00 00 00 0018 00'), bad, I1)), [5, 0x21, 0], 'UNMAP past the end')
  t.same(sk(await u.execute(hex('42 00 00 00 00 00 00 0018 00'), hex('0016 0011 00000000'), I1)), [5, 0x1a, 0], 'bad descriptor length')
  t.same(sk(await u.execute(hex('9e 12 0000000000004000 00001000 00 00'), null, I1)), [5, 0x21, 0], 'GET LBA STATUS past the end')
})

t.test('VERIFY, ORWRITE, SYNCHRONIZE CACHE, PRE-FETCH, MODE SENSE, REPORT LUNS, opcodes, RESERVE', async (t) => {
  const u = await lu(t)
  const data = pattern(1024, 6)
  await u.execute(hex('2a 00 00000002 00 0002 00'), data, I1)
  t.equal((await u.execute(hex('2f 02 00000002 00 0002 00'), data, I1)).status, SCSI.GOOD, 'VERIFY BYTCHK=1 equal')
  const d2 = Buffer.from(data)
  d2[700] ^= 0xff
  const v = await u.execute(hex('2f 02 00000002 00 0002 00'), d2, I1)
  t.same(sk(v), [0x0e, 0x1d, 0])
  t.equal(v.sense!.readUInt32BE(3), 700)
  const orw = Buffer.alloc(512, 0x0f)
  await u.execute(hex('2a 00 00000009 00 0001 00'), Buffer.alloc(512, 0xf0), I1)
  t.equal((await u.execute(hex('8b 00 0000000000000009 00000001 00 00'), orw, I1)).status, SCSI.GOOD)
  t.ok((await u.execute(hex('28 00 00000009 00 0001 00'), null, I1)).dataIn!.every((b) => b === 0xff), 'ORWRITE')
  t.equal((await u.execute(hex('35 00 00000000 00 0000 00'), null, I1)).status, SCSI.GOOD, 'SYNCHRONIZE CACHE(10)')
  t.equal((await u.execute(hex('34 00 00000000 00 0010 00'), null, I1)).status, SCSI.CONDITION_MET, 'PRE-FETCH')
  const ms = (await u.execute(hex('1a 00 3f 00 ff 00'), null, I1)).dataIn!
  t.equal(ms[0], ms.length - 1, 'MODE SENSE(6) length')
  t.equal(ms[3], 8, 'block descriptor')
  t.same(sk(await u.execute(hex('1a 00 c8 00 ff 00'), null, I1)), [5, 0x39, 0], 'saved values not supported')
  const luns = (await u.execute(hex('a0 00 00 000000 00000100 00 00'), null, I1)).dataIn!
  t.equal(luns.readUInt32BE(0), 8, 'one LUN')
  t.same(sk(await u.execute(hex('a0 00 00 000000 00000004 00 00'), null, I1)), [5, 0x24, 0], 'allocation length below 16')
  const ops = (await u.execute(hex('a3 0c 00 00 0000 00001000 00 00'), null, I1)).dataIn!
  t.ok(ops.readUInt32BE(0) / 8 >= 30, 'REPORT SUPPORTED OPERATION CODES lists every command')
  const one = (await u.execute(hex('a3 0c 01 28 0000 00000100 00 00'), null, I1)).dataIn!
  t.equal(one[1] & 7, 3, 'READ(10) supported')
  t.equal(one.readUInt16BE(2), 10)
  t.equal((await u.execute(hex('16 00 00 00 00 00'), null, I1)).status, SCSI.GOOD, 'RESERVE(6)')
  t.equal((await u.execute(hex('28 00 00000000 00 0001 00'), null, I2)).status, SCSI.RESERVATION_CONFLICT, 'another initiator conflicts')
  t.equal((await u.execute(hex('12 00 00 00 24 00'), null, I2)).status, SCSI.GOOD, 'INQUIRY is allowed')
  t.equal((await u.execute(hex('17 00 00 00 00 00'), null, I1)).status, SCSI.GOOD, 'RELEASE(6)')
  t.equal((await u.execute(hex('28 00 00000000 00 0001 00'), null, I2)).status, SCSI.GOOD)
})

t.test('a read-only device: writes get DATA PROTECT / WRITE PROTECTED', async (t) => {
  const d = tmp(t)
  const f = join(d, 'ro.raw')
  const raw = await RawFile.create(f, 1 << 20)
  await raw.close()
  const dev = await RawFile.open(f, { readOnly: true })
  t.teardown(() => dev.close())
  const u = new LogicalUnit(readOnly(dev), { serial: 'ro' })
  t.same(sk(await u.execute(hex('2a 00 00000000 00 0001 00'), Buffer.alloc(512), I1)), [7, 0x27, 0])
  const ms = (await u.execute(hex('5a 00 3f 00 00 00 00 00ff 00'), null, I1)).dataIn!
  t.equal(ms[3] & 0x80, 0x80, 'MODE SENSE shows WP')
})

t.test('random CDBs only ever give a status, never a crash', async (t) => {
  const u = await lu(t, 1 << 20)
  const r = rng(99)
  const statuses = new Set<number>()
  let badSense = 0
  for (let i = 0; i < 5000; i++) {
    const len = [6, 10, 12, 16][r() % 4]
    const cdb = pattern(len, r())
    if (r() % 3 === 0) cdb[0] = [0x28, 0x2a, 0x88, 0x8a, 0x89, 0x41, 0x93, 0x42, 0x12, 0x9e, 0xa3, 0x1a][r() % 12]
    const out = r() % 2 ? pattern(r() % 4096, r()) : null
    const res = await u.execute(cdb, out, I1)
    statuses.add(res.status)
    if (res.status === SCSI.CHECK_CONDITION && res.sense?.length !== 18) badSense++
  }
  t.ok(statuses.has(SCSI.CHECK_CONDITION))
  t.equal(badSense, 0, 'every CHECK CONDITION carries 18 bytes of fixed-format sense')
})

t.test('persistent reservations: register, reserve, conflicts by type, preempt, release', async (t) => {
  const u = await lu(t)
  const N1 = 'iqn.a,i,0x000000000001'
  const N2 = 'iqn.b,i,0x000000000002'
  const prout = (sa: number, type: number, key: bigint, saKey: bigint, nexus: string) => {
    const p = Buffer.alloc(24)
    p.writeBigUInt64BE(key, 0)
    p.writeBigUInt64BE(saKey, 8)
    return u.execute(hex(`5f ${sa.toString(16).padStart(2, '0')} ${type.toString(16).padStart(2, '0')} 00 00 00000018 00`), p, nexus)
  }
  const read = (n: string) => u.execute(hex('28 00 00000000 00 0001 00'), null, n)
  const write = (n: string) => u.execute(hex('2a 00 00000000 00 0001 00'), Buffer.alloc(512), n)
  t.equal((await prout(0, 0, 0n, 0xaan, N1)).status, SCSI.GOOD, 'register N1')
  t.equal((await prout(0, 0, 0n, 0xbbn, N2)).status, SCSI.GOOD, 'register N2')
  t.equal((await prout(0, 0, 0x99n, 0xccn, N2)).status, SCSI.RESERVATION_CONFLICT, 'wrong key')
  const keys = (await u.execute(hex('5e 00 00 00 00 00 00 1000 00'), null, N1)).dataIn!
  t.equal(keys.readUInt32BE(4), 16, 'READ KEYS: two keys')
  t.equal((await prout(1, 1, 0xaan, 0n, N1)).status, SCSI.GOOD, 'N1 reserves WRITE EXCLUSIVE')
  t.equal((await read(N2)).status, SCSI.GOOD, 'others may read')
  t.equal((await write(N2)).status, SCSI.RESERVATION_CONFLICT, 'others may not write')
  t.equal((await write(N1)).status, SCSI.GOOD, 'the holder writes')
  const rr = (await u.execute(hex('5e 01 00 00 00 00 00 1000 00'), null, N2)).dataIn!
  t.equal(rr.readBigUInt64BE(8), 0xaan, 'READ RESERVATION: the holder\'s key')
  t.equal(rr[21], 1)
  t.equal((await prout(4, 3, 0xbbn, 0xaan, N2)).status, SCSI.GOOD, 'N2 preempts N1 as EXCLUSIVE ACCESS')
  t.equal((await read(N1)).status, SCSI.RESERVATION_CONFLICT, 'N1 (unregistered now) cannot even read')
  t.same(sk(await prout(2, 1, 0xbbn, 0n, N2)), [5, 0x26, 4], 'release with the wrong type')
  t.equal((await prout(2, 3, 0xbbn, 0n, N2)).status, SCSI.GOOD, 'release')
  t.equal((await read(N1)).status, SCSI.GOOD)
  t.equal((await u.execute(hex('16 00 00 00 00 00'), null, N1)).status, SCSI.RESERVATION_CONFLICT, 'RESERVE(6) conflicts while PR registrations exist (CRH)')
  const full = (await u.execute(hex('5e 03 00 00 00 00 00 1000 00'), null, N1)).dataIn!
  t.equal(full.readUInt32BE(4) > 0, true, 'READ FULL STATUS lists the registration')
  t.match(full.toString('latin1'), /iqn\.b,i,0x000000000002/)
})

t.test('unit attentions: LUN and target reset, preempted registrations; INQUIRY passes, REQUEST SENSE clears', async (t) => {
  const u = await lu(t)
  const N1 = 'iqn.a,i,0x000000000001'
  const N2 = 'iqn.b,i,0x000000000002'
  u.nexusJoined(N1)
  u.nexusJoined(N2)
  const tur = (n: string) => u.execute(hex('00 00 00 00 00 00'), null, n)
  t.equal((await tur(N1)).status, SCSI.GOOD, 'no attention after login')
  u.reset('lun')
  t.equal((await u.execute(hex('12 00 00 00 60 00'), null, N1)).status, SCSI.GOOD, 'INQUIRY is not stopped by a unit attention')
  t.equal((await u.execute(hex('a0 00 00 00 00 00 00 00 00 10 00 00'), null, N1)).status, SCSI.GOOD, 'nor REPORT LUNS')
  t.same(sk(await tur(N1)), [6, 0x29, 0x03], 'the nexus that reset gets BUS DEVICE RESET FUNCTION OCCURRED')
  t.equal((await tur(N1)).status, SCSI.GOOD, 'reported once')
  const rs = await u.execute(hex('03 00 00 00 12 00'), null, N2)
  t.equal(rs.status, SCSI.GOOD)
  t.same([rs.dataIn![2] & 0xf, rs.dataIn![12], rs.dataIn![13]], [6, 0x29, 0x03], 'REQUEST SENSE returns the attention as its data')
  t.equal((await tur(N2)).status, SCSI.GOOD, 'and clears it')
  u.reset('target')
  t.same(sk(await u.execute(hex('28 00 00000000 00 0001 00'), null, N2)), [6, 0x29, 0x00], 'target reset: POWER ON, RESET')
  // a registration preempted by another nexus
  const prout = (sa: number, type: number, key: bigint, saKey: bigint, nexus: string) => {
    const p = Buffer.alloc(24)
    p.writeBigUInt64BE(key, 0)
    p.writeBigUInt64BE(saKey, 8)
    return u.execute(hex(`5f ${sa.toString(16).padStart(2, '0')} ${type.toString(16).padStart(2, '0')} 00 00 00000018 00`), p, nexus)
  }
  await tur(N1)
  t.equal((await prout(0, 0, 0n, 0xaan, N1)).status, SCSI.GOOD)
  t.equal((await prout(0, 0, 0n, 0xbbn, N2)).status, SCSI.GOOD)
  t.equal((await prout(1, 1, 0xaan, 0n, N1)).status, SCSI.GOOD)
  t.equal((await prout(4, 1, 0xbbn, 0xaan, N2)).status, SCSI.GOOD, 'N2 preempts N1')
  t.same(sk(await tur(N1)), [6, 0x2a, 0x05], 'N1 is told: REGISTRATIONS PREEMPTED')
  t.equal((await tur(N2)).status, SCSI.GOOD, 'the preempting nexus is not')
  t.equal((await prout(3, 0, 0xbbn, 0n, N2)).status, SCSI.GOOD, 'CLEAR')
  u.nexusLost(N1)
  u.reset('lun')
  u.nexusJoined(N1)
  t.equal((await tur(N1)).status, SCSI.GOOD, 'a nexus that was gone during the reset has nothing pending')
})

t.test('EXTENDED COPY (LID1) within the LU, RECEIVE COPY RESULTS, and bad parameter lists', async (t) => {
  const u = await lu(t)
  const N = 'iqn.a,i,0x000000000001'
  const ident = (await u.execute(hex('12 01 83 00 ff 00'), null, N)).dataIn!.subarray(4, 24) // the NAA designation descriptor
  t.equal(ident[1] & 0x0f, 3, 'NAA')
  const cscd = (opts: { type?: number; nul?: boolean; luid?: number } = {}) => {
    const d = Buffer.alloc(32)
    d[0] = opts.type ?? 0xe4
    d[1] = ((opts.luid ?? 0) << 6) | (opts.nul ? 0x20 : 0)
    ident.copy(d, 4)
    d.writeUIntBE(512, 29, 3)
    return d
  }
  const segment = (src: number, dst: number, blocks: number, srcLba: number, dstLba: number, type = 0x02) => {
    const s = Buffer.alloc(28)
    s[0] = type
    s.writeUInt16BE(24, 2)
    s.writeUInt16BE(src, 4)
    s.writeUInt16BE(dst, 6)
    s.writeUInt16BE(blocks, 10)
    s.writeBigUInt64BE(BigInt(srcLba), 12)
    s.writeBigUInt64BE(BigInt(dstLba), 20)
    return s
  }
  const list = (listId: number, cscds: Buffer[], segs: Buffer[], usage = 0) => {
    const h = Buffer.alloc(16)
    h[0] = listId
    h[1] = usage << 3
    const c = Buffer.concat(cscds)
    const s = Buffer.concat(segs)
    h.writeUInt16BE(c.length, 2)
    h.writeUInt32BE(s.length, 8)
    return Buffer.concat([h, c, s])
  }
  const xcopy = (p: Buffer, plen = p.length) => {
    const cdb = Buffer.alloc(16)
    cdb[0] = 0x83
    cdb.writeUInt32BE(plen, 10)
    return u.execute(cdb, p, N)
  }
  const rcr = (sa: number, listId = 0) => {
    const cdb = Buffer.alloc(16)
    cdb[0] = 0x84
    cdb[1] = sa
    cdb[2] = listId
    cdb.writeUInt32BE(1024, 10)
    return u.execute(cdb, null, N)
  }
  const data = pattern(64 * 512, 77)
  await u.execute(hex('2a 00 00000064 00 0040 00'), data, N) // 64 blocks at LBA 100
  t.same(sk(await rcr(0, 5)), [5, 0x24, 0], 'no status held for list 5 yet')
  const r = await xcopy(list(5, [cscd()], [segment(0, 0, 64, 100, 5000)]))
  t.equal(r.status, SCSI.GOOD, 'copy of 64 blocks from LBA 100 to 5000')
  t.same((await u.execute(hex('28 00 00001388 00 0040 00'), null, N)).dataIn, data, 'the blocks are there')
  const st = (await rcr(0, 5)).dataIn!
  t.equal(st[4], 1, 'COPY STATUS: completed, no errors')
  t.equal(st.readUInt16BE(5), 1, 'one segment processed')
  t.equal(st.readUInt32BE(8), 32, '32 KiB transferred')
  const op = (await rcr(3)).dataIn!
  t.equal(op.readUInt16BE(8), 8, 'OPERATING PARAMETERS: 8 CSCD descriptors')
  t.equal(op.readUInt16BE(10), 16, '16 segment descriptors')
  t.same([...op.subarray(44)], [0x02, 0xe4], 'implemented descriptor types')
  t.equal((await xcopy(Buffer.alloc(0), 0)).status, SCSI.GOOD, 'an empty parameter list does nothing')
  const good = list(1, [cscd()], [segment(0, 0, 8, 0, 8)])
  t.same(sk(await xcopy(good.subarray(0, 40), 40)), [5, 0x1a, 0], 'truncated: PARAMETER LIST LENGTH ERROR')
  t.same(sk(await xcopy(list(1, Array(9).fill(cscd()), [segment(0, 0, 8, 0, 8)]))), [5, 0x26, 0x06], 'TOO MANY TARGET DESCRIPTORS')
  t.same(sk(await xcopy(list(1, [cscd()], Array(17).fill(segment(0, 0, 8, 0, 8))))), [5, 0x26, 0x08], 'TOO MANY SEGMENT DESCRIPTORS')
  t.same(sk(await xcopy(list(1, [cscd({ type: 0xe0 })], [segment(0, 0, 8, 0, 8)]))), [5, 0x26, 0x07], 'an FC N_Port_Name CSCD is not supported')
  t.same(sk(await xcopy(list(1, [cscd()], [segment(0, 0, 8, 0, 8, 0x03)]))), [5, 0x26, 0x09], 'nor a stream segment')
  t.equal((await xcopy(list(1, [cscd({ luid: 3 })], [segment(0, 0, 8, 0, 8)]))).status, SCSI.GOOD, 'LU ID TYPE is not checked: the designator names the LU')
  t.same(sk(await xcopy(list(1, [cscd({ nul: true })], [segment(0, 0, 8, 0, 8)]))), [0x0a, 0x08, 0x04], 'a NUL CSCD: COPY ABORTED, UNREACHABLE COPY TARGET')
  t.same(sk(await xcopy(list(1, [cscd()], [segment(0, 1, 8, 0, 8)]))), [0x0a, 0x08, 0x04], 'a CSCD index past the list')
  const other = cscd()
  other[8 + 5] ^= 0xff
  t.same(sk(await xcopy(list(1, [other], [segment(0, 0, 8, 0, 8)]))), [0x0a, 0x08, 0x04], 'a designator of another LU')
  t.same(sk(await xcopy(list(7, [cscd()], [segment(0, 0, 8, 0, u.blocks - 4)]))), [0x0a, 0, 0], 'past the end: COPY ABORTED')
  t.equal((await rcr(0, 7)).dataIn![4], 2, 'its held status: completed with errors')
})

t.test('a transport expected length shorter than a WRITE transfer writes only its whole blocks (iSCSI overflow); the CDB given is not changed', async (t) => {
  const u = await lu(t)
  const zero = Buffer.alloc(1024)
  for (const cdb of [hex('0a 00 00 10 02 00'), hex('2a 00 00 00 00 10 00 00 02 00'), hex('aa 00 00 00 00 10 00 00 00 02 00 00'), hex('8a 00 00 00 00 00 00 00 00 10 00 00 00 02 00 00')]) {
    await u.dev.write(0x10 * 512, zero)
    const sent = Buffer.from(cdb)
    const r = await u.execute(cdb, pattern(512, cdb[0]), I1, 512)
    t.equal(r.status, SCSI.GOOD, `opcode 0x${cdb[0].toString(16)}: GOOD`)
    t.same(cdb, sent, 'the CDB is left as the initiator sent it')
    const back = await u.dev.read(0x10 * 512, 1024)
    t.ok(back.subarray(0, 512).equals(pattern(512, cdb[0])), 'the block the data covers is written')
    t.ok(back.subarray(512).equals(Buffer.alloc(512)), 'the block past the expected length is not')
  }
})

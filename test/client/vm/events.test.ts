import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import { EVENT, EventReplayer, MemoryEventSink, RecordHead, encodeEvent, encodeHeader, encodeRecord, recordBytes } from '../../../src/client/vm/events.js'
import { tmp } from '../../helpers/peers.js'

const sha = Buffer.alloc(32, 0xab)

t.test('golden bytes: the header and a record are laid out as SPEC.md says', async (t) => {
  t.same(
    [...encodeHeader(0x00100000, sha)],
    [...Buffer.from('TNDMVLOG', 'latin1'), 2, 0, 0, 0, 0x00, 0x00, 0x10, 0x00, ...sha],
    'magic, version 2, memory bytes, image SHA-256',
  )
  const into = Buffer.alloc(64, 0xee)
  const n = encodeEvent({ kind: EVENT.NET, arg: 2, instret: 1, value: 3, extra: Buffer.from([1, 2, 3]) }, into, 4)
  t.equal(n, recordBytes(3))
  t.equal(n, 24, '16 bytes, the extra padded to 4, the CRC')
  const head = [7, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 3, 0, 0, 0, 1, 2, 3, 0]
  const crc = Buffer.alloc(4)
  crc.writeUInt32LE(crc32c(Buffer.from(head)))
  t.same([...into.subarray(4, 4 + n)], [...head, ...crc], 'kind, arg, extra length, f64 instret, value, extra, CRC-32C')
  t.equal(into[3], 0xee, 'nothing written before the record')
  t.equal(into[4 + n], 0xee, 'nothing written after it')
})

t.test('the recording\'s record encoder writes what the RecordHead field table declares', async (t) => {
  // the reference: the table's generic encoder, the extra zero-padded to 4, the CRC-32C of it all
  const reference = (kind: number, arg: number, instret: number, value: number, extra: Buffer) => {
    const body = Buffer.alloc(RecordHead.size + ((extra.length + 3) & ~3))
    RecordHead.encode({ kind, arg, extraLength: extra.length, instret, value: value >>> 0 }, body)
    extra.copy(body, RecordHead.size)
    const crc = Buffer.alloc(4)
    crc.writeUInt32LE(crc32c(body))
    return Buffer.concat([body, crc])
  }
  const cases: [number, number, number, number, Buffer][] = [
    [EVENT.TIME, 3, 0, 0, Buffer.alloc(0)],
    // a device read's value as the machine passes it (signed 32-bit)
    [EVENT.ENTROPY, 0, 123456789, -1, Buffer.alloc(0)],
    [EVENT.RTC, 1, 2 ** 53 - 1, -0x80000000, Buffer.alloc(0)],
    [EVENT.IRQ, 7, 2 ** 40 + 3, 1, Buffer.alloc(0)],
  ]
  for (let len = 1; len <= 9; len++) cases.push([EVENT.NET, 0, 1000 + len, len, Buffer.alloc(len, 0x40 + len)])
  cases.push([EVENT.NET, 0, 7, 2048, Buffer.alloc(2048, 0x5a)], [10, 0xff, 9, 0x7fffffff, Buffer.alloc(252, 1)])
  for (const [kind, arg, instret, value, extra] of cases) {
    // into a used buffer: the padding must be written, not left as it was
    const into = Buffer.alloc(recordBytes(extra.length) + 8, 0xee)
    const n = encodeRecord(into, 3, kind, arg, instret, value, extra)
    t.same(into.subarray(3, 3 + n), reference(kind, arg, instret, value, extra), `kind ${kind} value ${value} instret ${instret} extra ${extra.length}`)
    t.ok(into[2] === 0xee && into[3 + n] === 0xee, 'nothing written outside the record')
  }
})

t.test('a recorded log reads back event by event', async (t) => {
  const rec = new MemoryEventSink(encodeHeader(4096, sha))
  rec.add(EVENT.TIME, 1, 10, 0xffffffff)
  rec.add(EVENT.NET, 0, 2 ** 40, 5, Buffer.from('hello'))
  rec.add(EVENT.END, 0, 2 ** 40 + 1, 0)
  const file = join(tmp(t), 'log')
  writeFileSync(file, rec.bytes())
  const rep = await EventReplayer.open(file, 4096, sha)
  t.same(rep.next(), { kind: EVENT.TIME, arg: 1, instret: 10, value: 0xffffffff })
  t.same(rep.next(), { kind: EVENT.NET, arg: 0, instret: 2 ** 40, value: 5, extra: Buffer.from('hello') })
  t.same(rep.next(), { kind: EVENT.END, arg: 0, instret: 2 ** 40 + 1, value: 0 })
  t.equal(rep.next(), null)
  await t.rejects(EventReplayer.open(file, 8192, sha), { message: /recorded with 4096 bytes of memory, this run has 8192/ })
  await t.rejects(EventReplayer.open(file, 4096, Buffer.alloc(32)), { message: /different guest image/ })
  const bad = Buffer.from(rec.bytes())
  bad[8] = 3
  writeFileSync(file, bad)
  await t.rejects(EventReplayer.open(file, 4096, sha), { message: /event log version 3, expected 1 or 2/ })
  bad.write('NOTALOG!', 0, 'latin1')
  writeFileSync(file, bad)
  await t.rejects(EventReplayer.open(file, 4096, sha), { message: /not a Tandem VM event log/ })
})

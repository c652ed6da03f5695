import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import { EVENT, EventReplayer, MemoryEventSink, encodeEvent, encodeHeader, recordBytes } from '../../../src/client/vm/events.js'
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

import t from 'tap'
import { defineStruct, U64_TOO_LARGE } from '../../src/disk-formats/struct.js'

t.test('big-endian fields encode in network order and decode back', async (t) => {
  const s = defineStruct({
    op: { offset: 0, type: 'u8' },
    len: { offset: 1, type: 'u24be' },
    flags: { offset: 4, type: 'u16be' },
    tag: { offset: 6, type: 'u32be' },
    offset: { offset: 10, type: 'u64be' },
    le: { offset: 18, type: 'u32' },
  })
  t.equal(s.size, 22)
  const v = { op: 0x21, len: 0x0a0b0c, flags: 0x0102, tag: 0xdeadbeef, offset: 2 ** 40 + 5, le: 0x01020304 }
  const b = s.encode(v)
  t.same([...b.subarray(0, 4)], [0x21, 0x0a, 0x0b, 0x0c])
  t.same([...b.subarray(4, 10)], [0x01, 0x02, 0xde, 0xad, 0xbe, 0xef])
  t.equal(b.readBigUInt64BE(10), BigInt(2 ** 40 + 5))
  t.equal(b.readUInt32LE(18), 0x01020304)
  t.same(s.decode(b), v)
})

t.test('a u64be above 2^53 decodes as U64_TOO_LARGE and encodes as all ones', async (t) => {
  const s = defineStruct({ x: { offset: 0, type: 'u64be' } })
  const b = Buffer.alloc(8, 0xff)
  t.equal(s.decode(b).x, U64_TOO_LARGE)
  t.same(s.encode({ x: U64_TOO_LARGE }), b)
})

t.test('a truncated buffer is Corrupt, not a RangeError', async (t) => {
  const s = defineStruct({ x: { offset: 0, type: 'u32be' } })
  t.throws(() => s.decode(Buffer.alloc(3)), { code: 'Corrupt' })
})

t.test('an f64 field is a little-endian double', async (t) => {
  const s = defineStruct({ kind: { offset: 0, type: 'u8' }, n: { offset: 4, type: 'f64' } })
  t.equal(s.size, 12)
  t.same([...s.encode({ kind: 5, n: 1 }).subarray(4, 12)], [0, 0, 0, 0, 0, 0, 0xf0, 0x3f], '1.0 is 0x3ff0000000000000, low byte first')
  t.same(s.decode(s.encode({ kind: 5, n: 2 ** 52 + 3 })), { kind: 5, n: 2 ** 52 + 3 })
})

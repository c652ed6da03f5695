import t from 'tap'
import { crc32c } from '../../src/disk-formats/crc32c.js'

t.test('crc32c known answer', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283)
})

t.test('crc32c continues from a previous value', async (t) => {
  const whole = crc32c(Buffer.from('123456789'))
  t.equal(crc32c(Buffer.from('6789'), crc32c(Buffer.from('12345'))), whole)
})

t.test('crc32c equals the bit-at-a-time definition at every length and alignment', async (t) => {
  const bitwise = (buf: Uint8Array, crc = 0) => {
    let c = ~crc >>> 0
    for (const b of buf) {
      c ^= b
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    }
    return ~c >>> 0
  }
  const data = Buffer.alloc(300)
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24
  let wrong = 0
  for (let start = 0; start < 9; start++) {
    for (let len = 0; len < 270; len++) {
      const part = data.subarray(start, start + len)
      if (crc32c(part, 0x12345678) !== bitwise(part, 0x12345678) || crc32c(part) !== bitwise(part)) wrong++
    }
  }
  t.equal(wrong, 0)
})

t.test('crc32c over a range of a buffer equals it over that subarray', async (t) => {
  const data = Buffer.alloc(100)
  for (let i = 0; i < data.length; i++) data[i] = (i * 2246822519) >>> 24
  let wrong = 0
  for (let from = 0; from < 12; from++) {
    for (let to = from; to < 90; to++) {
      if (crc32c(data, 0, from, to) !== crc32c(data.subarray(from, to)) || crc32c(data, 7, from, to) !== crc32c(data.subarray(from, to), 7)) wrong++
    }
  }
  t.equal(wrong, 0)
  t.equal(crc32c(data, 0, 0), crc32c(data), 'to defaults to the end')
})

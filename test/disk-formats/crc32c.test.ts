import t from 'tap'
import { crc32c } from '../../src/disk-formats/crc32c.js'

t.test('crc32c known answer', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283)
})

t.test('crc32c continues from a previous value', async (t) => {
  const whole = crc32c(Buffer.from('123456789'))
  t.equal(crc32c(Buffer.from('6789'), crc32c(Buffer.from('12345'))), whole)
})

import t from 'tap'
import { join } from 'node:path'
import { tmp, pattern } from '../../helpers/peers.js'
import { convert, openVmdk, type BlockDevice, type Extent } from '../../../src/disk-formats/index.js'

/** A memory device whose reads complete in reverse order of issue (the first read is the slowest). */
function reversingDevice(data: Buffer): BlockDevice {
  const waiting: (() => void)[] = []
  let issued = 0
  const release = () => {
    // once four reads are pending, complete them newest first
    while (waiting.length) waiting.pop()!()
  }
  return {
    size: data.length,
    readOnly: true,
    async read(offset, length) {
      issued++
      await new Promise<void>((res) => {
        waiting.push(res)
        if (waiting.length >= 4 || issued * (1 << 20) >= data.length) release()
      })
      return Buffer.from(data.subarray(offset, offset + length))
    },
    async blockStatus(offset, length): Promise<Extent[]> {
      return [{ offset, length, data: true, zero: false, depth: 0, present: true }]
    },
    write: async () => {},
    writeZeroes: async () => {},
    discard: async () => {},
    flush: async () => {},
    close: async () => {},
  }
}

t.test('stream output is correct when reads finish out of order', async (t) => {
  const d = tmp(t)
  const data = pattern(8 << 20, 5)
  data.fill(0, 2 << 20, 3 << 20) // a zero stretch that is skipped
  for (const subformat of ['streamOptimized', 'monolithicSparse'] as const) {
    const out = join(d, `${subformat}.vmdk`)
    await convert(reversingDevice(data), out, { to: 'vmdk', subformat, chunk: 1 << 20, parallel: 4 })
    const img = await openVmdk(out, { readOnly: true })
    t.ok((await img.read(0, img.size)).equals(data), `${subformat} reads back`)
    await img.close()
  }
})

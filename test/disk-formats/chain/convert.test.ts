import t from 'tap'
import { join } from 'node:path'
import { tmp, pattern } from '../../helpers/peers.js'
import { writeFile } from 'node:fs/promises'
import { convert, openVmdk, RawFile, type BlockDevice, type Extent } from '../../../src/disk-formats/index.js'

/** A read-only device of `size` bytes that are all data, read through `reads`. */
function dataDevice(size: number, reads: Pick<BlockDevice, 'read'> & { readInto?(offset: number, length: number, out: Buffer, at: number): Promise<void> }): BlockDevice {
  return {
    size,
    readOnly: true,
    ...reads,
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

/** A memory device whose reads complete in reverse order of issue (the first read is the slowest). */
function reversingDevice(data: Buffer): BlockDevice {
  const waiting: (() => void)[] = []
  let issued = 0
  const release = () => {
    // once four reads are pending, complete them newest first
    while (waiting.length) waiting.pop()!()
  }
  return dataDevice(data.length, {
    async read(offset, length) {
      issued++
      await new Promise<void>((res) => {
        waiting.push(res)
        if (waiting.length >= 4 || issued * (1 << 20) >= data.length) release()
      })
      return Buffer.from(data.subarray(offset, offset + length))
    },
  })
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

t.test('a raw source is read straight into convert\'s buffers (RawFile.readInto), never through read()', async (t) => {
  const d = tmp(t)
  const data = pattern(3 << 20, 7)
  data.fill(0, 1 << 20, (1 << 20) + 65536) // one all-zero grain, left out of the output
  const src = join(d, 'src.raw')
  await writeFile(src, data)
  const raw = await RawFile.open(src, { readOnly: true })
  raw.read = async () => {
    throw new Error('read() allocates a fresh buffer per chunk and copies it: convert must use readInto')
  }
  const into = Buffer.alloc(70000, 0xee)
  await raw.readInto(65536 + 100, 4000, into, 10)
  t.ok(into.subarray(10, 4010).equals(data.subarray(65636, 69636)), 'readInto fills out[at, at+length)')
  t.equal(into[9], 0xee, 'and nothing before it')
  t.equal(into[4010], 0xee, 'nor after it')
  for (const to of ['raw', 'vmdk'] as const) {
    const out = join(d, `out.${to}`)
    await convert(raw, out, { to, chunk: 1 << 20 })
    const img = to === 'raw' ? await RawFile.open(out, { readOnly: true }) : await openVmdk(out, { readOnly: true })
    t.ok((await img.read(0, data.length)).equals(data), `${to} output reads back`)
    await img.close()
  }
  await raw.close()
})

t.test('a failed convert rejects only once every worker has ended, and takes no chunk after the failure', async (t) => {
  const d = tmp(t)
  const size = 8 << 20
  let failedAt = 0
  let slowEnded = false
  const lateStarts: number[] = []
  const dev = dataDevice(size, {
    read: async (_o, n) => Buffer.alloc(n),
    async readInto(offset, length, out, at) {
      if (failedAt) lateStarts.push(offset)
      if (offset === 0) {
        await new Promise((r) => setTimeout(r, 10))
        failedAt = Date.now()
        throw new Error('EIO on the first chunk')
      }
      await new Promise((r) => setTimeout(r, 150))
      out.fill(1, at, at + length)
      slowEnded = true
    },
  })
  await t.rejects(convert(dev, join(d, 'out.raw'), { to: 'raw', chunk: 1 << 20, parallel: 2 }), /EIO on the first chunk/)
  t.ok(slowEnded, 'the other worker\'s read had ended')
  t.same(lateStarts, [], 'no read started after the failure')
})

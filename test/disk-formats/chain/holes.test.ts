import t from 'tap'
import { closeSync, openSync, statSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { needs, sh, tandem, tmp, pattern } from '../../helpers/peers.js'
import { convert, createVmdk, openImage, openVmdk, RawFile, type BlockDevice } from '../../../src/disk-formats/index.js'

const qemu = needs('qemu-img', 'qemu-io')
const GiB = 2 ** 30
const TiB = 2 ** 40

/**
 * `dev` with its reads counted; a read past `limit` bytes in all fails, so a convert that reads
 * through holes stops at once instead of reading terabytes of zeros.
 */
function counted(dev: BlockDevice, limit: number): BlockDevice & { bytesRead: number; statusCalls: number } {
  const c = {
    bytesRead: 0,
    statusCalls: 0,
    size: dev.size,
    readOnly: dev.readOnly,
    async read(offset: number, length: number) {
      c.bytesRead += length
      if (c.bytesRead > limit) throw new Error(`read ${c.bytesRead} bytes, more than the ${limit} that hold data`)
      return dev.read(offset, length)
    },
    blockStatus(offset: number, length: number) {
      c.statusCalls++
      return dev.blockStatus(offset, length)
    },
    write: dev.write.bind(dev),
    writeZeroes: dev.writeZeroes.bind(dev),
    discard: dev.discard.bind(dev),
    flush: dev.flush.bind(dev),
    close: dev.close.bind(dev),
  }
  return c
}

/** Writes `data` at `offset` of a file, leaving the rest a hole. */
function poke(path: string, offset: number, data: Buffer): void {
  const fd = openSync(path, 'r+')
  try {
    writeSync(fd, data, 0, data.length, offset)
  } finally {
    closeSync(fd)
  }
}

t.test('convert of a 4 TiB monolithicFlat disk with 512 bytes written reads only the data', async (t) => {
  const d = tmp(t)
  const src = join(d, 'flat.vmdk')
  await createVmdk(src, { size: 4 * TiB, subformat: 'monolithicFlat' })
  const at = 900 * GiB
  const bytes = pattern(512, 1)
  const w = await openVmdk(src)
  await w.write(at, bytes)
  await w.close()
  for (const to of ['vmdk', 'raw'] as const) {
    const dev = counted(await openImage(src, { readOnly: true }), 4 << 20)
    const out = join(d, `out.${to}`)
    await convert(dev, out, { to })
    await dev.close()
    t.ok(dev.bytesRead <= 4 << 20, `${to}: read ${dev.bytesRead} bytes (one chunk at most)`)
    t.ok(dev.statusCalls < 10000, `${to}: ${dev.statusCalls} block status queries`)
    const o = await openImage(out, { readOnly: true })
    t.equal(o.size, 4 * TiB)
    t.ok((await o.read(at - 512, 1536)).equals(Buffer.concat([Buffer.alloc(512), bytes, Buffer.alloc(512)])), `${to}: the data is there`)
    const stored = (await o.blockStatus(at - GiB, 2 * GiB)).filter((e) => e.data && !e.zero).map((e) => [e.offset, e.length])
    t.same(stored, [[at, to === 'raw' ? 4096 : 65536]], `${to}: the data alone is stored (a 4 KiB run of the source; a grain)`)
    t.ok(statSync(out).blocks * 512 < 4 << 20, `${to}: ${statSync(out).blocks * 512} bytes on disk`)
    await o.close()
  }
})

t.test('convert of a raw file skips its hole', async (t) => {
  const d = tmp(t)
  const src = join(d, 'holey.raw')
  const raw = await RawFile.create(src, 8 * GiB)
  await raw.close()
  poke(src, 0, pattern(1 << 20, 2))
  poke(src, 8 * GiB - (1 << 20), pattern(1 << 20, 3))
  const dev = counted(await openImage(src, { readOnly: true, format: 'raw' }), 8 << 20)
  await convert(dev, join(d, 'out.vmdk'), { to: 'vmdk' })
  await dev.close()
  t.ok(dev.bytesRead <= 8 << 20, `read ${dev.bytesRead} bytes of an 8 GiB file with 2 MiB of data`)
  const o = await openVmdk(join(d, 'out.vmdk'), { readOnly: true })
  t.ok((await o.read(0, 1 << 20)).equals(pattern(1 << 20, 2)))
  t.ok((await o.read(8 * GiB - (1 << 20), 1 << 20)).equals(pattern(1 << 20, 3)))
  t.ok((await o.read(4 * GiB, 1 << 20)).equals(Buffer.alloc(1 << 20)))
  await o.close()
})

t.test('disk map of flat and raw images is qemu-img map, byte for byte', qemu, async (t) => {
  const d = tmp(t)
  const cases: string[] = []
  // made by Tandem: the 4 TiB example
  const big = join(d, 'big.vmdk')
  await createVmdk(big, { size: 4 * TiB, subformat: 'monolithicFlat' })
  sh('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0xab 900G 512', big])
  cases.push(big)
  // made by qemu-img (its first 4 KiB are allocated), written by Tandem and qemu
  const q = join(d, 'q.vmdk')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', q, '1G'])
  const img = await openVmdk(q)
  await img.write(300 << 20, pattern(1 << 20, 4))
  await img.close()
  sh('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5 700M 64k', q])
  cases.push(q)
  // split flat: holes in several extents, data across an extent boundary
  const split = join(d, 'split.vmdk')
  await createVmdk(split, { size: 5 * GiB, subformat: 'twoGbMaxExtentFlat' })
  sh('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x7 2047M 2M', '-c', 'write -P 0x8 4G 4k', split])
  cases.push(split)
  // raw with holes
  const raw = join(d, 'r.raw')
  const r = await RawFile.create(raw, 3 * GiB)
  await r.close()
  poke(raw, GiB, pattern(8192, 5))
  poke(raw, 3 * GiB - 4096, pattern(4096, 6))
  cases.push(raw)
  for (const f of cases) {
    const fmt = f.endsWith('.raw') ? ['-f', 'raw'] : []
    const ours = tandem(['disk', 'map', '--json', ...fmt, f])
    t.equal(ours.status, 0, ours.stderr)
    t.equal(ours.stdout, sh('qemu-img', ['map', '--output=json', ...fmt, f]), `${f}: same as qemu-img map`)
  }
})

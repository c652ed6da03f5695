import t from 'tap'
import { join } from 'node:path'
import { tmp, pattern, rng } from '../../helpers/peers.js'
import { createVmdk, openVmdk, checkImage } from '../../../src/disk-formats/index.js'

t.test('concurrent writes into the same unallocated grains of a delta all land', async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  const child = join(d, 'child.vmdk')
  await createVmdk(base, { size: 4 << 20 })
  const b = await openVmdk(base)
  const baseData = pattern(4 << 20, 11)
  await b.write(0, baseData)
  const cid = b.cid
  await b.close()
  await createVmdk(child, { size: 4 << 20, parent: { path: base, cid } })
  const img = await openVmdk(child)
  const expect = Buffer.from(baseData)
  const r = rng(99)
  const writes: Promise<void>[] = []
  // 400 sector-sized writes into 8 grains, all issued at once, at distinct sectors.
  const sectors = new Set<number>()
  while (sectors.size < 400) sectors.add(r() % (8 * 128))
  for (const s of sectors) {
    const buf = pattern(512, s + 1)
    buf.copy(expect, s * 512)
    writes.push(img.write(s * 512, buf))
  }
  // and a few multi-grain writes over other grains, overlapping each other in grains but not bytes
  for (let g = 10; g < 20; g++) {
    // [g*64K + 40000, +50000) ends at (g+1)*64K + 24464: shares grain g+1 with the next write
    const buf = pattern(50000, g)
    const off = g * 65536 + 40000
    buf.copy(expect, off)
    writes.push(img.write(off, buf))
  }
  await Promise.all(writes)
  t.ok((await img.read(0, img.size)).equals(expect), 'every write is there, with the parent around it')
  await img.close()
  const again = await openVmdk(child, { readOnly: true })
  t.ok((await again.read(0, again.size)).equals(expect), 'and after reopening')
  await again.close()
  const c = await checkImage(child)
  t.equal(c.corruptions + c.leaks, 0, 'no grain allocated twice, none leaked')
})

t.test('writeZeroes on a delta: zeroed grains where the format has them, no read-through', async (t) => {
  const d = tmp(t)
  for (const zeroedGrain of [false, true]) {
    const base = join(d, `b${zeroedGrain}.vmdk`)
    const child = join(d, `c${zeroedGrain}.vmdk`)
    await createVmdk(base, { size: 1 << 20 })
    const b = await openVmdk(base)
    await b.write(0, Buffer.alloc(1 << 20, 0x55))
    const cid = b.cid
    await b.close()
    await createVmdk(child, { size: 1 << 20, parent: { path: base, cid }, zeroedGrain })
    const img = await openVmdk(child)
    await img.writeZeroes(1000, 200000)
    const got = await img.read(0, 1 << 20)
    const want = Buffer.alloc(1 << 20, 0x55)
    want.fill(0, 1000, 201000)
    t.ok(got.equals(want), `zeroed range reads zero, the rest the parent (zeroedGrain=${zeroedGrain})`)
    const st = await img.layerStatus(0, 1 << 20)
    t.equal(st.some((x) => x.kind === 'zero'), zeroedGrain, 'GTE 1 used only with the zeroed-grain flag')
    await img.close()
  }
})

t.test('a disk with more grain tables than the cache holds evicts tables and reads them again', async (t) => {
  // 4096 tables are cached (a Map up to 128 GiB); past that lru-cache bounds the cache. 4200
  // tables of 512 x 64 KiB grains: a 131.25 GiB disk, sparse, so only what is written takes space.
  const d = tmp(t)
  const f = join(d, 'big.vmdk')
  const tableBytes = 512 * 65536
  await createVmdk(f, { size: 4200 * tableBytes })
  const img = await openVmdk(f)
  const at = (i: number) => i * tableBytes + (i % 512) * 65536
  for (let i = 0; i < 4200; i += 1) await img.write(at(i), pattern(512, i + 1))
  await img.close()
  const again = await openVmdk(f, { readOnly: true })
  for (const i of [0, 1, 2047, 4095, 4096, 4199, 0, 4199]) t.ok((await again.read(at(i), 512)).equals(pattern(512, i + 1)), `table ${i}`)
  await again.close()
  const r = await checkImage(f)
  t.equal(r.corruptions, 0, 'check finds no corruption')
  t.equal(r.leaks, 0, 'and no leaks')
})

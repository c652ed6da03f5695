import t from 'tap'
import { closeSync, openSync, readFileSync, writeFileSync, writeSync, ftruncateSync } from 'node:fs'
import { join } from 'node:path'
import { have, pattern, shStatus, tmp } from '../../helpers/peers.js'
import { loadNative } from '../../../src/disk-formats/native.js'
import { convert, createVmdk, openVmdk, RawFile } from '../../../src/disk-formats/index.js'

// convert copies data stored in files with copy_file_range (native/copy-range.c): the all-zero
// 64 KiB blocks are found by zeroBlocks and left out, the other runs copied file to file.

const K = 1024
const M = 1024 * 1024

t.test('zeroBlocks tells all-zero blocks, reading past a zero probe; copyRange writes zeros past the end of its input', async (t) => {
  const d = tmp(t)
  const src = join(d, 'src')
  const data = Buffer.alloc(250 * K)
  data[64 * K + 5000] = 1 // block 1: its first 4 KiB are zero, not the rest
  pattern(64 * K, 3).copy(data, 128 * K) // block 2
  writeFileSync(src, data)
  const fd = openSync(src, 'r')
  t.teardown(() => closeSync(fd))
  const native = loadNative()
  const flags = new Uint8Array(5)
  await native.zeroBlocks(fd, 0, 300 * K, 64 * K, 64 * K, flags) // the last block lies past the end of the file
  t.same([...flags], [1, 0, 0, 1, 1], 'zero, late data, data, zero, past the end')
  const two = new Uint8Array(2)
  await native.zeroBlocks(fd, 60 * K, 10 * K, 4 * K, 64 * K, two)
  t.same([...two], [1, 0], 'a short first block, then the rest')

  const out = join(d, 'out')
  writeFileSync(out, Buffer.alloc(120 * K, 0xff))
  const ofd = openSync(out, 'r+')
  await native.copyRange(fd, 200 * K, ofd, 10, 100 * K)
  closeSync(ofd)
  const got = readFileSync(out)
  t.ok(got.subarray(10, 10 + 50 * K).equals(data.subarray(200 * K)), 'the bytes the input has')
  t.ok(got.subarray(10 + 50 * K, 10 + 100 * K).equals(Buffer.alloc(50 * K)), 'zeros for the bytes past its end')
  t.equal(got[9], 0xff, 'nothing before')
  t.equal(got[10 + 100 * K], 0xff, 'nothing after')
  await t.rejects(native.copyRange(987654, 0, fd, 0, 1), { code: 'EBADF' }, 'an OS error carries its code')

  // copyData: the same blocks as zeroBlocks; only the others written (0xff stays where it skips)
  const dst = join(d, 'dst')
  writeFileSync(dst, Buffer.alloc(320 * K, 0xff))
  const dfd = openSync(dst, 'r+')
  const both = new Uint8Array(5)
  await native.copyData(fd, 0, 300 * K, 64 * K, 64 * K, both, dfd, 10 * K)
  closeSync(dfd)
  t.same([...both], [1, 0, 0, 1, 1], 'copyData finds the same zero blocks')
  const copied = readFileSync(dst)
  t.ok(copied.subarray(10 * K, 74 * K).equals(Buffer.alloc(64 * K, 0xff)), 'a zero block is not written')
  t.ok(copied.subarray(74 * K, 202 * K).equals(data.subarray(64 * K, 192 * K)), 'the two data blocks are, as one run')
  t.ok(copied.subarray(202 * K, 320 * K).equals(Buffer.alloc(118 * K, 0xff)), 'nor are the zero blocks after them')
})

/**
 * A 70 MiB + 4608-byte raw file with holes: data starting and ending inside grains, data across
 * the first grain table's end (32 MiB), stored zeros (one whole grain, one grain's first 8 KiB)
 * and data up to a last grain that ends at the disk's end.
 */
function holeyRaw(path: string): { size: number; bytes: Buffer; zeroGrain: number } {
  const size = 70 * M + 4608
  const bytes = Buffer.alloc(size)
  const put = (offset: number, b: Buffer) => b.copy(bytes, offset)
  put(4096, pattern(200000, 1))
  put(32 * M - 3 * 64 * K, pattern(8 * 64 * K, 2))
  const z = 40 * M
  put(z + 64 * K + 8 * K, pattern(56 * K + 64 * K, 3)) // grain 1 from 8 KiB on, and grain 2
  put(size - 100000, pattern(100000, 4))
  const fd = openSync(path, 'w')
  ftruncateSync(fd, size)
  for (const [o, n] of [[4096, 200000], [32 * M - 3 * 64 * K, 8 * 64 * K], [z, 4 * 64 * K], [size - 100000, 100000]]) writeSync(fd, bytes, o, n, o)
  closeSync(fd)
  return { size, bytes, zeroGrain: z }
}

t.test('a raw source with holes converts through the kernel, at grain and grain-table boundaries', async (t) => {
  const d = tmp(t)
  const srcPath = join(d, 'src.raw')
  const { size, bytes, zeroGrain } = holeyRaw(srcPath)
  const src = await RawFile.open(srcPath, { readOnly: true })
  t.teardown(() => src.close())
  let readBytes = 0
  const readInto = src.readInto.bind(src)
  src.readInto = async (o, n, out, at) => {
    readBytes += n
    return readInto(o, n, out, at)
  }
  src.read = async () => {
    throw new Error('convert reads through readInto')
  }

  const outRaw = join(d, 'out.raw')
  await convert(src, outRaw, { to: 'raw', chunk: 1 << 20 })
  t.equal(readBytes, 0, 'raw output: nothing read into the process')
  t.ok(readFileSync(outRaw).equals(bytes), 'raw output: the same bytes')
  const raw = await RawFile.open(outRaw, { readOnly: true })
  const st = await raw.blockStatus(zeroGrain, 64 * K)
  await raw.close()
  t.same(st.map((e) => e.data), [false], 'the stored all-zero grain is not written: a hole')

  const outVmdk = join(d, 'out.vmdk')
  await convert(src, outVmdk, { to: 'vmdk', chunk: 1 << 20 })
  // only the partial grains at the ends of data runs go through the process (grain 0 from 4 KiB,
  // the grain after 4096 + 200000, the grain of size - 100000)
  // only the partial grains at the ends of data runs go through the process: grain 0 from 4 KiB
  // on, the last grain of the run at 4096, the first of the run at size - 100000 (the file's
  // data runs are whole file-system blocks: up to 4 KiB more at each end)
  const partial = 64 * K - 4096 + (4096 + 200000 - 3 * 64 * K) + (70 * M - 64 * K - (size - 100000))
  t.ok(readBytes >= partial && readBytes <= partial + 2 * 4096, `vmdk output: only those partial grains read into the process (${readBytes} bytes)`)
  const img = await openVmdk(outVmdk, { readOnly: true })
  t.ok((await img.read(0, size)).equals(bytes), 'vmdk output: the same bytes')
  t.same(await img.layerStatus(zeroGrain, 64 * K), [{ offset: zeroGrain, length: 64 * K, kind: 'unallocated' }], 'the all-zero grain is not allocated')
  t.same((await img.layerStatus(zeroGrain + 64 * K, 64 * K)).map((r) => r.kind), ['data'], 'a grain of 8 KiB of zeros then data is')
  await img.close()
  if (have('qemu-img')) {
    t.equal(shStatus('qemu-img', ['check', outVmdk]).status, 0, 'qemu-img check: clean')
    const cmp = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', srcPath, outVmdk])
    t.equal(cmp.status, 0, `qemu-img compare: identical (${cmp.stdout.trim()})`)
  }
})

t.test('a chain converts through the kernel from the files of both layers', async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  const delta = join(d, 'delta.vmdk')
  const size = 40 * M
  await createVmdk(base, { size })
  const b = await openVmdk(base)
  await b.write(0, pattern(36 * M, 5))
  const cid = b.cid
  await b.close()
  await createVmdk(delta, { size, parent: { path: base, cid } })
  const dl = await openVmdk(delta)
  await dl.write(32 * M - 64 * K, pattern(3 * 64 * K, 6)) // across the grain-table boundary
  await dl.write(10 * M, Buffer.alloc(64 * K)) // a data grain of zeros over the base's data
  await dl.write(38 * M, pattern(64 * K, 7)) // past the base's data
  await dl.close()
  const chain = await openVmdk(delta, { readOnly: true })
  t.teardown(() => chain.close())
  const want = await chain.read(0, size)
  for (const to of ['raw', 'vmdk'] as const) {
    const out = join(d, `out.${to}`)
    await convert(chain, out, { to, chunk: 4 << 20, parallel: 2 })
    const got = to === 'raw' ? await RawFile.open(out, { readOnly: true }) : await openVmdk(out, { readOnly: true })
    t.ok((await got.read(0, size)).equals(want), `${to}: the chain's bytes`)
    if (got instanceof RawFile) {
      t.same((await got.blockStatus(10 * M, 64 * K)).map((e) => e.data), [false], 'raw: the delta\'s zero grain is a hole')
    } else {
      t.same((await got.layerStatus(10 * M, 64 * K)).map((r) => r.kind), ['unallocated'], 'vmdk: the delta\'s zero grain is not allocated')
      if (have('qemu-img')) t.equal(shStatus('qemu-img', ['check', out]).status, 0, 'qemu-img check: clean')
    }
    await got.close()
  }
})

t.test('VmdkImage.writeFromFile takes whole grains only, across a grain table\'s end: new ones allocated, allocated ones overwritten in place', async (t) => {
  const d = tmp(t)
  const srcPath = join(d, 'src')
  const data = pattern(256 * K, 8)
  writeFileSync(srcPath, data)
  const fd = openSync(srcPath, 'r')
  t.teardown(() => closeSync(fd))
  const out = join(d, 'out.vmdk')
  await createVmdk(out, { size: 64 * M })
  const img = await openVmdk(out)
  t.equal(await img.writeFromFile(100, 64 * K, fd, 0), false, 'not grain-aligned: refused')
  t.equal(await img.writeFromFile(0, 100 * K, fd, 0), false, 'not whole grains: refused')
  t.equal(await img.writeFromFile(32 * M - 64 * K, 128 * K, fd, 0), true, 'two grains, one in each of two tables')
  const hostBefore = (await img.blockStatus(32 * M, 64 * K))[0].hostOffset
  // one allocated grain and one new one, in one call
  t.equal(await img.writeFromFile(32 * M, 128 * K, fd, 128 * K), true, 'an allocated grain and the unallocated one after it')
  t.equal((await img.blockStatus(32 * M, 64 * K))[0].hostOffset, hostBefore, 'the allocated grain was overwritten where it is, not moved')
  t.ok((await img.read(32 * M - 64 * K, 64 * K)).equals(data.subarray(0, 64 * K)), 'the first copy reads back where it was not overwritten')
  t.ok((await img.read(32 * M, 128 * K)).equals(data.subarray(128 * K, 256 * K)), 'the second copy reads back, over the allocated grain and into the new one')
  t.same((await img.layerStatus(32 * M - 128 * K, 320 * K)).map((r) => r.kind), ['unallocated', 'data', 'unallocated'], 'only those grains allocated')
  t.same((await img.layerStatus(32 * M - 64 * K, 192 * K)).map((r) => r.length), [192 * K], 'three grains of data')
  await img.close()
  if (have('qemu-img')) t.equal(shStatus('qemu-img', ['check', out]).status, 0, 'qemu-img check: clean')
})

t.test('extents that name a network disk (nbd://) are read through the process', async (t) => {
  const d = tmp(t)
  const data = pattern(1 << 20, 9)
  writeFileSync(join(d, 'src.raw'), data)
  const src = await RawFile.open(join(d, 'src.raw'), { readOnly: true })
  t.teardown(() => src.close())
  // what NbdClient answers: its URI as the file, offsets as the host offsets (qemu-img map's view)
  const status = src.blockStatus.bind(src)
  src.blockStatus = async (o, n) => (await status(o, n)).map((e) => ({ ...e, file: 'nbd://127.0.0.1:10809/d' }))
  for (const to of ['raw', 'vmdk'] as const) {
    const out = join(d, `out.${to}`)
    await convert(src, out, { to })
    const got = to === 'raw' ? await RawFile.open(out, { readOnly: true }) : await openVmdk(out, { readOnly: true })
    t.ok((await got.read(0, data.length)).equals(data), `${to}: the bytes`)
    await got.close()
  }
})

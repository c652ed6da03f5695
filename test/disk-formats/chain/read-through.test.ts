import t from 'tap'
import { join } from 'node:path'
import { needs, pattern, run, shmTmp } from '../../helpers/peers.js'
import { createVmdk, linkParent, openVmdk, VmdkImage } from '../../../src/disk-formats/index.js'
import { uncleanByte } from '../../helpers/vmdk-flags.js'

const SIZE = 1 << 20
const K = 1024

t.test('a layer is linked to its parent once: a second link is refused', async (t) => {
  const dir = shmTmp(t, 'tandem-rt-')
  const base = join(dir, 'base.vmdk')
  await createVmdk(base, { size: SIZE })
  const b = await VmdkImage.open(base, { readOnly: true })
  await createVmdk(join(dir, 'top.vmdk'), { size: SIZE, parent: { path: base, cid: b.cid } })
  await b.close()
  const top = await openVmdk(join(dir, 'top.vmdk'))
  t.teardown(() => top.close())
  t.ok(top.backing instanceof VmdkImage, 'openVmdk linked the parent')
  t.throws(() => linkParent(top, top.backing!), { code: 'InvalidArgument', message: /already has a parent/ })
})

t.test('a delta stacked on a top still open for writing: reads through it, a flush syncs it until it is frozen, then it is read-only and clean', async (t) => {
  const dir = shmTmp(t, 'tandem-rt-freeze-')
  const path = join(dir, 'l0.vmdk')
  await createVmdk(path, { size: SIZE })
  const old = await VmdkImage.open(path)
  await old.write(0, pattern(128 * K, 1))
  const cid = await old.pinCid()
  t.equal(cid, old.cid)
  await old.write(128 * K, pattern(4 * K, 2))
  t.equal(old.cid, cid, 'the pinned CID stays while the layer is written')
  const dpath = join(dir, 'l1.vmdk')
  await createVmdk(dpath, { size: SIZE, parent: { path, cid } })
  const delta = await VmdkImage.open(dpath)
  linkParent(delta, old)
  t.teardown(() => delta.close())

  let flushed = 0
  const flush = old.flush.bind(old)
  old.flush = () => (flushed++, flush())
  await delta.write(4 * K, pattern(4 * K, 3)) // the rest of its grain comes from the old top
  await delta.flush()
  t.equal(flushed, 1, 'a flush through the delta syncs the writable parent too')
  t.equal(uncleanByte(path), 1)

  await old.freeze()
  t.ok(old.readOnly)
  t.equal(uncleanByte(path), 0, 'frozen: uncleanShutdown cleared')
  await delta.flush()
  t.equal(flushed, 1, 'a frozen parent is not synced again')
  await t.rejects(old.write(0, Buffer.alloc(512)), { code: 'ReadOnly' })
  await t.rejects(old.writeZeroes(0, 512), { code: 'ReadOnly' })
  const want = pattern(128 * K, 1)
  pattern(4 * K, 3).copy(want, 4 * K)
  t.same(await delta.read(0, 128 * K), want, 'the delta reads its own grain and the parent below it')
  t.same(await delta.read(128 * K, 4 * K), pattern(4 * K, 2))
  t.same(await old.read(0, 4 * K), pattern(4 * K, 1), 'the frozen layer still reads')
  t.same(
    (await delta.blockStatus(0, 192 * K)).map((e) => [e.offset, e.length, e.depth, e.data]),
    [
      [0, 64 * K, 0, true],
      [64 * K, 128 * K, 1, true],
    ],
  )
})

t.test('a frozen layer holds a reader\'s image locks: qemu-img checks it while it is open', needs('qemu-img'), async (t) => {
  const dir = shmTmp(t, 'tandem-rt-lock-')
  const path = join(dir, 'l0.vmdk')
  await createVmdk(path, { size: SIZE })
  const img = await VmdkImage.open(path)
  t.teardown(() => img.close())
  await img.write(0, pattern(64 * K, 4))
  const locked = await run('qemu-img', ['check', '-f', 'vmdk', path])
  t.not(locked.status, 0, 'refused while open for writing')
  await img.freeze()
  const r = await run('qemu-img', ['check', '-f', 'vmdk', path])
  t.equal(r.status, 0, `${r.stdout}${r.stderr}`)
  const w = await run('qemu-io', ['-f', 'vmdk', '-c', 'write 0 512', path])
  t.match(w.stderr + w.stdout, /lock/, 'qemu-io may not write it')
})

import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, pattern, run } from '../../helpers/peers.js'
import { openDisk as openDiskIn } from '../../helpers/datastore.js'
import { VmdkImage } from '../../../src/disk-formats/index.js'
import { uncleanByte } from '../../helpers/vmdk-flags.js'

const SIZE = 1 << 20
const K = 1024
const R = 64 * K // the writer's region


const openDisk = (t: Test) => openDiskIn(t, SIZE, 'tandem-live-snap-')

t.test('snapshot create with the export open and written: only the new delta is opened, the writer goes on, the snapshot is one moment of it', async (t) => {
  const { dir, ds, h } = await openDisk(t)
  await h.device.write(R, pattern(64 * K, 100))
  for (const s of ['s0', 's1']) await ds.createSnapshot('d', s) // a chain three layers deep

  // a QD1 writer rewrites the region with seeds 1, 2, 3…; the last one it finished is `done`
  let stop = false
  let done = 0
  const writer = (async () => {
    for (let seed = 1; !stop; seed++) {
      await h.device.write(0, pattern(R, seed))
      done = seed
      // a client's next request comes with I/O; a write of the page cache may finish without one
      await new Promise((r) => setImmediate(r))
    }
  })()
  while (done < 3) await new Promise((r) => setTimeout(r, 1))

  const opened: string[] = []
  const open = VmdkImage.open
  VmdkImage.open = (path, opts) => (opened.push(path), open.call(VmdkImage, path, opts))
  const before = done
  try {
    await ds.createSnapshot('d', 'live')
  } finally {
    VmdkImage.open = open
  }
  const after = done
  while (done < after + 3) await new Promise((r) => setTimeout(r, 1)) // it carries on
  stop = true
  await writer

  const r = await ds.readRecord('d')
  t.same(opened, [join(dir, 'd', r.top)], 'the new delta is the one file opened: the chain below stays open as it was')
  const snap = await ds.openExport('d@live')
  t.teardown(() => snap.release())
  const frozen = await snap.device.read(0, R)
  const seeds = Array.from({ length: after - before + 2 }, (_, i) => before + i)
  t.ok(seeds.some((s) => frozen.equals(pattern(R, s))), `the snapshot holds one of the writes made while it was taken (seeds ${seeds.join(', ')})`)
  t.same(await snap.device.read(R, 64 * K), pattern(64 * K, 100), 'and what lies below')
  t.same(await h.device.read(0, R), pattern(R, done), 'the disk reads the last write')
  t.same(await h.device.read(R, 64 * K), pattern(64 * K, 100), 'through every layer')

  // the create synced none of the writer's data (a sync would have cleared the flag): the
  // frozen layers wait for a flush through the top, which syncs them and marks them clean
  const frozenLayers = r.snapshots.map((s) => join(dir, 'd', s.layer))
  t.same(frozenLayers.map(uncleanByte), [1, 1, 1], 'the frozen layers keep uncleanShutdown set until a flush')
  await h.device.flush()
  t.same(frozenLayers.map(uncleanByte), [0, 0, 0], 'a flush through the top syncs every frozen layer and marks it clean, the export still open')
  t.equal(uncleanByte(join(dir, 'd', r.top)), 1, 'the new top is open for writing')
})

t.test('the frozen layer is left to readers: qemu-img reads it while the export is open, and not the new top', needs('qemu-img'), async (t) => {
  const { dir, ds, h } = await openDisk(t)
  await h.device.write(0, pattern(128 * K, 7))
  await ds.createSnapshot('d', 's')
  await h.device.write(0, pattern(4 * K, 8))
  const r = await ds.readRecord('d')
  const layer = join(dir, 'd', r.snapshots[0].layer)
  const check = await run('qemu-img', ['check', '-f', 'vmdk', layer])
  t.equal(check.status, 0, `qemu-img check of the snapshot layer without -U: ${check.stdout}${check.stderr}`)
  const top = await run('qemu-img', ['info', '-f', 'vmdk', join(dir, 'd', r.top)])
  t.not(top.status, 0, 'the new top is write-locked')
  t.match(top.stderr, /lock/)
  const img = await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', layer, join(dir, 's.raw')])
  t.equal(img.status, 0, img.stderr)
  t.same(readFileSync(join(dir, 's.raw')).subarray(0, 128 * K), pattern(128 * K, 7), 'qemu-img reads the snapshot content')
})

t.test('an idle export whose snapshot is being taken is not closed by an eviction meanwhile', async (t) => {
  const { ds, h } = await openDisk(t)
  await h.device.write(0, pattern(64 * K, 5))
  await h.release() // idle: kept open for the next client
  const others = Array.from({ length: 33 }, (_, i) => `o${i}`) // more than the idle cache keeps
  for (const o of others) await ds.createDisk(o, SIZE)
  const open = VmdkImage.open
  let evicted = false
  // while the new delta is opened, other exports are opened and left idle, pushing `d` out
  VmdkImage.open = async (path, opts) => {
    const img = await open.call(VmdkImage, path, opts)
    if (!evicted && opts === undefined && path.includes('/d/')) {
      evicted = true
      for (const o of others) await (await ds.openExport(o)).release()
    }
    return img
  }
  try {
    await ds.createSnapshot('d', 's')
  } finally {
    VmdkImage.open = open
  }
  t.ok(evicted)
  const again = await ds.openExport('d')
  t.teardown(() => again.release())
  await again.device.write(64 * K, pattern(4 * K, 6))
  t.same(await again.device.read(0, 64 * K), pattern(64 * K, 5))
  const snap = await ds.openExport('d@s')
  t.teardown(() => snap.release())
  t.same(await snap.device.read(0, 64 * K), pattern(64 * K, 5))
})

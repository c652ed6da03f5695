import t from 'tap'
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Datastore } from '../../../src/server/datastore/index.js'
import { CLI, pattern, run, shmTmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

const K = 1024
const SIZE = 4 << 20
const code = (c: string, message?: RegExp) => (message ? { code: c, message } : { code: c })
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex')

async function read(ds: Datastore, exp: string, off: number, len: number): Promise<Buffer> {
  const h = await ds.openExport(exp)
  try {
    return Buffer.from(await h.device.read(off, len))
  } finally {
    await h.release()
  }
}
async function write(ds: Datastore, exp: string, off: number, data: Buffer): Promise<void> {
  const h = await ds.openExport(exp)
  try {
    await h.device.write(off, data)
    await h.device.flush()
  } finally {
    await h.release()
  }
}

t.test('a linked clone reads its snapshot, its writes change nothing else, the snapshot stays while it exists', async (t) => {
  const dir = shmTmp(t, 'tandem-clone-')
  let ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  await ds.createDisk('d', SIZE)
  const A = pattern(64 * K, 1)
  const B = pattern(64 * K, 2)
  const C = pattern(64 * K, 3)
  await write(ds, 'd', 0, A)
  await ds.createSnapshot('d', 'base')
  await write(ds, 'd', 0, B) // after the snapshot: not the clone's
  const baseLayer = join(dir, 'd', (await ds.readRecord('d')).snapshots[0].layer)
  const before = sha(baseLayer)

  const c = await ds.cloneDisk('d', 'c', { snapshot: 'base', linked: true })
  t.same(c.base, { disk: 'd', snapshot: 'base' })
  t.equal(c.size, SIZE)
  t.ok(c.actualSize < 1 << 20, `the clone holds no copy (${c.actualSize} bytes)`)
  t.ok((await read(ds, 'c', 0, 64 * K)).equals(A), 'the clone reads the snapshot\'s content')
  t.ok((await read(ds, 'c', 64 * K, 64 * K)).equals(Buffer.alloc(64 * K)), 'and its zeroes')

  await write(ds, 'c', 0, C)
  await write(ds, 'c', 1 << 20, C)
  t.ok((await read(ds, 'c', 0, 64 * K)).equals(C), 'the clone reads its own write')
  t.ok((await read(ds, 'd', 0, 64 * K)).equals(B), 'the source\'s current state is unchanged')
  t.ok((await read(ds, 'd@base', 0, 64 * K)).equals(A), 'the source\'s snapshot is unchanged')
  t.ok((await read(ds, 'd', 1 << 20, 64 * K)).equals(Buffer.alloc(64 * K)), 'nothing written to the source where the clone wrote')
  t.equal(sha(baseLayer), before, 'the shared layer\'s file is byte for byte the same')

  await t.rejects(ds.deleteSnapshot('d', 'base'), code('Busy', /cannot delete snapshot 'base' of 'd': it is the base of linked clone\(s\) 'c'/))
  await t.rejects(ds.deleteDisk('d'), code('Busy', /disk 'd' is the base of linked clone\(s\) 'c'/))
  t.ok((await read(ds, 'c', 0, 64 * K)).equals(C), 'the refused deletes left the clone as it was')

  // the clone's own tree, across a restart (the repair at open leaves a base outside the disk alone)
  await ds.createSnapshot('c', 'c1')
  await write(ds, 'c', 0, B)
  await ds.close()
  ds = await Datastore.open(dir)
  t.same(ds.repairs, [], 'nothing to repair')
  t.same((await ds.describe('c')).snapshots.map((s) => [s.name, s.parent]), [['c1', null]])
  t.ok((await read(ds, 'c@c1', 0, 64 * K)).equals(C), 'the clone\'s snapshot')
  t.ok((await read(ds, 'c', 0, 64 * K)).equals(B))
  t.ok((await read(ds, 'c', 2 << 20, 64 * K)).equals(Buffer.alloc(64 * K)))
  // a snapshot of the source under 'base' can go: 'base' is re-linked, keeping its content (and CID)
  await ds.revertSnapshot('d', 'base')
  t.ok((await read(ds, 'c@c1', 0, 64 * K)).equals(C), 'a revert of the source changes nothing for the clone')

  // deleting the clone's only snapshot makes its layer stand alone? No: its top still reads through to the base
  await ds.deleteSnapshot('c', 'c1')
  t.ok((await read(ds, 'c', 0, 64 * K)).equals(B), 'after deleting its own snapshot, the clone reads the same')
  t.ok((await read(ds, 'c', 64 * K, 64 * K)).equals(Buffer.alloc(64 * K)))
  await ds.deleteDisk('c')
  await ds.deleteSnapshot('d', 'base')
  t.pass('once the clone is gone, its base snapshot can be deleted')
})

t.test('full clone, and bad input', async (t) => {
  const dir = shmTmp(t, 'tandem-fclone-')
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  await ds.createDisk('d', SIZE)
  await write(ds, 'd', 4096, pattern(8 * K, 5))
  await ds.createSnapshot('d', 's')
  await write(ds, 'd', 4096, pattern(8 * K, 6))
  const f = await ds.cloneDisk('d', 'f', { snapshot: 's', linked: false })
  t.equal(f.base, null)
  t.ok((await read(ds, 'f', 4096, 8 * K)).equals(pattern(8 * K, 5)), 'the copy of the snapshot')
  const g = await ds.cloneDisk('d', 'g', { linked: false })
  t.ok((await read(ds, 'g', 4096, 8 * K)).equals(pattern(8 * K, 6)), 'the copy of the current state')
  await ds.deleteSnapshot('d', 's')
  t.ok((await read(ds, 'f', 4096, 8 * K)).equals(pattern(8 * K, 5)), 'a full clone does not need its source\'s snapshot')
  await ds.createSnapshot('d', 's2')
  const h = await ds.openExport('d')
  t.teardown(() => h.release())
  await t.rejects(ds.cloneDisk('d', 'x', { linked: false }), code('Busy', /cannot copy the current state of 'd': 1 client\(s\) of 'd'/))
  await t.rejects(ds.cloneDisk('d', 'x', { linked: true }), code('InvalidArgument', /needs a snapshot/))
  await t.rejects(ds.cloneDisk('d', 'x', { snapshot: 'nope', linked: true }), code('NotFound'))
  await t.rejects(ds.cloneDisk('nope', 'x', { snapshot: 's2', linked: true }), code('NotFound'))
  await t.rejects(ds.cloneDisk('d', 'f', { snapshot: 's2', linked: true }), code('Exists'))
  await t.rejects(ds.cloneDisk('d', 'bad name', { snapshot: 's2', linked: true }), code('InvalidArgument'))
  t.same(await ds.listDisks(), ['d', 'f', 'g'], 'no refused clone left a disk')
})

t.test('tandem disk clone --server', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', SIZE)
  await s.ds.createSnapshot('d', 'base')
  const url = `http://127.0.0.1:${s.httpPort}`
  const r = await run(process.execPath, [CLI, 'disk', 'clone', 'd', 'c', '--snapshot', 'base', '--server', url])
  t.equal(r.stdout, "disk 'c' (4 MiB) linked to 'd@base'\n", r.stderr)
  const bad = await run(process.execPath, [CLI, 'disk', 'clone', 'd', 'c2', '--server', url])
  t.equal(bad.status, 1)
  t.equal(bad.stderr, 'tandem: a linked clone needs a snapshot of the source (its base)\n')
})

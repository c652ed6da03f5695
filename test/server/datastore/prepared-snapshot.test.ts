import t, { type Test } from 'tap'
import { existsSync, readdirSync, unlinkSync } from 'node:fs'
import { join } from 'node:path'
import { needs, pattern, run } from '../../helpers/peers.js'
import { Datastore } from '../../../src/server/datastore/index.js'
import { openDisk as openDiskIn } from '../../helpers/datastore.js'
import { VmdkImage } from '../../../src/disk-formats/index.js'

const SIZE = 1 << 20
const K = 1024

const openDisk = (t: Test) => openDiskIn(t, SIZE, 'tandem-prepared-')

const code = (c: string) => ({ code: c })
const layers = (dir: string) => readdirSync(join(dir, 'd')).filter((f) => f.endsWith('.vmdk')).sort()

/**
 * A QD1 writer over 16 slots of 4 KiB: write n goes to slot n % 16 with pattern seed n. `acked`
 * holds, per slot, the last seed whose write was acknowledged.
 */
function writer(dev: { write(o: number, b: Buffer): Promise<void> }) {
  const acked = new Map<number, number>()
  let stop = false
  let n = 0
  const done = (async () => {
    for (n = 1; !stop; n++) {
      await dev.write((n % 16) * 4 * K, pattern(4 * K, n))
      acked.set(n % 16, n)
      await new Promise((r) => setImmediate(r))
    }
  })()
  return {
    acked,
    get count() {
      return n
    },
    async stop() {
      stop = true
      await done
    },
  }
}

t.test('prepare makes the delta while the writer goes on and changes nothing; commit switches onto it and the snapshot is one moment', async (t) => {
  const { dir, ds, h } = await openDisk(t)
  await h.device.write(64 * K, pattern(64 * K, 100))
  const w = writer(h.device)
  while (w.count < 5) await new Promise((r) => setTimeout(r, 1))
  const before = layers(dir)
  const p = await ds.prepareSnapshot('d', 'cp')
  t.same(p, { name: 'cp', parent: null, createdAt: p.createdAt, description: '', state: 'prepared' })
  t.equal(layers(dir).length, before.length + 1, 'the delta exists')
  const r0 = await ds.readRecord('d')
  t.same(r0.snapshots, [], 'no snapshot yet')
  const info = await ds.describe('d')
  t.equal(info.prepared, 'cp')
  t.same(info.chain, ['l-0000.vmdk'], 'the disk still writes its old top')
  const n0 = w.count
  while (w.count < n0 + 5) await new Promise((r) => setTimeout(r, 1)) // writes go on after the prepare

  const s = await ds.commitSnapshot('d', 'cp')
  const n1 = w.count
  t.equal(s.name, 'cp')
  while (w.count < n1 + 5) await new Promise((r) => setTimeout(r, 1))
  await w.stop()

  const r = await ds.readRecord('d')
  t.same(r.snapshots.map((x) => x.name), ['cp'])
  t.equal(r.top, 'l-0001.vmdk', 'the prepared delta is the top')
  t.equal((await ds.describe('d')).prepared, null)
  for (const [slot, seed] of w.acked) t.same(await h.device.read(slot * 4 * K, 4 * K), pattern(4 * K, seed), `slot ${slot}: the last acknowledged write (${seed})`)
  t.same(await h.device.read(64 * K, 64 * K), pattern(64 * K, 100), 'and what lies below')
  const snap = await ds.openExport('d@cp')
  t.teardown(() => snap.release())
  for (let slot = 0; slot < 16; slot++) {
    const got = await snap.device.read(slot * 4 * K, 4 * K)
    // the snapshot holds, for each slot, a write the writer made before the commit ended
    const seeds = Array.from({ length: n1 + 2 }, (_, i) => i).filter((x) => x % 16 === slot)
    t.ok(seeds.some((x) => got.equals(pattern(4 * K, x))) || got.equals(Buffer.alloc(4 * K)), `snapshot slot ${slot} is one write of before the commit`)
  }
})

t.test('bad requests: typed errors, and nothing changes', async (t) => {
  const { dir, ds } = await openDisk(t)
  await ds.createSnapshot('d', 'old')
  await t.rejects(ds.prepareSnapshot('nope', 'x'), code('NotFound'))
  await t.rejects(ds.prepareSnapshot('d', 'old'), code('Exists'), 'a name clash')
  await t.rejects(ds.prepareSnapshot('d', 'bad name'), code('InvalidArgument'))
  await t.rejects(ds.commitSnapshot('d', 'cp'), code('NotFound'), 'commit of a snapshot never prepared')
  await t.rejects(ds.commitSnapshot('d', 'old'), code('Busy'), 'commit of a committed snapshot')
  await ds.prepareSnapshot('d', 'cp')
  await t.rejects(ds.prepareSnapshot('d', 'cp'), code('Exists'))
  await t.rejects(ds.prepareSnapshot('d', 'cp2'), code('Busy'), 'a second prepare while one is pending')
  await t.rejects(ds.createSnapshot('d', 'x'), code('Busy'))
  await t.rejects(ds.revertSnapshot('d', 'old'), code('Busy'))
  await t.rejects(ds.deleteSnapshot('d', 'old'), code('Busy'))
  await t.rejects(ds.deleteDisk('d'), code('Busy'))
  const delta = 'l-0002.vmdk'
  t.ok(existsSync(join(dir, 'd', delta)))
  await ds.deleteSnapshot('d', 'cp') // abort
  t.notOk(existsSync(join(dir, 'd', delta)), 'an abort removes the delta')
  t.same((await ds.readRecord('d')).snapshots.map((s) => s.name), ['old'])
  await ds.prepareSnapshot('d', 'cp2')
  await ds.commitSnapshot('d', 'cp2')
  t.same((await ds.readRecord('d')).snapshots.map((s) => s.name), ['old', 'cp2'])
})

t.test('a record that cannot be written: the export switches back, the held writes land on the old top, the prepare stays', async (t) => {
  const { dir, ds, h } = await openDisk(t)
  await h.device.write(0, pattern(4 * K, 1))
  await ds.prepareSnapshot('d', 'cp')
  // the record written ahead at the prepare is gone: the commit's rename fails
  const staged = join(dir, 'd', `.disk.json.tmp-${process.pid}-prepared`)
  t.ok(existsSync(staged), 'the prepare wrote the record ahead')
  unlinkSync(staged)
  // a write issued during the commit: held, then put on whatever the disk is when it is released
  const commit = ds.commitSnapshot('d', 'cp')
  const w = h.device.write(0, pattern(4 * K, 2))
  await t.rejects(commit)
  await w
  t.equal((await ds.readRecord('d')).top, 'l-0000.vmdk', 'the record still names the old top')
  t.same(await h.device.read(0, 4 * K), pattern(4 * K, 2))
  t.equal((await ds.describe('d')).prepared, 'cp', 'still prepared: commit again or delete')
  await ds.commitSnapshot('d', 'cp')
  await h.device.write(0, pattern(4 * K, 3))
  const snap = await ds.openExport('d@cp')
  t.teardown(() => snap.release())
  t.same(await snap.device.read(0, 4 * K), pattern(4 * K, 2), 'the write held by the failed commit is in the snapshot')
  t.same(await h.device.read(0, 4 * K), pattern(4 * K, 3))
})

t.test('commit after the export was closed and reopened (the top re-touched: a new CID): the delta follows, the chain opens', needs('qemu-img'), async (t) => {
  const { dir, ds, h } = await openDisk(t)
  await h.device.write(0, pattern(4 * K, 1))
  await ds.prepareSnapshot('d', 'cp')
  await h.release()
  await ds.close() // drops the idle handle: the top closes
  const ds2 = await Datastore.open(dir)
  t.teardown(() => ds2.close())
  t.match(ds2.repairs, [{ disk: 'd', done: [/removed 'l-0001.vmdk'/] }], 'a restart discards the prepared delta')
  await ds2.prepareSnapshot('d', 'cp')
  const h2 = await ds2.openExport('d')
  await h2.device.write(0, pattern(4 * K, 2)) // a new CID on the top, after the prepare
  await ds2.commitSnapshot('d', 'cp')
  await h2.device.write(4 * K, pattern(4 * K, 3))
  await h2.release()
  await ds2.close()
  const top = join(dir, 'd', 'l-0001.vmdk')
  const check = await run('qemu-img', ['check', '-f', 'vmdk', top])
  t.equal(check.status, 0, check.stdout + check.stderr)
  const info = await run('qemu-img', ['info', '--backing-chain', '-f', 'vmdk', top])
  t.equal(info.status, 0, info.stderr)
  t.match(info.stdout, /backing file: .*l-0000\.vmdk/)
  // no export open: prepare and commit only write files and the record
  const ds3 = await Datastore.open(dir)
  t.teardown(() => ds3.close())
  await ds3.prepareSnapshot('d', 'cold')
  await ds3.commitSnapshot('d', 'cold')
  const h3 = await ds3.openExport('d')
  t.teardown(() => h3.release())
  t.same(await h3.device.read(0, 8 * K), Buffer.concat([pattern(4 * K, 2), pattern(4 * K, 3)]))
  const s = await ds3.openExport('d@cp')
  t.teardown(() => s.release())
  t.same(await s.device.read(0, 4 * K), pattern(4 * K, 2), 'the snapshot is the disk at the commit')
})

t.test('the commit answers before the old top is frozen; the disk\'s next request waits for the freeze', needs('qemu-img'), async (t) => {
  const { dir, ds, h } = await openDisk(t)
  await h.device.write(0, pattern(64 * K, 1))
  await ds.prepareSnapshot('d', 'cp')
  const freeze = VmdkImage.prototype.freeze
  let release = () => {}
  let frozen = false
  VmdkImage.prototype.freeze = async function (this: VmdkImage) {
    await new Promise<void>((r) => (release = r)) // held until the test lets it go
    await freeze.call(this)
    frozen = true
  }
  t.teardown(() => (VmdkImage.prototype.freeze = freeze))
  await ds.commitSnapshot('d', 'cp')
  t.notOk(frozen, 'answered before the freeze')
  await h.device.write(0, pattern(4 * K, 2)) // writes go on meanwhile
  const next = ds.openExport('d@cp')
  await new Promise((r) => setTimeout(r, 20))
  t.notOk(frozen)
  release()
  const snap = await next
  t.teardown(() => snap.release())
  t.ok(frozen, 'the snapshot export opened after the freeze')
  t.same(await snap.device.read(0, 64 * K), pattern(64 * K, 1))
  const check = await run('qemu-img', ['check', '-f', 'vmdk', join(dir, 'd', 'l-0000.vmdk')])
  t.equal(check.status, 0, `the frozen layer checks clean without -U: ${check.stdout}${check.stderr}`)
})

t.test('a refused change while a snapshot is prepared leaves the commit working (the repair before the next change kept its staged record)', async (t) => {
  const { ds } = await openDisk(t)
  await ds.createSnapshot('d', 's1')
  await ds.prepareSnapshot('d', 'cp')
  await t.rejects(ds.commitSnapshot('d', 's1'), code('Busy'), 'a committed one: refused')
  const c = await ds.commitSnapshot('d', 'cp')
  t.equal(c.name, 'cp')
  t.equal((await ds.readRecord('d')).current, 'cp')
})

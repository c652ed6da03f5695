import t, { type Test } from 'tap'
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import request from 'supertest'
import { shmTmp, pattern } from '../../helpers/peers.js'
import { fsFaults } from '../../helpers/fs-faults.js'

// Every write through a FileHandle, so that fsFaults sees (and can stop) each one. Read when
// file-io.ts loads: set first.
process.env.TANDEM_SYNC_IO = '0'
const { Datastore } = await import('../../../src/server/datastore/index.js')
const { checkImage, isStorageError } = await import('../../../src/disk-formats/index.js')
const { createApp } = await import('../../../src/server/http/app.js')
const { AUTH_OFF_FOR_TESTS } = await import('../../../src/server/http/auth.js')
const { Metrics } = await import('../../../src/server/metrics.js')
type Datastore = Awaited<ReturnType<typeof Datastore.open>>

const faults = await fsFaults()
const SIZE = 1 << 20
const K = 1024

async function writeAt(ds: Datastore, disk: string, parts: [number, number, number][]): Promise<void> {
  const h = await ds.openExport(disk)
  for (const [off, len, seed] of parts) await h.device.write(off, pattern(len, seed))
  await h.release()
}

async function readAll(ds: Datastore, exp: string): Promise<Buffer> {
  const h = await ds.openExport(exp)
  try {
    return await h.device.read(0, SIZE)
  } finally {
    await h.release()
  }
}

/** Content of the disk and of each snapshot. */
type Contents = { current: Buffer; snaps: Map<string, Buffer> }

async function contents(ds: Datastore, disk: string): Promise<Contents> {
  const r = await ds.readRecord(disk)
  const snaps = new Map<string, Buffer>()
  for (const s of r.snapshots) snaps.set(s.name, await readAll(ds, `${disk}@${s.name}`))
  return { current: await readAll(ds, disk), snaps }
}

/**
 * Disk `d`, a snapshot tree with a branch and the current state under d:
 *   a ── b ─┬─ c
 *           └─ d ── (current)
 * Each layer writes somewhere the others also do (whole and partial grains).
 */
async function buildTree(dir: string): Promise<Contents> {
  const ds = await Datastore.open(dir)
  await ds.createDisk('d', SIZE)
  await writeAt(ds, 'd', [[0, 256 * K, 1], [512 * K, 64 * K, 2]])
  await ds.createSnapshot('d', 'a')
  await writeAt(ds, 'd', [[128 * K, 256 * K, 3]])
  await ds.createSnapshot('d', 'b')
  await writeAt(ds, 'd', [[64 * K, 64 * K, 4], [700 * K, 4 * K, 5]])
  await ds.createSnapshot('d', 'c')
  await ds.revertSnapshot('d', 'b')
  await writeAt(ds, 'd', [[300 * K, 100 * K, 6], [960 * K, 64 * K, 7]])
  await ds.createSnapshot('d', 'd')
  await writeAt(ds, 'd', [[0, 64 * K, 8], [900 * K, 512, 9]])
  await ds.createDisk('other', SIZE)
  await writeAt(ds, 'other', [[0, 128 * K, 10]])
  const c = await contents(ds, 'd')
  await ds.close()
  return c
}

/** Every layer of every disk checks clean, and a disk folder holds nothing but its record and layers. */
async function checkFolders(t: Test, dir: string, ds: Datastore, what: string, check = true): Promise<void> {
  for (const disk of await ds.listDisks()) {
    const r = await ds.readRecord(disk)
    const layers = new Set([r.top, ...r.snapshots.map((s) => s.layer)])
    const files = readdirSync(join(dir, disk)).sort()
    const extra = files.filter((f) => f !== 'disk.json' && !layers.has(f))
    if (extra.length) t.fail(`${what}: '${disk}' holds files no record names: ${extra.join(', ')}`)
    for (const l of check ? layers : []) {
      const c = await checkImage(join(dir, disk, l))
      if (c.corruptions || c.leaks || c['check-errors']) t.fail(`${what}: ${disk}/${l} does not check clean: ${c.messages.join('; ')}`)
    }
  }
  const stray = readdirSync(dir).filter((f) => !f.startsWith('.') && !readdirSync(join(dir, f)).includes('disk.json'))
  if (stray.length) t.fail(`${what}: folders that are no disk: ${stray.join(', ')}`)
}

function same(t: Test, got: Buffer, want: Buffer | undefined, what: string): void {
  if (!want || !got.equals(want)) t.fail(`${what}: reads other bytes`)
}

interface Scenario {
  name: string
  op: (ds: Datastore) => Promise<unknown>
  /** checks the state after a stop (restarted) and then makes sure the name is usable; `want` is the state before the op */
  after: (t: Test, ds: Datastore, want: Contents, what: string) => Promise<void>
}

/** The snapshot delete's invariant: every other snapshot and the disk read as before; deleting it again finishes. */
const deleting = (snap: string): Scenario => ({
  name: `delete snapshot ${snap}`,
  op: (ds) => ds.deleteSnapshot('d', snap),
  after: async (t, ds, want, what) => {
    const got = await contents(ds, 'd')
    same(t, got.current, want.current, `${what}: the disk`)
    for (const [n, b] of got.snaps) same(t, b, want.snaps.get(n), `${what}: snapshot ${n}`)
    if (got.snaps.has(snap)) await ds.deleteSnapshot('d', snap) // the retry finishes it
    const again = await contents(ds, 'd')
    same(t, again.current, want.current, `${what}, deleted again: the disk`)
    if (again.snaps.has(snap)) t.fail(`${what}: deleting again left the snapshot`)
    for (const [n, b] of again.snaps) same(t, b, want.snaps.get(n), `${what}, deleted again: snapshot ${n}`)
  },
})

/** After a snapshot create: the disk as before, e (if made) too, and e and the next layer's name usable. */
const created: Scenario['after'] = async (t, ds, want, what) => {
  const got = await contents(ds, 'd')
  same(t, got.current, want.current, `${what}: the disk`)
  if (got.snaps.has('e')) same(t, got.snaps.get('e')!, want.current, `${what}: the new snapshot`)
  else await ds.createSnapshot('d', 'e')
  same(t, await readAll(ds, 'd@e'), want.current, `${what}: e taken after the restart`)
  await writeAt(ds, 'd', [[0, 4 * K, 77]])
  await ds.createSnapshot('d', 'f') // the next layer's name is free too
}

const scenarios: Scenario[] = [
  deleting('a'), // its child b gets a's data; b's children (c, d and the top under d) keep b's CID
  deleting('b'), // two children
  deleting('d'), // the current state's snapshot: the top is the child
  { name: 'create snapshot e', op: (ds) => ds.createSnapshot('d', 'e'), after: created },
  {
    // the export stays open: the new delta is stacked on the open chain, the old top frozen
    name: 'create snapshot e with the disk open and written meanwhile',
    op: async (ds) => {
      const h = await ds.openExport('d')
      try {
        const same = await h.device.read(0, 128 * K) // written back as it is: the content stays
        // both settle before the "restart" (a failed one must not leave the other running)
        const both = await Promise.allSettled([h.device.write(0, same), ds.createSnapshot('d', 'e')])
        for (const r of both) if (r.status === 'rejected') throw r.reason
        await h.device.write(64 * K, same.subarray(64 * K))
        await h.device.flush()
      } finally {
        await h.release()
      }
    },
    after: created,
  },
  {
    name: 'revert to c',
    op: (ds) => ds.revertSnapshot('d', 'c'),
    after: async (t, ds, want, what) => {
      const r = await ds.readRecord('d')
      const got = await contents(ds, 'd')
      same(t, got.current, r.current === 'c' ? want.snaps.get('c') : want.current, `${what}: the disk (current ${r.current})`)
      for (const [n, b] of got.snaps) same(t, b, want.snaps.get(n), `${what}: snapshot ${n}`)
      await ds.revertSnapshot('d', 'a')
      same(t, await readAll(ds, 'd'), want.snaps.get('a'), `${what}: reverted to a after the restart`)
    },
  },
  {
    name: 'create disk x',
    op: (ds) => ds.createDisk('x', SIZE),
    after: async (t, ds, _want, what) => {
      if (!(await ds.listDisks()).includes('x')) await ds.createDisk('x', SIZE)
      await writeAt(ds, 'x', [[0, 4 * K, 5]])
      await ds.createSnapshot('x', 's')
      if (!(await readAll(ds, 'x@s')).subarray(0, 4 * K).equals(pattern(4 * K, 5))) t.fail(`${what}: x@s reads other bytes`)
    },
  },
  {
    name: 'delete disk other',
    op: (ds) => ds.deleteDisk('other'),
    after: async (t, ds, _want, what) => {
      const names = await ds.listDisks()
      if (names.includes('other')) {
        const b = await readAll(ds, 'other')
        if (!b.subarray(0, 128 * K).equals(pattern(128 * K, 10))) t.fail(`${what}: 'other' reads other bytes`)
        await ds.deleteDisk('other')
      }
      await ds.createDisk('other', SIZE)
    },
  },
]

t.test('every datastore operation, stopped after each of its file changes (a kill there), leaves a datastore that opens with every content, every layer clean, every name usable', async (t) => {
  const root = shmTmp(t, 'tandem-stopped-')
  const template = join(root, 'template')
  const want = await buildTree(template)
  const dir = join(root, 'ds')
  for (const sc of scenarios) {
    rmSync(dir, { recursive: true, force: true })
    cpSync(template, dir, { recursive: true })
    const ds0 = await Datastore.open(dir)
    faults.arm(Infinity, 'kill')
    await sc.op(ds0)
    const all = faults.steps
    faults.disarm()
    await ds0.close()
    let finished = 0
    for (let allow = 0; allow < all; allow++) {
      const what = `${sc.name}, stopped after ${allow} of ${all} changes`
      rmSync(dir, { recursive: true, force: true })
      cpSync(template, dir, { recursive: true })
      const ds = await Datastore.open(dir)
      faults.arm(allow, 'kill')
      await sc.op(ds).then(
        () => finished++,
        () => undefined,
      )
      await ds.close() // still "dead": closing changes nothing
      faults.disarm()
      const ds1 = await Datastore.open(dir) // the restart
      try {
        await checkFolders(t, dir, ds1, `${what}, restarted`)
        await sc.after(t, ds1, want, what)
        await checkFolders(t, dir, ds1, `${what}, then used`, false)
      } catch (e) {
        t.fail(`${what}: ${(e as Error).message}`)
      } finally {
        await ds1.close()
      }
    }
    t.pass(`${sc.name}: stopped after each of 0..${all - 1} changes (${finished} finished anyway: their last steps are tidying)`)
  }
})

t.test('a snapshot delete that runs out of space answers NoSpace (507), the connected client carries on, and the retry finishes it', async (t) => {
  const root = shmTmp(t, 'tandem-enospc-')
  const template = join(root, 'template')
  const want = await buildTree(template)
  const dir = join(root, 'ds')
  const steps = new Map<string, number>()
  for (const snap of ['a', 'd']) {
    rmSync(dir, { recursive: true, force: true })
    cpSync(template, dir, { recursive: true })
    const ds0 = await Datastore.open(dir)
    faults.arm(Infinity, 'ENOSPC')
    await ds0.deleteSnapshot('d', snap)
    const all = faults.steps
    steps.set(snap, all)
    faults.disarm()
    await ds0.close()
    for (let allow = 0; allow < all; allow++) {
      const what = `delete ${snap}, out of space after ${allow} of ${all} changes`
      rmSync(dir, { recursive: true, force: true })
      cpSync(template, dir, { recursive: true })
      const ds = await Datastore.open(dir)
      const live = await ds.openExport('d') // a client connected through the delete
      faults.arm(allow, 'ENOSPC')
      const err = await ds.deleteSnapshot('d', snap).then(
        () => null,
        (e: unknown) => e,
      )
      const refused = faults.refused
      faults.disarm()
      try {
        if (refused > 0 && !isStorageError(err, 'NoSpace')) t.fail(`${what}: failed with ${String(err)}, not NoSpace`)
        if (refused === 0 && err) t.fail(`${what}: failed with nothing refused: ${String(err)}`)
        same(t, await live.device.read(0, SIZE), want.current, `${what}: the connected client`)
        await live.device.write(SIZE - 4 * K, pattern(4 * K, 99))
        await live.device.flush()
        const now = Buffer.from(want.current)
        pattern(4 * K, 99).copy(now, SIZE - 4 * K)
        if ((await ds.readRecord('d')).snapshots.some((s) => s.name === snap)) await ds.deleteSnapshot('d', snap)
        const got = await contents(ds, 'd')
        same(t, got.current, now, `${what}, retried: the disk`)
        if (got.snaps.has(snap)) t.fail(`${what}: the retry left the snapshot`)
        for (const [n, b] of got.snaps) same(t, b, want.snaps.get(n), `${what}, retried: snapshot ${n}`)
        await checkFolders(t, dir, ds, `${what}, retried`)
      } finally {
        await live.release()
        await ds.close()
      }
    }
    t.pass(`delete ${snap}: out of space at each of 0..${all - 1} changes`)
  }

  // over REST: the status is 507 with a JSON error
  rmSync(dir, { recursive: true, force: true })
  cpSync(template, dir, { recursive: true })
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  const app = createApp({ ds, log: pino({ level: 'silent' }), metrics: new Metrics({ processMetrics: false }), advertise: { host: '127.0.0.1', nbdPort: 1, iscsiPort: 1 }, auth: AUTH_OFF_FOR_TESTS })
  faults.arm(Math.floor(steps.get('a')! / 2), 'ENOSPC') // inside the rebase of b's layer
  const res = await request(app).delete('/api/v1/disks/d/snapshots/a')
  faults.disarm()
  t.equal(res.status, 507)
  t.equal(res.body.error.code, 'NoSpace')
  await request(app).delete('/api/v1/disks/d/snapshots/a').expect(204)
  same(t, await readAll(ds, 'd@b'), want.snaps.get('b'), 'after the retry: b')
})

t.test('a disk whose record cannot be read does not keep the datastore from opening', async (t) => {
  const dir = shmTmp(t, 'tandem-damaged-')
  const ds0 = await Datastore.open(dir)
  await ds0.createDisk('good', SIZE)
  await ds0.createDisk('bad', SIZE)
  await ds0.close()
  writeFileSync(join(dir, 'bad', 'disk.json'), '{"version": 1, "na')
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  t.match(ds.repairs, [{ disk: 'bad', done: [/could not be repaired: .*invalid disk record/] }])
  await writeAt(ds, 'good', [[0, 4 * K, 3]])
  await ds.createSnapshot('good', 's')
  await t.rejects(ds.createSnapshot('bad', 's'), { code: 'Corrupt' })
  // a name that is no disk's never reaches a path (the repair before a change included)
  writeFileSync(join(dir, 'l-0001.vmdk'), 'not a layer of any disk')
  for (const name of ['..', '.', 'a/..', '']) await t.rejects(ds.createSnapshot(name, 's'), { code: 'InvalidArgument' })
  t.ok(existsSync(join(dir, 'l-0001.vmdk')), 'nothing outside a disk folder was tidied')
})

t.test("an older Tandem's half-created disk folder is removed at open; a folder that is not Tandem's is left alone", async (t) => {
  const dir = shmTmp(t, 'tandem-leftover-')
  const ds0 = await Datastore.open(dir)
  await ds0.createDisk('model', SIZE)
  await ds0.close()
  mkdirSync(join(dir, 'old'))
  cpSync(join(dir, 'model', 'l-0000.vmdk'), join(dir, 'old', 'l-0000.vmdk')) // mkdir, base layer, then killed
  writeFileSync(join(dir, 'old', '.disk.json.tmp-4242'), '{')
  mkdirSync(join(dir, 'notes'))
  writeFileSync(join(dir, 'notes', 'todo.txt'), 'keep me')
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  t.match(ds.repairs, [{ disk: 'old', done: [/removed 'old', a disk create that did not finish/] }])
  t.notOk(existsSync(join(dir, 'old')), 'the leftover is gone')
  t.ok(existsSync(join(dir, 'notes', 'todo.txt')), 'the foreign folder stays')
  t.same(await ds.listDisks(), ['model'])
  await ds.createDisk('old', SIZE)
  t.same(await ds.listDisks(), ['model', 'old'])
})

import t, { type Test } from 'tap'
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { serve } from '../../src/server/serve.js'
import { FileLockStorage, LockManager, recordOffset, regionSize, type HostView, type LockView } from '../../src/disk-formats/lock-region/index.js'
import { TestNbdClient } from '../helpers/nbd-client.js'
import { have, pattern, run, tmp } from '../helpers/peers.js'
import { startServer } from '../helpers/server.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const get = async (port: number, path: string) => {
  const r = await fetch(`http://127.0.0.1:${port}${path}`)
  return { status: r.status, body: (await r.json()) as Record<string, unknown> & { locks?: LockView[]; hosts?: HostView[]; error?: { code: string; message: string } } }
}
const DEFAULT_REGION = regionSize({ maxHosts: 64, maxLocks: 256 })

/** A datastore folder whose `.tandem/lockspace` is prepared by `prep` before the server starts. */
function datastore(t: Test, prep: (path: string) => void): string {
  const dir = tmp(t, 'tandem-ds-')
  mkdirSync(join(dir, '.tandem'))
  prep(join(dir, '.tandem', 'lockspace'))
  return dir
}
async function start(t: Test, dir: string, lockHost = 'srv') {
  const s = await serve({ datastore: dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0, lockHost }, pino({ level: 'silent' }))
  t.teardown(() => s.close())
  return s
}
/** Disks are served: bytes written over NBD read back. */
async function servesDisks(t: Test, s: Awaited<ReturnType<typeof start>>, name: string) {
  await s.ds.createDisk(name, 1 << 20)
  const c = await TestNbdClient.open(s.nbdPort, name)
  const data = pattern(4096, 7)
  t.equal((await c.pwrite(8192, data)).errno, 0)
  t.same((await c.pread(8192, 4096)).data, data, 'a disk is served while the lockspace is unusable')
  c.disconnect()
}

/** Another host, joined to the lockspace at `path` and holding `lock`; it leaves at teardown. */
async function hostHolding(t: Test, path: string, host: string, lock: string): Promise<LockManager> {
  const storage = await FileLockStorage.open(path)
  const m = new LockManager(storage, host)
  await m.join()
  await m.acquire(lock)
  t.teardown(async () => {
    await m.leave().catch(() => undefined)
    await storage.close()
  })
  return m
}

t.test('the server holds disk/<name> while the disk is open for writing, and lets go at shutdown', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('vm1', 1 << 20)
  const c = await TestNbdClient.open(s.nbdPort, 'vm1')
  t.equal((await c.pwrite(0, pattern(512, 1))).errno, 0)
  const held = await get(s.httpPort, '/api/v1/locks/disk%2Fvm1')
  t.equal(held.status, 200)
  t.match(held.body, { name: 'disk/vm1', state: 'exclusive', owner: s.locks.hostName, generation: 1 })
  await sleep(700)
  const hosts = await get(s.httpPort, '/api/v1/hosts')
  t.match(hosts.body.hosts, [{ name: s.locks.hostName, state: 'live', alive: true }], 'the server is a host of its lockspace')
  // a read-only snapshot export takes no lock
  await s.ds.createSnapshot('vm1', 's1')
  const snap = await TestNbdClient.open(s.nbdPort, 'vm1@s1')
  snap.disconnect()
  t.same((await get(s.httpPort, '/api/v1/locks')).body.locks!.map((l) => l.name), ['disk/vm1'])
  c.disconnect()
  await s.close()
  const storage = await FileLockStorage.open(s.locks.path)
  t.teardown(() => storage.close())
  const v = await new LockManager(storage, 'observer').view()
  t.match(v.locks, [{ name: 'disk/vm1', state: 'free', owner: null }], 'released at shutdown')
  t.match(v.hosts, [{ name: s.locks.hostName, state: 'left' }])
})

t.test('a disk held by another live host is not opened for writing', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('shared', 1 << 20)
  const other = await hostHolding(t, s.locks.path, 'esx-02', 'disk/shared')
  if (have('nbdinfo')) {
    const r = await run('nbdinfo', [s.uri('shared')], { timeout: 20_000 })
    t.not(r.status, 0, 'an NBD client is refused the export')
  }
  await t.rejects(s.ds.openExport('shared'), { code: 'Busy', message: /disk 'shared' is in use by another host: lock 'disk\/shared' is held by host 'esx-02'/ })
  await other.release('disk/shared')
  const c = await TestNbdClient.open(s.nbdPort, 'shared')
  t.equal((await c.pwrite(0, pattern(512, 2))).errno, 0, 'free again: opened')
  c.disconnect()
})

for (const [what, prep] of [
  ['empty (a first start that crashed before the header)', (p: string) => writeFileSync(p, '')],
  ['all zero', (p: string) => writeFileSync(p, Buffer.alloc(DEFAULT_REGION))],
] as const) {
  t.test(`a lockspace never initialised (${what}) is initialised at start`, async (t) => {
    const s = await start(t, datastore(t, prep))
    const r = await get(s.httpPort, '/api/v1/locks')
    t.equal(r.status, 200)
    t.same(r.body, { locks: [] })
    t.equal(readFileSync(s.locks.path).readUInt32LE(0), 0x4b4c4454, 'it has a header now')
  })
}

t.test('a damaged lockspace: the server starts, serves disks, and the lock routes say 503 with the reason', async (t) => {
  const dir = datastore(t, (p) => {
    const b = Buffer.alloc(DEFAULT_REGION)
    b.write('this is not a lockspace header', 0)
    b.write('but something lives here', 4096)
    writeFileSync(p, b)
  })
  const s = await start(t, dir)
  for (const path of ['/api/v1/locks', '/api/v1/hosts', '/api/v1/locks/x']) {
    const r = await get(s.httpPort, path)
    t.equal(r.status, 503, path)
    t.match(r.body.error, { code: 'Unavailable', message: /lockspace .* is unusable: .*not a Tandem lockspace/ })
  }
  await servesDisks(t, s, 'd1')
  t.notOk(readFileSync(s.locks.path).subarray(0, 30).toString().startsWith('TDLK'), 'left alone for the operator')
  // the README's repair: move it aside; the running server starts a new one and takes its open disk's lock
  renameSync(s.locks.path, `${s.locks.path}.damaged`)
  let r = await get(s.httpPort, '/api/v1/locks')
  // until the open disk's lock is taken (CI once read it between the record's creation and the acquire: 'free')
  const taken = () => r.status === 200 && (r.body.locks as { state: string }[] | undefined)?.some((l) => l.state === 'exclusive')
  for (let i = 0; i < 100 && !taken(); i++) {
    await sleep(100)
    r = await get(s.httpPort, '/api/v1/locks')
  }
  t.equal(r.status, 200)
  t.match(r.body.locks, [{ name: 'disk/d1', state: 'exclusive', owner: 'srv' }], 'repaired while running: the open disk is locked again')
})

t.test('a lockspace truncated while a lock is held: 503, not an empty list', async (t) => {
  const s = await startServer(t)
  const storage = await FileLockStorage.open(s.locks.path)
  const m = new LockManager(storage, 'esx-01')
  await m.join()
  await m.acquire('vm1')
  t.teardown(async () => {
    m.halt()
    await storage.close()
  })
  t.equal((await get(s.httpPort, '/api/v1/locks')).status, 200)
  const fd = openSync(s.locks.path, 'r+')
  ftruncateSync(fd, 4096)
  closeSync(fd)
  const r = await get(s.httpPort, '/api/v1/locks')
  t.equal(r.status, 503)
  t.match(r.body.error?.message, /truncated/)
  // noticed without a request too: the server stops trusting it and tries it afresh
  await sleep(2500)
  const again = await get(s.httpPort, '/api/v1/hosts')
  t.equal(again.status, 503)
  t.match(again.body.error?.message, /truncated|not a Tandem lockspace/)
})

t.test('one corrupt unused record: the lock routes still answer, listing it; the holder stays visible', async (t) => {
  const s = await startServer(t)
  await hostHolding(t, s.locks.path, 'esx-01', 'vm1')
  const fd = openSync(s.locks.path, 'r+')
  writeSync(fd, Buffer.alloc(32, 0xa5), 0, 32, recordOffset({ maxHosts: 64 }, 200) + 8)
  closeSync(fd)
  const r = await get(s.httpPort, '/api/v1/locks')
  t.equal(r.status, 200)
  t.match(r.body.locks, [{ name: 'vm1', state: 'exclusive', owner: 'esx-01' }, { state: 'damaged', record: 200, error: /lock record 200/ }])
  t.equal((await get(s.httpPort, '/api/v1/hosts')).status, 200)
})

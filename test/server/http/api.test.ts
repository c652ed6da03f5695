import t from 'tap'
import request from 'supertest'
import { pino } from 'pino'
import { Datastore } from '../../../src/server/datastore/index.js'
import { createApp } from '../../../src/server/http/app.js'
import { AUTH_OFF_FOR_TESTS } from '../../../src/server/http/auth.js'
import { Metrics } from '../../../src/server/metrics.js'
import { tmp, pattern } from '../../helpers/peers.js'

async function app(t: { teardown(fn: () => unknown): void }) {
  const ds = await Datastore.open(tmp(t, 'tandem-api-'))
  t.teardown(() => ds.close())
  const a = createApp({ ds, log: pino({ level: 'silent' }), metrics: new Metrics({ processMetrics: false }), advertise: { host: '127.0.0.1', nbdPort: 10809, iscsiPort: 3260 }, auth: AUTH_OFF_FOR_TESTS })
  return { ds, a }
}

const isError = (code: string) => (res: request.Response) => {
  if (res.body?.error?.code !== code || typeof res.body.error.message !== 'string') {
    throw new Error(`expected error ${code}, got ${JSON.stringify(res.body)}`)
  }
}

t.test('disks: create, list, show, delete', async (t) => {
  const { a } = await app(t)
  await request(a).get('/api/v1/health').expect(200)
  const c = await request(a).post('/api/v1/disks').send({ name: 'vm1', size: '64M' }).expect(201)
  t.equal(c.headers.location, '/api/v1/disks/vm1')
  t.equal(c.body.size, 64 << 20)
  t.equal(c.body.nbd, 'nbd://127.0.0.1:10809/vm1')
  t.same(c.body.iscsi, { iqn: 'iqn.2026-11.local.tandem:vm1', portal: '127.0.0.1:3260', lun: 0 })
  t.same(c.body.chain, ['l-0000.vmdk'])
  t.ok(c.body.actualSize > 0)
  await request(a).post('/api/v1/disks').send({ name: 'vm2', size: 1048576 }).expect(201)
  const list = await request(a).get('/api/v1/disks').expect(200)
  t.same(list.body.disks.map((d: { name: string }) => d.name), ['vm1', 'vm2'])
  await request(a).delete('/api/v1/disks/vm2').expect(204)
  await request(a).get('/api/v1/disks/vm2').expect(404).expect(isError('NotFound'))
})

t.test('bad input: 400, 404, 409 with JSON errors', async (t) => {
  const { a, ds } = await app(t)
  await request(a).post('/api/v1/disks').send({ name: '../x', size: '1M' }).expect(400).expect(isError('InvalidArgument'))
  await request(a).post('/api/v1/disks').send({ name: '.hidden', size: '1M' }).expect(400)
  await request(a).post('/api/v1/disks').send({ name: 'a'.repeat(65), size: '1M' }).expect(400)
  await request(a).post('/api/v1/disks').send({ name: 'ok', size: 'lots' }).expect(400).expect(isError('InvalidArgument'))
  await request(a).post('/api/v1/disks').send({ name: 'ok', size: -5 }).expect(400)
  await request(a).post('/api/v1/disks').send({ size: '1M' }).expect(400)
  await request(a).post('/api/v1/disks').send([1, 2]).expect(400)
  await request(a).post('/api/v1/disks').set('content-type', 'application/json').send('{"name": ').expect(400).expect(isError('InvalidArgument'))
  await request(a).post('/api/v1/disks').set('content-type', 'application/json').send(JSON.stringify({ name: 'x', size: '1M', pad: 'z'.repeat(100000) })).expect(413)
  await request(a).post('/api/v1/disks').send({ name: 'ok', size: '1M' }).expect(201)
  await request(a).post('/api/v1/disks').send({ name: 'ok', size: '1M' }).expect(409).expect(isError('Exists'))
  await request(a).get('/api/v1/disks/nope').expect(404).expect(isError('NotFound'))
  await request(a).get('/api/v1/disks/%2e%2e').expect(400)
  await request(a).get('/api/v1/nothing').expect(404).expect(isError('NotFound'))
  await request(a).post('/api/v1/disks/ok/snapshots').send({}).expect(400)
  await request(a).post('/api/v1/disks/ok/snapshots/nope/revert').expect(404)
  await request(a).delete('/api/v1/disks/ok/snapshots/nope').expect(404)
  await request(a).put('/api/v1/disks/ok/access').send({ initiators: 'iqn.x' }).expect(400)
  await request(a).put('/api/v1/disks/ok/access').send({ initiators: [], chap: { user: 'u', secret: 'short' } }).expect(400)
  // a disk in use cannot be deleted
  const h = await ds.openExport('ok')
  await request(a).delete('/api/v1/disks/ok').expect(409).expect(isError('Busy'))
  await h.release()
  await request(a).delete('/api/v1/disks/ok').expect(204)
})

t.test('snapshot tree over REST, content checked through the datastore', async (t) => {
  const { a, ds } = await app(t)
  await request(a).post('/api/v1/disks').send({ name: 'd', size: '1M' }).expect(201)
  const write = async (buf: Buffer) => {
    const h = await ds.openExport('d')
    await h.device.write(0, buf)
    await h.release()
  }
  const read = async (e: string) => {
    const h = await ds.openExport(e)
    const b = await h.device.read(0, 4096)
    await h.release()
    return b
  }
  const A = pattern(4096, 1)
  const B = pattern(4096, 2)
  await write(A)
  const s1 = await request(a).post('/api/v1/disks/d/snapshots').send({ name: 's1' }).expect(201)
  t.same({ name: s1.body.name, parent: s1.body.parent, isCurrent: s1.body.isCurrent }, { name: 's1', parent: null, isCurrent: true })
  await request(a).post('/api/v1/disks/d/snapshots').send({ name: 's1' }).expect(409)
  await write(B)
  await request(a).post('/api/v1/disks/d/snapshots').send({ name: 's2' }).expect(201)
  const tree = await request(a).get('/api/v1/disks/d/snapshots').expect(200)
  t.equal(tree.body.current, 's2')
  t.same(tree.body.snapshots.map((s: { name: string; parent: string | null }) => [s.name, s.parent]), [['s1', null], ['s2', 's1']])
  const rv = await request(a).post('/api/v1/disks/d/snapshots/s1/revert').expect(200)
  t.equal(rv.body.current, 's1')
  t.ok((await read('d')).equals(A), 'revert: current reads s1')
  t.ok((await read('d@s2')).equals(B), 's2 still reads B')
  await request(a).delete('/api/v1/disks/d/snapshots/s1').expect(204)
  t.ok((await read('d')).equals(A), 'delete s1: current unchanged')
  t.ok((await read('d@s2')).equals(B), 'delete s1: s2 unchanged')
  const d = await request(a).get('/api/v1/disks/d').expect(200)
  t.same(d.body.snapshots.map((s: { name: string }) => s.name), ['s2'])
})

t.test('access lists never return CHAP secrets; openapi and metrics', async (t) => {
  const { a } = await app(t)
  await request(a).post('/api/v1/disks').send({ name: 'd', size: '1M' }).expect(201)
  const r = await request(a)
    .put('/api/v1/disks/d/access')
    .send({ initiators: ['iqn.2026-11.local.host:a'], chap: { user: 'u', secret: 'a-long-secret-1' } })
    .expect(200)
  t.same(r.body, { initiators: ['iqn.2026-11.local.host:a'], chap: true })
  const g = await request(a).get('/api/v1/disks/d').expect(200)
  t.notMatch(JSON.stringify(g.body), /a-long-secret-1/)
  const o = await request(a).get('/api/v1/openapi.json').expect(200)
  t.equal(o.body.openapi, '3.0.3')
  t.ok(o.body.paths['/api/v1/disks/{name}/snapshots/{snap}/revert'])
  t.ok(o.body.paths['/api/v1/disks/{name}/snapshots/{snap}/commit'].post, 'the prepared snapshot commit')
  t.ok(o.body.paths['/api/v1/disks/{name}/snapshots'].post.requestBody.content['application/json'].schema.properties.prepare)
  const m = await request(a).get('/metrics').expect(200)
  t.match(m.text, /# TYPE tandem_export_bytes_total counter/)
})

t.test('serve creates the lockspace; /api/v1/locks and /hosts show a host holding a lock', async (t) => {
  const { startServer } = await import('../../helpers/server.js')
  const { FileLockStorage, LockManager } = await import('../../../src/disk-formats/lock-region/index.js')
  const s = await startServer(t)
  const storage = await FileLockStorage.open(s.locks.path)
  const m = new LockManager(storage, 'esx-01')
  await m.join()
  await m.acquire('vm1.vmdk')
  const base = `http://127.0.0.1:${s.httpPort}`
  await new Promise((r) => setTimeout(r, 600)) // two observations a heartbeat apart
  const hosts = (await (await fetch(`${base}/api/v1/hosts`)).json()) as { hosts: { name: string; alive: boolean; slot: number }[] }
  t.same(hosts.hosts.filter((h) => h.name === 'esx-01').map((h) => [h.name, h.alive]), [['esx-01', true]])
  const lock = (await (await fetch(`${base}/api/v1/locks/vm1.vmdk`)).json()) as Record<string, unknown>
  t.match(lock, { name: 'vm1.vmdk', state: 'exclusive', owner: 'esx-01', generation: 1 })
  t.type(lock.ownerHeartbeatAgeMs, 'number')
  const missing = await fetch(`${base}/api/v1/locks/nope`)
  t.equal(missing.status, 404)
  await m.leave()
  await storage.close()
})

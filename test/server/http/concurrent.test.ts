import t, { type Test } from 'tap'
import { existsSync, readdirSync } from 'node:fs'
import { createServer } from 'node:http'
import { join } from 'node:path'
import request from 'supertest'
import { pino } from 'pino'
import { shmTmp, pattern, rng } from '../../helpers/peers.js'
import { fsFaults } from '../../helpers/fs-faults.js'

// stat and readdir slowed down (below) widen the windows in which requests overlap
const faults = await fsFaults()
const { Datastore } = await import('../../../src/server/datastore/index.js')
const { createApp } = await import('../../../src/server/http/app.js')
const { AUTH_OFF_FOR_TESTS } = await import('../../../src/server/http/auth.js')
const { Metrics } = await import('../../../src/server/metrics.js')
type Datastore = Awaited<ReturnType<typeof Datastore.open>>

const SIZE = 1 << 20

async function app(t: Test) {
  const dir = shmTmp(t, 'tandem-conc-')
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  const app = createApp({ ds, log: pino({ level: 'silent' }), metrics: new Metrics({ processMetrics: false }), advertise: { host: '127.0.0.1', nbdPort: 1, iscsiPort: 1 }, auth: AUTH_OFF_FOR_TESTS })
  // one listening server, so that a burst's requests reach the datastore together
  const a = createServer(app)
  await new Promise<void>((r) => a.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => a.close(() => r())))
  return { a, ds, dir }
}

/** Every disk's record names layers that exist (and no others are left), and every export opens. */
async function consistent(t: Test, ds: Datastore, dir: string, what: string): Promise<void> {
  for (const disk of await ds.listDisks()) {
    const r = await ds.readRecord(disk)
    const layers = new Set([r.top, ...r.snapshots.map((s) => s.layer)])
    for (const l of layers) if (!existsSync(join(dir, disk, l))) t.fail(`${what}: '${disk}' names a missing layer ${l}`)
    const extra = readdirSync(join(dir, disk)).filter((f) => f !== 'disk.json' && !layers.has(f))
    if (extra.length) t.fail(`${what}: '${disk}' holds files no record names: ${extra.join(', ')}`)
    for (const e of [disk, ...r.snapshots.map((s) => `${disk}@${s.name}`)]) {
      const h = await ds.openExport(e)
      await h.device.read(0, 4096)
      await h.release()
    }
  }
}

t.test('many requests on one disk at once never answer 500 and leave a consistent datastore', async (t) => {
  const { a, ds, dir } = await app(t)
  const r = rng(13)
  const seen = new Map<string, number>()
  const fire = (req: request.Test, what: string) =>
    req.then((res) => {
      const key = `${what} ${res.status}`
      seen.set(key, (seen.get(key) ?? 0) + 1)
      if (res.status >= 500) t.fail(`${what}: ${res.status} ${JSON.stringify(res.body)}`)
      return res
    })
  await request(a).post('/api/v1/disks').send({ name: 'd', size: SIZE }).expect(201)
  faults.slow(3)
  t.teardown(() => faults.slow(0))
  let made = 0
  for (let round = 0; round < 12; round++) {
    const h = await ds.openExport('d')
    await h.device.write((r() % 16) * 65536, pattern(65536, round))
    await h.release()
    const snaps = (await ds.readRecord('d')).snapshots.map((s) => s.name)
    const pick = () => snaps[r() % snaps.length]
    const burst: Promise<unknown>[] = []
    for (let i = 0; i < 3; i++) burst.push(fire(request(a).post('/api/v1/disks/d/snapshots').send({ name: `s${made++}` }), 'create snapshot'))
    for (let i = 0; i < 16; i++) burst.push(fire(request(a).get('/api/v1/disks/d'), 'describe'))
    burst.push(fire(request(a).get('/api/v1/disks'), 'list'))
    burst.push(fire(request(a).get('/api/v1/disks/d/snapshots'), 'snapshots'))
    if (snaps.length) {
      burst.push(fire(request(a).post(`/api/v1/disks/d/snapshots/${pick()}/revert`), 'revert'))
      burst.push(fire(request(a).delete(`/api/v1/disks/d/snapshots/${pick()}`), 'delete snapshot'))
      burst.push(fire(request(a).delete(`/api/v1/disks/d/snapshots/${pick()}`), 'delete snapshot'))
    }
    await Promise.all(burst)
    await consistent(t, ds, dir, `round ${round}`)
  }
  // a stream of requests over the disk's deletion and re-creation: those queued behind a delete
  // find no disk (404) or, behind a create, the new one; none runs beside a delete or a create
  const stream: Promise<request.Response>[] = []
  for (let i = 0; i < 160; i++) {
    const k = r() % 8
    if (k === 0) stream.push(fire(request(a).delete('/api/v1/disks/d'), 'delete disk'))
    else if (k === 1) stream.push(fire(request(a).post('/api/v1/disks').send({ name: 'd', size: SIZE }), 'create disk'))
    else if (k <= 4) stream.push(fire(request(a).post('/api/v1/disks/d/snapshots').send({ name: `q${made++}` }), 'create snapshot'))
    else if (k === 5) stream.push(fire(request(a).get('/api/v1/disks'), 'list'))
    else stream.push(fire(request(a).get('/api/v1/disks/d'), 'describe'))
    await new Promise((res) => setTimeout(res, r() % 3))
  }
  for (const res of await Promise.all(stream)) if (![200, 201, 204, 404, 409].includes(res.status)) t.fail(`status ${res.status}: ${JSON.stringify(res.body)}`)
  await consistent(t, ds, dir, 'after the stream')
  t.comment([...seen].sort().map(([k, n]) => `${k}: ${n}`).join(', '))
  t.notOk([...seen.keys()].some((k) => k.endsWith(' 500')), 'no request answered 500')
})

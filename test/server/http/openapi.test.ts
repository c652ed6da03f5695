import t from 'tap'
import { pino } from 'pino'
import { openApi } from '../../../src/server/http/openapi.js'
import { createApp } from '../../../src/server/http/app.js'
import { AUTH_OFF_FOR_TESTS } from '../../../src/server/http/auth.js'
import { Metrics } from '../../../src/server/metrics.js'
import { DISK_KEYS, SNAPSHOT_KEYS, SNAPSHOT_MADE_KEYS, SNAPSHOT_TREE_KEYS } from '../../../src/client/api/tandem.js'
import { validate } from '../../helpers/json-schema.js'
import { bearer, startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'

type Op = { responses: Record<string, { content?: Record<string, { schema?: Record<string, unknown> }> }> }
const paths = openApi.paths as unknown as Record<string, Record<string, Op>>
const METHODS = ['get', 'put', 'post', 'delete', 'patch']
/** every operation of the document, `GET /api/v1/disks/{name}` */
const documented = Object.entries(paths).flatMap(([p, ops]) => Object.keys(ops).filter((m) => METHODS.includes(m)).map((m) => `${m.toUpperCase()} ${p}`))

t.test('every route of the app is in the document, and every operation of the document is a route', async (t) => {
  const app = createApp({ ds: {} as never, log: pino({ level: 'silent' }), metrics: new Metrics({ processMetrics: false }), advertise: { host: '127.0.0.1', nbdPort: 1, iscsiPort: 1 }, auth: AUTH_OFF_FOR_TESTS })
  const stack = (app as unknown as { router: { stack: { route?: { path: string | RegExp; methods: Record<string, boolean> } }[] } }).router.stack
  // the console's files (one pattern route for GET /<file>) are the web page, not the API
  const api = stack.filter((l) => typeof l.route?.path === 'string')
  const routes = api.flatMap((l) => Object.keys(l.route!.methods).map((m) => `${m.toUpperCase()} ${(l.route!.path as string).replace(/:(\w+)/g, '{$1}')}`))
  t.same([...routes].sort(), [...documented].sort())
})

t.test('the typed client\'s types name exactly the document\'s schema properties', async (t) => {
  const schemas = openApi.components.schemas as Record<string, { properties: Record<string, unknown>; required: string[] }>
  for (const [name, keys] of Object.entries({ Snapshot: SNAPSHOT_KEYS, SnapshotMade: SNAPSHOT_MADE_KEYS, SnapshotTree: SNAPSHOT_TREE_KEYS, Disk: DISK_KEYS })) {
    t.same(Object.keys(keys).sort(), Object.keys(schemas[name].properties).sort(), `${name}: the same fields`)
    t.same([...schemas[name].required].sort(), Object.keys(keys).sort(), `${name}: all required (the client's fields are not optional)`)
  }
})

t.test('real answers of every route validate against the document', async (t) => {
  const s = await startServer(t, { faultInjection: true })
  const url = `http://127.0.0.1:${s.httpPort}`
  const seen = new Set<string>()
  /** Sends `method template` (with `{x}` filled from `params`), checks the answer against the document, returns it. */
  const call = async (method: string, template: string, params: Record<string, string> = {}, body?: unknown, o: { token?: boolean } = {}) => {
    const path = template.replace(/\{(\w+)\}/g, (_m, k: string) => encodeURIComponent(params[k]))
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...(o.token === false ? {} : bearer(s.apiToken)) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    const text = await res.text()
    const op = paths[template]?.[method.toLowerCase()]
    if (!op) throw new Error(`${method} ${template} is not in the document`)
    const doc = op.responses[String(res.status)]
    const what = `${method} ${path} → ${res.status}`
    if (!doc) {
      t.fail(`${what}: status not documented (${text})`)
      return { status: res.status, body: null as never }
    }
    seen.add(`${method} ${template} ${res.status}`)
    const ct = Object.keys(doc.content ?? {})[0]
    if (ct === 'application/json') {
      const parsed = JSON.parse(text)
      const problems = validate(openApi, doc.content![ct].schema!, parsed)
      t.same(problems, [], what)
      return { status: res.status, body: parsed }
    }
    t.equal(text === '', ct === undefined, `${what}: a body exactly when one is documented`)
    return { status: res.status, body: text as never }
  }
  const expect = async (status: number, ...a: Parameters<typeof call>) => {
    const r = await call(...a)
    t.equal(r.status, status, `${a[0]} ${a[1]} ${JSON.stringify(a[2] ?? {})}: ${status}`)
    return r.body
  }
  const D = '/api/v1/disks/{name}'
  const SN = `${D}/snapshots/{snap}`
  await expect(200, 'GET', '/api/v1/health')
  await expect(200, 'GET', '/api/v1/openapi.json')
  await expect(200, 'GET', '/metrics')
  await expect(201, 'POST', '/api/v1/disks', {}, { name: 'd', size: '1M' })
  await expect(401, 'POST', '/api/v1/disks', {}, { name: 'e', size: '1M' }, { token: false })
  await expect(400, 'POST', '/api/v1/disks', {}, { name: 'e', size: -1 })
  await expect(409, 'POST', '/api/v1/disks', {}, { name: 'd', size: '1M' })
  await expect(200, 'GET', '/api/v1/disks')
  await expect(200, 'GET', D, { name: 'd' })
  await expect(404, 'GET', D, { name: 'nope' })
  await expect(400, 'GET', D, { name: '.bad' })
  await expect(200, 'GET', `${D}/snapshots`, { name: 'd' })
  await expect(404, 'GET', `${D}/snapshots`, { name: 'nope' })
  await expect(201, 'POST', `${D}/snapshots`, { name: 'd' }, { name: 's1', description: 'first' })
  await expect(400, 'POST', `${D}/snapshots`, { name: 'd' }, { name: 's2', prepare: 'yes' })
  await expect(409, 'POST', `${D}/snapshots`, { name: 'd' }, { name: 's1' })
  await expect(404, 'POST', `${D}/snapshots`, { name: 'nope' }, { name: 's1' })
  await expect(201, 'POST', `${D}/snapshots`, { name: 'd' }, { name: 'cp', prepare: true })
  await expect(409, 'POST', `${SN}/commit`, { name: 'd', snap: 's1' })
  await expect(200, 'POST', `${SN}/commit`, { name: 'd', snap: 'cp' })
  await expect(404, 'POST', `${SN}/commit`, { name: 'd', snap: 'nope' })
  await expect(200, 'GET', SN, { name: 'd', snap: 's1' })
  await expect(404, 'GET', SN, { name: 'd', snap: 'nope' })
  await expect(400, 'GET', SN, { name: 'd', snap: '.x' })
  await expect(200, 'POST', `${SN}/revert`, { name: 'd', snap: 's1' })
  await expect(400, 'POST', `${SN}/revert`, { name: 'd', snap: 's1' }, { force: 'yes' })
  await expect(404, 'POST', `${SN}/revert`, { name: 'd', snap: 'nope' })
  await expect(200, 'PUT', `${D}/access`, { name: 'd' }, { initiators: [] })
  await expect(400, 'PUT', `${D}/access`, { name: 'd' }, { initiators: 'x' })
  await expect(404, 'PUT', `${D}/access`, { name: 'nope' }, { initiators: [] })
  // a writer: revert and delete refused, naming it; the disk's lock shows in the lockspace
  const nbd = await TestNbdClient.open(s.nbdPort, 'd')
  t.teardown(() => nbd.destroy())
  const busy = await expect(409, 'POST', `${SN}/revert`, { name: 'd', snap: 's1' })
  t.same(busy.error.connections, { d: 1 })
  await expect(409, 'DELETE', D, { name: 'd' })
  const grownBusy = await expect(409, 'POST', `${D}/grow`, { name: 'd' }, { size: '2M' })
  t.same(grownBusy.error.connections, { d: 1 }, 'grow under a writer names it')
  const locks = await expect(200, 'GET', '/api/v1/locks')
  const lock = (locks.locks as { name: string }[])[0]
  t.ok(lock, 'the writer holds a lock')
  await expect(200, 'GET', '/api/v1/locks/{name}', { name: lock.name })
  await expect(404, 'GET', '/api/v1/locks/{name}', { name: 'nope' })
  nbd.disconnect()
  await expect(204, 'DELETE', SN, { name: 'd', snap: 'cp' })
  // grow: shrink and bad sizes refused, a missing disk 404, without the token 401
  t.equal((await expect(200, 'POST', `${D}/grow`, { name: 'd' }, { size: '2M' })).size, 2 ** 21)
  await expect(400, 'POST', `${D}/grow`, { name: 'd' }, { size: '1M' })
  await expect(400, 'POST', `${D}/grow`, { name: 'd' }, { size: 'big' })
  await expect(400, 'POST', `${D}/grow`, { name: 'd' }, {})
  await expect(404, 'POST', `${D}/grow`, { name: 'nope' }, { size: '2M' })
  await expect(401, 'POST', `${D}/grow`, { name: 'd' }, { size: '3M' }, { token: false })
  await expect(404, 'DELETE', SN, { name: 'd', snap: 'cp' })
  await expect(400, 'DELETE', SN, { name: 'd', snap: '.x' })
  // keys
  await expect(200, 'GET', '/api/v1/nbd/keys')
  const K = '/api/v1/nbd/keys/{identity}'
  await expect(201, 'PUT', K, { identity: 'alice' }, { key: 'ab'.repeat(32) })
  await expect(200, 'PUT', K, { identity: 'alice' }, { key: 'cd'.repeat(32) })
  await expect(400, 'PUT', K, { identity: 'alice' }, { key: 'zz' })
  await expect(204, 'DELETE', K, { identity: 'alice' })
  await expect(404, 'DELETE', K, { identity: 'alice' })
  // lockspace and hosts
  await expect(200, 'GET', '/api/v1/lockspace')
  const hosts = await expect(200, 'GET', '/api/v1/hosts')
  const me = (hosts.hosts as { name: string }[]).find((h) => h.name === s.locks.hostName)
  t.ok(me, 'the server is a host of its lockspace')
  await expect(200, 'GET', '/api/v1/hosts/{name}', { name: s.locks.hostName })
  await expect(404, 'GET', '/api/v1/hosts/{name}', { name: 'nope' })
  await expect(200, 'PUT', '/api/v1/hosts/{name}', { name: 'h1' }, { api: 'http://127.0.0.1:7800' })
  await expect(400, 'PUT', '/api/v1/hosts/{name}', { name: 'h1' }, { api: 'not a url' })
  await expect(401, 'PUT', '/api/v1/hosts/{name}', { name: 'h1' }, { api: 'http://127.0.0.1:7800' }, { token: false })
  // the VMs of the hosts (h1's API does not answer: listed as unreachable)
  await expect(200, 'GET', '/api/v1/vms')
  // run-time disk faults (this server runs with --fault-injection)
  await expect(200, 'PUT', '/api/v1/faults', {}, { faults: [{ disk: 'd', mode: 'delay', ms: 1, op: 'write' }] })
  const faults = await expect(200, 'GET', '/api/v1/faults')
  t.same(faults.faults, [{ disk: 'd', mode: 'delay', ms: 1, op: 'write' }], 'the fault is in force')
  await expect(400, 'PUT', '/api/v1/faults', {}, { faults: [{ disk: 'd', mode: 'melt' }] })
  await expect(401, 'PUT', '/api/v1/faults', {}, { faults: [] }, { token: false })
  await expect(200, 'PUT', '/api/v1/faults', {}, { faults: [] })
  // clones: linked (the base snapshot then cannot go), full, bad input
  await expect(201, 'POST', `${D}/clones`, { name: 'd' }, { name: 'lc', snapshot: 's1' })
  await expect(201, 'POST', `${D}/clones`, { name: 'd' }, { name: 'fc', snapshot: 's1', linked: false })
  await expect(400, 'POST', `${D}/clones`, { name: 'd' }, { name: 'x' })
  await expect(404, 'POST', `${D}/clones`, { name: 'd' }, { name: 'x', snapshot: 'nope' })
  await expect(409, 'POST', `${D}/clones`, { name: 'd' }, { name: 'lc', snapshot: 's1' })
  await expect(409, 'DELETE', SN, { name: 'd', snap: 's1' })
  await expect(409, 'DELETE', D, { name: 'd' })
  await expect(204, 'DELETE', D, { name: 'lc' })
  await expect(204, 'DELETE', D, { name: 'd' })
  await expect(404, 'DELETE', D, { name: 'd' })
  // coverage: every documented operation answered with a success at least once
  const missing = documented.filter((op) => ![...seen].some((x) => x.startsWith(`${op} 2`)))
  t.same(missing, [], 'every operation of the document was exercised')
  // and every documented status of the document was seen, but 500 and 507 (no fault injected here) and 503 (a lockspace that cannot be read)
  const notSeen = Object.entries(paths).flatMap(([p, ops]) =>
    Object.entries(ops)
      .filter(([m]) => METHODS.includes(m))
      .flatMap(([m, op]) => Object.keys(op.responses).filter((st) => !['500', '503', '507'].includes(st) && !seen.has(`${m.toUpperCase()} ${p} ${st}`)).map((st) => `${m.toUpperCase()} ${p} ${st}`)),
  )
  t.comment(`documented statuses not produced here: ${notSeen.join('; ') || 'none'}`)
})

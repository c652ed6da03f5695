import t, { type Test } from 'tap'
import { chmodSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pino } from 'pino'
import { serve } from '../../../src/server/serve.js'
import { CLI, run, tmp } from '../../helpers/peers.js'
import { bearer, spawnServe } from '../../helpers/server.js'

/** An in-process tandem serve on `listen` (auth on, as the CLI starts it), stopped at teardown. */
async function server(t: Test, o: { listen?: string; apiTokenFile?: string } = {}) {
  const dir = tmp(t, 'tandem-auth-')
  const s = await serve({ datastore: dir, listen: o.listen ?? '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0, shutdownGraceMs: 500, apiTokenFile: o.apiTokenFile }, pino({ level: 'silent' }))
  t.teardown(() => s.close())
  return Object.assign(s, { dir, url: `http://127.0.0.1:${s.httpPort}` })
}

const post = (url: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) })

t.test('loopback: the token is made at first start (0600); mutating requests need it, reads do not', async (t) => {
  const s = await server(t)
  const file = join(s.dir, '.tandem', 'api-token')
  t.equal(statSync(file).mode & 0o777, 0o600, 'api-token is mode 0600')
  t.match(s.apiToken, /^[0-9a-f]{64}$/)
  const none = await post(s.url, '/api/v1/disks', { name: 'd', size: '1M' })
  t.equal(none.status, 401)
  t.equal(none.headers.get('www-authenticate'), 'Bearer realm="tandem"')
  t.match(await none.json(), { error: { code: 'Unauthorized', message: /needs the API token/ } })
  const wrong = await post(s.url, '/api/v1/disks', { name: 'd', size: '1M' }, bearer('0'.repeat(64)))
  t.equal(wrong.status, 401)
  t.match(await wrong.json(), { error: { code: 'Unauthorized', message: /not this server's/ } })
  t.equal((await s.ds.listDisks()).length, 0, 'nothing was made by the refused requests')
  t.equal((await post(s.url, '/api/v1/disks', { name: 'd', size: '1M' }, bearer(s.apiToken))).status, 201, 'with the token: created')
  for (const [method, path] of [['DELETE', '/api/v1/disks/d'], ['PUT', '/api/v1/disks/d/access'], ['PUT', '/api/v1/hosts/h1'], ['POST', '/api/v1/disks/d/snapshots']]) {
    t.equal((await fetch(`${s.url}${path}`, { method })).status, 401, `${method} ${path} without the token: 401`)
  }
  t.equal((await fetch(`${s.url}/api/v1/disks/d`)).status, 200, 'a read on loopback needs no token')
  t.equal((await fetch(`${s.url}/metrics`)).status, 200)
  // a second start keeps the token
  await s.close()
  const again = await serve({ datastore: s.dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0, shutdownGraceMs: 500 }, pino({ level: 'silent' }))
  t.teardown(() => again.close())
  t.equal(again.apiToken, s.apiToken, 'the token file is read at the next start')
})

t.test('405 for a wrong method on a known path, with Allow; 404 for an unknown path', async (t) => {
  const s = await server(t)
  const r = await fetch(`${s.url}/api/v1/disks`, { method: 'PUT', headers: bearer(s.apiToken) })
  t.equal(r.status, 405)
  t.equal(r.headers.get('allow'), 'GET, HEAD, POST')
  t.match(await r.json(), { error: { code: 'MethodNotAllowed', message: /PUT is not allowed on \/api\/v1\/disks/ } })
  const g = await fetch(`${s.url}/api/v1/disks/x/snapshots/y/revert`, { headers: bearer(s.apiToken) })
  t.equal(g.status, 405, 'GET on a POST-only path')
  t.equal(g.headers.get('allow'), 'POST')
  t.equal((await fetch(`${s.url}/api/v1/nope`)).status, 404)
})

t.test('off loopback every request needs the token (the token file is made at first start)', async (t) => {
  const s = await server(t, { listen: '0.0.0.0' })
  for (const path of ['/api/v1/disks', '/api/v1/health', '/api/v1/openapi.json', '/metrics']) {
    const r = await fetch(`${s.url}${path}`)
    t.equal(r.status, 401, `GET ${path} without the token: 401`)
  }
  t.equal((await fetch(`${s.url}/api/v1/disks`, { headers: bearer(s.apiToken) })).status, 200, 'with it: 200')
  // the CLI: no token found (health is closed too) unless TANDEM_API_TOKEN gives it
  const no = await run(process.execPath, [CLI, 'lock', 'ls', '--server', s.url], { env: { TANDEM_API_TOKEN: '', TANDEM_DATASTORE: '' } })
  t.equal(no.status, 1)
  t.match(no.stderr, /401: this request needs the API token/)
})

t.test('--api-token-file: made there; a file others can read is refused at start', async (t) => {
  const dir = tmp(t, 'tandem-tokfile-')
  const file = join(dir, 'tok')
  const s = await server(t, { apiTokenFile: file })
  t.equal(statSync(file).mode & 0o777, 0o600)
  t.equal((await post(s.url, '/api/v1/disks', { name: 'd', size: '1M' }, bearer(s.apiToken))).status, 201)
  const loose = join(dir, 'loose')
  writeFileSync(loose, 'a'.repeat(32) + '\n')
  chmodSync(loose, 0o644)
  const p = spawnServe(t, tmp(t, 'tandem-loose-'), ['--api-token-file', loose])
  const exit = await p.exited
  t.equal(exit.code, 1)
  t.match(p.stderr(), /^tandem: the API token file '.*loose' may be read by others \(mode 644\): chmod 600 it\n$/)
})

t.test('the CLI finds the token in the datastore the server names, or in TANDEM_API_TOKEN', async (t) => {
  const s = await server(t)
  const made = await run(process.execPath, [CLI, 'snapshot', 'create', 'nodisk', 'a', '--server', s.url])
  t.equal(made.status, 1)
  t.match(made.stderr, /no disk named 'nodisk'/, 'past the 401: the token was found, the server answered 404')
  const s2 = await server(t, { listen: '0.0.0.0' })
  await s2.ds.createDisk('d', 1 << 20)
  const ls = await run(process.execPath, [CLI, 'snapshot', 'list', 'd', '--server', s2.url, '--json'], { env: { TANDEM_API_TOKEN: s2.apiToken! } })
  t.equal(ls.status, 0, ls.stderr)
  t.same(JSON.parse(ls.stdout).snapshots, [])
})

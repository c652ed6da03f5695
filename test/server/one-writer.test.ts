import t from 'tap'
import { spawn } from 'node:child_process'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { CLI, needs, shStatus, tandem, tmp } from '../helpers/peers.js'
import { bearer, startServer } from '../helpers/server.js'
import { TestNbdClient } from '../helpers/nbd-client.js'

async function post(s: { httpPort: number; apiToken: string | null }, path: string, body: unknown): Promise<Response> {
  return fetch(`http://127.0.0.1:${s.httpPort}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(s.apiToken) }, body: JSON.stringify(body) })
}

t.test('a second tandem serve on a datastore exits non-zero at start, naming the first', async (t) => {
  const s = await startServer(t)
  const child = spawn(process.execPath, [CLI, 'serve', '--datastore', s.dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)))
  t.equal(code, 1, 'exit 1')
  t.match(err, new RegExp(`^tandem: datastore '.*' is in use by tandem serve \\(pid ${process.pid} on host ${hostname()}, since `))
  t.equal(err.trim().split('\n').length, 1, 'one line, no stack trace')
  await s.close()
  // the first one stopped: the datastore is free again
  const again = spawn(process.execPath, [CLI, 'serve', '--datastore', s.dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  await new Promise<void>((r) => again.stdout!.on('data', (d) => String(d).includes('tandem serve ready') && r()))
  again.kill('SIGKILL')
  await new Promise((r) => again.on('exit', r))
})

t.test('files a server has open: qemu-io cannot write them, tandem disk cannot commit them', needs('qemu-io', 'qemu-img'), async (t) => {
  const s = await startServer(t)
  t.equal((await post(s, '/api/v1/disks', { name: 'vm', size: '4M' })).status, 201)
  t.equal((await post(s, '/api/v1/disks/vm/snapshots', { name: 's1' })).status, 201)
  const c = await TestNbdClient.open(s.nbdPort, 'vm')
  t.teardown(() => c.destroy())
  const top = join(s.dir, 'vm', 'l-0001.vmdk')
  const base = join(s.dir, 'vm', 'l-0000.vmdk')
  for (const f of [top, base]) {
    const w = shStatus('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 0 512', f])
    t.not(w.status, 0, `qemu-io cannot write ${f}`)
    t.match(w.stderr, /Failed to get "write" lock/)
  }
  const commit = tandem(['disk', 'commit', top])
  t.equal(commit.status, 1, 'tandem disk commit of the served top is refused')
  t.match(commit.stderr, /^tandem: Failed to get (shared )?"\w[\w ]*" lock on '.*l-000[01]\.vmdk'/)
  t.equal(tandem(['disk', 'info', '-U', top]).status, 0, 'disk info -U inspects it')
  // what the client wrote before is intact (the refused writers changed nothing)
  const r = await c.pread(0, 512)
  t.equal(r.errno, 0)
  t.ok(r.data.equals(Buffer.alloc(512)), 'still zeros')
  c.disconnect()
  await c.closed
  await s.close()
  t.equal(shStatus('qemu-img', ['check', top]).status, 0, 'after the server stopped, qemu-img opens the layer')
})

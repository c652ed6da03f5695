import t, { type Test } from 'tap'
import { connect, createServer, type Socket } from 'node:net'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, run, shStatus, tandem, tmp } from '../helpers/peers.js'
import { TestNbdClient } from '../helpers/nbd-client.js'
import { bearer, spawnServe, startServe } from '../helpers/server.js'

const SIZE = 64 << 20
const FILL = 0xab

function raw(port: number, send?: string): Socket {
  const s = connect(port, '127.0.0.1', () => send && s.write(send))
  s.on('error', () => {})
  return s
}

/**
 * A server with a disk holding unflushed writes, and clients that do not cooperate: one that
 * asked for 128 MiB and never reads, one silent in its NBD handshake, one silent before its iSCSI
 * login, one with half an HTTP request.
 */
async function stuckClients(t: Test) {
  const dir = tmp(t, 'tandem-stop-')
  const p = await startServe(t, dir)
  const res = await fetch(`http://127.0.0.1:${p.httpPort}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(p.token) }, body: JSON.stringify({ name: 'vm', size: SIZE }) })
  t.equal(res.status, 201)
  const w = await TestNbdClient.open(p.nbdPort, 'vm')
  t.equal((await w.pwrite(0, Buffer.alloc(4 << 20, FILL))).errno, 0, 'written, not flushed')
  const stuck = await TestNbdClient.open(p.nbdPort, 'vm')
  stuck.sock.pause()
  for (let i = 0; i < 4; i++) {
    const h = Buffer.alloc(28)
    h.writeUInt32BE(0x25609513, 0) // NBD_REQUEST_MAGIC, NBD_CMD_READ
    h.writeBigUInt64BE(BigInt(i + 1), 8)
    h.writeBigUInt64BE(BigInt(i * (32 << 20)) % BigInt(SIZE), 16)
    h.writeUInt32BE(32 << 20, 24)
    stuck.write(h)
  }
  const others = [raw(p.nbdPort), raw(p.iscsiPort), raw(p.httpPort, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\n')]
  t.teardown(() => [w.sock, stuck.sock, ...others].forEach((s) => s.destroy()))
  // the stuck client's replies are queued by now (the server's send buffer is full)
  await new Promise((r) => setTimeout(r, 500))
  return { dir, p }
}

/** The disk after the server stopped: no layer marked in use, both checkers clean, the writes there. */
async function checkClean(t: Test, dir: string) {
  const rec = JSON.parse(readFileSync(join(dir, 'vm', 'disk.json'), 'utf8'))
  const top = join(dir, 'vm', rec.top)
  t.equal(readFileSync(top)[72], 0, 'uncleanShutdown cleared')
  const check = tandem(['disk', 'check', top])
  t.equal(check.status, 0, `tandem disk check: ${check.stdout.trim()}`)
  if (!needs('qemu-img', 'qemu-io').skip) {
    t.equal(shStatus('qemu-img', ['check', top]).status, 0, 'qemu-img check: clean')
    const r = await run('qemu-io', ['-r', '-f', 'vmdk', '-c', `read -P ${FILL} 0 4M`, top])
    t.match(r.stdout, /read 4194304\/4194304 bytes/, 'the writes are in the layer')
    t.notMatch(r.stdout, /Pattern verification failed/)
  }
}

t.test('SIGTERM with stuck and idle clients: exit 0 within 10 s, every disk flushed and clean', async (t) => {
  const { dir, p } = await stuckClients(t)
  const t0 = Date.now()
  p.child.kill('SIGTERM')
  const exit = await p.exitWithin(20_000)
  t.same(exit, { code: 0, signal: null }, `exit 0 (${Date.now() - t0} ms)`)
  t.ok(Date.now() - t0 < 10_000, 'within 10 s')
  t.ok(p.logs.some((l) => l.msg === 'tandem serve stopped'), 'stopped after closing the disks')
  await checkClean(t, dir)
})

t.test('a second signal ends the grace at once; the disks are still flushed', async (t) => {
  const { dir, p } = await stuckClients(t)
  p.child.kill('SIGTERM')
  const shutting = () => p.logs.some((l) => /^shutting down/.test(l.msg))
  while (!shutting() && p.child.exitCode === null) await new Promise((r) => setTimeout(r, 20))
  const t0 = Date.now()
  p.child.kill('SIGINT')
  const exit = await p.exitWithin(20_000)
  t.same(exit, { code: 0, signal: null }, 'exit 0')
  // the stuck client would hold the grace for 4 s
  t.ok(Date.now() - t0 < 2500, `exit ${Date.now() - t0} ms after the second signal`)
  t.ok(p.logs.some((l) => /^second signal/.test(l.msg)))
  await checkClean(t, dir)
})

t.test('a port that cannot be bound: one line naming it, exit non-zero at once', async (t) => {
  for (const proto of ['http', 'nbd', 'iscsi']) {
    const taken = createServer()
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()))
    const port = (taken.address() as { port: number }).port
    const p = spawnServe(t, tmp(t, 'tandem-port-'), [`--${proto}-port`, String(port)])
    const exit = await p.exitWithin(10_000)
    taken.close()
    t.ok(exit && exit.code !== 0 && exit.signal === null, `${proto}: exits non-zero (${JSON.stringify(exit)})`)
    const lines = p.stderr().trim().split('\n')
    t.equal(lines.length, 1, `${proto}: one line on stderr`)
    t.match(lines[0], new RegExp(`^tandem: cannot listen for ${{ http: 'HTTP', nbd: 'NBD', iscsi: 'iSCSI' }[proto]} on 127\\.0\\.0\\.1:${port}: the port is in use`), `${proto}: ${lines[0]}`)
    t.notOk(p.logs.some((l) => l.msg === 'tandem serve ready'), `${proto}: never ready`)
  }
})

import t from 'tap'
import { connect, type Socket } from 'node:net'
import { needs, pattern, run, tmp } from '../helpers/peers.js'
import { TestNbdClient } from '../helpers/nbd-client.js'
import { bearer, startServe, type LogLine } from '../helpers/server.js'

const IQN = 'iqn.2026-11.local.tandem:'

/** Opens `n` sockets that never send a byte; `closed` counts those the server has closed. */
async function idleSockets(port: number, n: number) {
  let closed = 0
  const socks: Socket[] = []
  const all = Array.from({ length: n }, () => {
    const s = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
    socks.push(s)
    s.on('data', () => {})
    return new Promise<void>((r) => {
      s.on('connect', () => r())
      let counted = false
      const gone = () => {
        if (!counted) closed++
        counted = true
        r()
      }
      s.on('end', gone)
      s.on('error', gone)
      s.on('close', gone)
    })
  })
  await Promise.all(all)
  return { closed: () => closed, destroy: () => socks.forEach((s) => s.destroy()) }
}

/** GET, or the error's text (a server out of descriptors resets or never answers). */
async function get(url: string): Promise<{ status: number; body: string } | string> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(10_000) })
    return { status: r.status, body: await r.text() }
  } catch (e) {
    return String((e as Error).cause ?? e)
  }
}

/** A Login Request from operational negotiation to full feature, ITT 7, with `keys` as its text. */
function loginPdu(keys: string[] = []): Buffer {
  const text = Buffer.from(keys.map((k) => `${k}\0`).join(''))
  const b = Buffer.alloc(48 + Math.ceil(text.length / 4) * 4)
  b[0] = 0x43
  b[1] = 0x80 | (1 << 2) | 3
  b.writeUIntBE(text.length, 5, 3)
  b.write('\x00\x02\x3d\x00\x00\x09', 8, 'latin1') // ISID
  b.writeUInt32BE(7, 16)
  text.copy(b, 48)
  return b
}

/** Sends `bytes` and collects what comes back until the server closes the connection. */
function exchange(port: number, bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write(bytes))
    const got: Buffer[] = []
    s.on('data', (d) => got.push(d))
    s.on('error', () => {})
    s.on('close', () => resolve(Buffer.concat(got)))
    setTimeout(() => s.destroy(), 10_000).unref()
  })
}

const waitFor = async (cond: () => boolean, ms: number) => {
  const end = Date.now() + ms
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 50))
  return cond()
}

t.test('idle NBD and iSCSI sockets beyond the cap, under 256 descriptors: REST and established clients carry on, idle ones are closed at the handshake limit', needs('prlimit', 'nbdinfo', 'iscsi-inq'), async (t) => {
  const dir = tmp(t, 'tandem-flood-')
  const CAP = 40
  const FLOOD = 150
  // the limits come from the environment (the documented TANDEM_* variables), so that a server
  // without them runs the same test and shows what the flood does to it
  const p = await startServe(t, dir, [], { wrap: ['prlimit', '--nofile=256:256'], env: { TANDEM_MAX_CONNECTIONS: String(CAP), TANDEM_HANDSHAKE_LIMIT: '8s' } })
  const base = `http://127.0.0.1:${p.httpPort}/api/v1`
  const res = await fetch(`${base}/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(p.token) }, body: JSON.stringify({ name: 'vm', size: 4 << 20 }) })
  t.equal(res.status, 201)
  const data = pattern(1 << 20, 5)
  const est = await TestNbdClient.open(p.nbdPort, 'vm')
  t.equal((await est.pwrite(0, data)).errno, 0, 'an established NBD client writes')

  const nbdFlood = await idleSockets(p.nbdPort, FLOOD)
  const iscsiFlood = await idleSockets(p.iscsiPort, FLOOD)
  t.teardown(() => (nbdFlood.destroy(), iscsiFlood.destroy()))

  const health = await get(`${base}/health`)
  t.equal(typeof health === 'object' && health.status, 200, `GET /health during the flood: ${JSON.stringify(health)}`)
  const disks = await get(`${base}/disks`)
  t.ok(typeof disks === 'object' && disks.status === 200 && disks.body.includes('"vm"'), `GET /disks during the flood: ${JSON.stringify(disks).slice(0, 200)}`)
  const back = await est.pread(0, data.length).catch((e: Error) => ({ data: Buffer.from(e.message) }))
  t.ok(back.data.equals(data), 'the established NBD client reads its bytes back during the flood')
  const flooded = Date.now()
  // (long before the handshake limit, 8 s after the first of them, closes the rest)
  t.ok(await waitFor(() => nbdFlood.closed() >= FLOOD - CAP && iscsiFlood.closed() >= FLOOD - CAP, 4000), `sockets over the cap are closed at once (NBD ${nbdFlood.closed()}, iSCSI ${iscsiFlood.closed()} of ${FLOOD})`)

  // a new client at the cap is refused at once, not left waiting
  const t0 = Date.now()
  const atCap = await run('nbdinfo', [`nbd://127.0.0.1:${p.nbdPort}/vm`], { timeout: 20_000 })
  t.not(atCap.status, 0, `nbdinfo at the cap fails: ${atCap.stderr.trim()}`)
  t.ok(Date.now() - t0 < 2500, `at once (${Date.now() - t0} ms, before the handshake limit frees a slot)`)
  const reply = await exchange(p.iscsiPort, loginPdu(['InitiatorName=iqn.2026-11.test:late', `TargetName=${IQN}vm`]))
  t.equal(reply.length >= 48 && reply[0] & 0x3f, 0x23, 'a login at the cap gets a Login Response')
  t.same([reply[36], reply[37]], [0x03, 0x02], 'status 0x0302: Target Error, out of resources (RFC 7143 §11.13.5)')
  t.equal(reply.length >= 48 && reply.readUInt32BE(16), 7, 'for its ITT')
  const inqAtCap = await run('iscsi-inq', [`iscsi://127.0.0.1:${p.iscsiPort}/${IQN}vm/0`], { timeout: 20_000 })
  t.not(inqAtCap.status, 0, `iscsi-inq at the cap fails: ${(inqAtCap.stderr + inqAtCap.stdout).trim()}`)
  t.ok(nbdFlood.closed() < FLOOD && iscsiFlood.closed() < FLOOD, `the idle sockets still held the cap meanwhile (${Date.now() - flooded} ms after the flood)`)

  // the idle ones are closed at the handshake limit; then new clients get in
  t.ok(await waitFor(() => nbdFlood.closed() === FLOOD && iscsiFlood.closed() === FLOOD, 20_000), `every idle socket closed by the server (NBD ${nbdFlood.closed()}, iSCSI ${iscsiFlood.closed()})`)
  const info = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${p.nbdPort}/vm`], { timeout: 20_000 })
  t.equal(info.stdout.trim(), String(4 << 20), `nbdinfo after the flood: ${info.stderr.trim()}`)
  const inq = await run('iscsi-inq', [`iscsi://127.0.0.1:${p.iscsiPort}/${IQN}vm/0`], { timeout: 20_000 })
  t.equal(inq.status, 0, `iscsi-inq after the flood: ${inq.stderr.trim()}`)
  t.ok((await est.pread(0, 4096)).data.equals(data.subarray(0, 4096)), 'the established client is still served')
  est.disconnect()

  const logged = (re: RegExp, level: number) => p.logs.filter((l: LogLine) => l.level === level && re.test(l.msg)).length
  t.ok(logged(/^nbd: at the connection limit/, 40) >= 1 && logged(/^iscsi: at the connection limit/, 40) >= 1, 'the cap is logged once per protocol and episode')
  t.ok(logged(/handshake not complete in time/, 30) >= CAP, 'handshake timeouts logged at info')
  p.child.kill('SIGTERM')
  t.same(await p.exitWithin(15_000), { code: 0, signal: null }, 'SIGTERM: exit 0')
})

/** Connects, sends `send`, waits for `first` bytes back, then resets the connection (RST). */
async function resetAfter(port: number, send: Buffer | null, first: number): Promise<void> {
  const s = connect(port, '127.0.0.1')
  s.on('error', () => {})
  await new Promise((r) => s.once('connect', r))
  if (send) s.write(send)
  let got = 0
  await new Promise<void>((r) => s.on('data', (d) => (got += d.length) >= first && r()))
  s.resetAndDestroy()
}

t.test('a peer that resets its connection is logged at debug, not as a warning', async (t) => {
  const dir = tmp(t, 'tandem-reset-')
  const p = await startServe(t, dir, ['--log-level', 'debug'])
  await fetch(`http://127.0.0.1:${p.httpPort}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(p.token) }, body: JSON.stringify({ name: 'vm', size: 1 << 20 }) })
  await resetAfter(p.nbdPort, null, 18) // NBD: in the handshake, after the greeting
  const c = await TestNbdClient.open(p.nbdPort, 'vm')
  await c.pwrite(0, pattern(4096, 1))
  c.sock.resetAndDestroy() // NBD: established
  // iSCSI: logged in (the Login Response read)
  await resetAfter(p.iscsiPort, loginPdu(['InitiatorName=iqn.2026-11.test:reset', `TargetName=${IQN}vm`]), 48)
  const lost = () => p.logs.filter((l) => l.level === 20 && /connection lost/.test(l.msg) && l.code === 'ECONNRESET')
  t.ok(await waitFor(() => lost().length >= 3, 10_000), `three resets logged at debug (${lost().length})`)
  const loud = p.logs.filter((l) => l.level >= 40)
  t.same(loud, [], 'nothing logged at warn or above')
  p.child.kill('SIGTERM')
  t.same(await p.exitWithin(15_000), { code: 0, signal: null })
})

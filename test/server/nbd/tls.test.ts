import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { CLI, needs, run, runOk, tmp, pattern } from '../../helpers/peers.js'
import { bearer, startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { pino } from 'pino'
import type { TlsMode } from '../../../src/server/nbd/index.js'
import { serve } from '../../../src/server/serve.js'

const NBD_OPT_EXPORT_NAME = 1
const NBD_OPT_ABORT = 2
const NBD_OPT_LIST = 3
const NBD_OPT_STARTTLS = 5
const NBD_OPT_INFO = 6
const NBD_OPT_GO = 7
const NBD_OPT_STRUCTURED_REPLY = 8
const NBD_OPT_SET_META_CONTEXT = 10
const NBD_REP_ACK = 1
const NBD_REP_SERVER = 2
const ERR = 2 ** 31
const NBD_REP_ERR_UNSUP = ERR + 1
const NBD_REP_ERR_POLICY = ERR + 2
const NBD_REP_ERR_INVALID = ERR + 3
const NBD_REP_ERR_TLS_REQD = ERR + 5
const NBD_FLAG_SEND_DF = 1 << 7

const ALICE = randomBytes(32).toString('hex')
const BOB = randomBytes(32).toString('hex')

type Server = Awaited<ReturnType<typeof startServer>>

async function api(s: Server, method: string, path: string, body?: unknown): Promise<Response> {
  return fetch(`http://127.0.0.1:${s.httpPort}${path}`, {
    method,
    headers: { 'content-type': 'application/json', ...bearer(s.apiToken) },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
}

/**
 * A server in `mode` with keys for alice and bob (set over REST, so the clients read the file the
 * server wrote), disk `secret` (access list: alice) with snapshot `s1`, and disk `open` (no list).
 */
async function setup(t: Test, mode?: TlsMode): Promise<Server & { keys: string }> {
  const s = await startServer(t, mode ? { tls: mode } : {})
  await s.ds.createDisk('secret', 4 << 20)
  await s.ds.createSnapshot('secret', 's1')
  await s.ds.createDisk('open', 4 << 20)
  t.equal((await api(s, 'PUT', '/api/v1/disks/secret/access', { initiators: ['alice'] })).status, 200)
  t.equal((await api(s, 'PUT', '/api/v1/nbd/keys/alice', { key: ALICE })).status, 201)
  t.equal((await api(s, 'PUT', '/api/v1/nbd/keys/bob', { key: BOB })).status, 201)
  return Object.assign(s, { keys: join(s.dir, '.tandem', 'keys.psk') })
}

function nameData(name: string, trailer = 2): Buffer {
  const n = Buffer.from(name)
  const d = Buffer.alloc(4 + n.length + trailer)
  d.writeUInt32BE(n.length, 0)
  n.copy(d, 4)
  return d
}

/** Sends an option and collects its replies up to the final one (ACK or an error). */
async function option(c: TestNbdClient, opt: number, data: Buffer): Promise<{ type: number; message: string; replies: { type: number; data: Buffer }[] }> {
  c.sendOption(opt, data)
  const replies = []
  for (;;) {
    const r = await c.optionReply()
    replies.push(r)
    if (r.type === NBD_REP_ACK || r.type >= ERR) return { type: r.type, message: r.data.toString(), replies }
  }
}

async function list(c: TestNbdClient): Promise<string[] | number> {
  const r = await option(c, NBD_OPT_LIST, Buffer.alloc(0))
  if (r.type !== NBD_REP_ACK) return r.type
  return r.replies.filter((x) => x.type === NBD_REP_SERVER).map((x) => x.data.subarray(4).toString())
}

async function plain(s: Server): Promise<TestNbdClient> {
  const c = await TestNbdClient.raw(s.nbdPort)
  await c.greet()
  return c
}

async function overTls(s: Server, identity: string, key: string): Promise<TestNbdClient> {
  return (await plain(s)).startTls(identity, key)
}

t.test('optional (default): option replies for plain and TLS clients, per the NBD spec', async (t) => {
  const s = await setup(t)
  // plain: the restricted disk and its snapshot are hidden and need TLS; the open disk works
  let c = await plain(s)
  t.same(await list(c), ['open'], 'OPT_LIST omits the disk with an access list')
  for (const name of ['secret', 'secret@s1']) {
    const go = await option(c, NBD_OPT_GO, nameData(name))
    t.equal(go.type, NBD_REP_ERR_TLS_REQD, `plain OPT_GO ${name}: NBD_REP_ERR_TLS_REQD`)
    t.match(go.message, /access list/)
    t.equal((await option(c, NBD_OPT_INFO, nameData(name))).type, NBD_REP_ERR_TLS_REQD, `plain OPT_INFO ${name}: NBD_REP_ERR_TLS_REQD`)
  }
  t.equal((await option(c, NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0))).type, NBD_REP_ACK)
  const meta = Buffer.concat([nameData('secret', 0), Buffer.from([0, 0, 0, 0])])
  t.equal((await option(c, NBD_OPT_SET_META_CONTEXT, meta)).type, NBD_REP_ERR_POLICY, 'meta contexts of a hidden disk: POLICY (TLS_REQD is reserved to INFO/GO)')
  t.equal((await option(c, NBD_OPT_STARTTLS, Buffer.from('x'))).type, NBD_REP_ERR_INVALID, 'STARTTLS with data: INVALID')
  t.equal((await option(c, NBD_OPT_INFO, nameData('open'))).type, NBD_REP_ACK, 'plain OPT_INFO on the open disk')
  c.sendOption(NBD_OPT_ABORT, Buffer.alloc(0))
  await c.optionReply()
  await c.closed

  // plain NBD_OPT_EXPORT_NAME of a TLS-only disk cannot be answered: the session ends
  c = await plain(s)
  c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('secret'))
  await c.closed
  t.pass('plain EXPORT_NAME secret: connection closed')

  // bob: a valid key, not on the list
  c = await overTls(s, 'bob', BOB)
  t.same(await list(c), ['open'], 'bob does not see the disk')
  const bob = await option(c, NBD_OPT_GO, nameData('secret'))
  t.equal(bob.type, NBD_REP_ERR_POLICY, 'bob OPT_GO secret: NBD_REP_ERR_POLICY')
  t.match(bob.message, /identity 'bob' is not on the access list/)
  t.equal((await option(c, NBD_OPT_STARTTLS, Buffer.alloc(0))).type, NBD_REP_ERR_INVALID, 'a second STARTTLS: INVALID')
  t.equal((await option(c, NBD_OPT_GO, nameData('open'))).type, NBD_REP_ACK, 'bob may use the open disk over TLS')
  c.disconnect()

  // alice: sees it, reads and writes it over TLS; option state from before STARTTLS is forgotten
  c = await plain(s)
  t.equal((await option(c, NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0))).type, NBD_REP_ACK)
  c = await c.startTls('alice', ALICE)
  t.same(await list(c), ['open', 'secret', 'secret@s1'], 'alice sees the disk and its snapshot')
  const info = await option(c, NBD_OPT_INFO, nameData('secret'))
  t.equal(info.type, NBD_REP_ACK, 'alice OPT_INFO secret')
  const flags = info.replies.find((r) => r.type === 3 && r.data.readUInt16BE(0) === 0)!.data.readUInt16BE(10)
  t.equal(flags & NBD_FLAG_SEND_DF, 0, 'structured replies asked before STARTTLS are not kept (no SEND_DF)')
  t.equal((await option(c, NBD_OPT_GO, nameData('secret@s1'))).type, NBD_REP_ACK, 'alice OPT_GO secret@s1')
  c.disconnect()
  c = await TestNbdClient.open(s.nbdPort, 'secret', { tls: { identity: 'alice', key: ALICE } })
  const data = pattern(256 << 10, 7)
  t.equal((await c.pwrite(1 << 20, data)).errno, 0)
  t.ok((await c.pread(1 << 20, data.length)).data.equals(data), 'bytes written over TLS read back over TLS')
  c.disconnect()
  await c.closed
  // and the bytes are on the disk
  const h = await s.ds.openExport('secret')
  t.ok((await h.device.read(1 << 20, data.length)).equals(data), 'the datastore holds what alice wrote')
  await h.release()
})

t.test('wrong key, unknown identity, bytes pipelined after STARTTLS: that connection only is closed', async (t) => {
  const s = await setup(t)
  await t.rejects(overTls(s, 'alice', BOB), 'alice with the wrong key')
  await t.rejects(overTls(s, 'carol', ALICE), 'an identity with no key')
  const c = await plain(s)
  c.sendOption(NBD_OPT_STARTTLS, Buffer.alloc(0))
  c.sendOption(NBD_OPT_LIST, Buffer.alloc(0))
  await c.closed
  t.pass('an option sent before the STARTTLS reply: closed')
  for (const [what, bytes] of [
    ['garbage instead of a ClientHello', pattern(600, 9)],
    ['a TLS record header claiming 16 MiB', Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])],
    ['nothing (the client leaves)', Buffer.alloc(0)],
  ] as const) {
    const g = await plain(s)
    g.sendOption(NBD_OPT_STARTTLS, Buffer.alloc(0))
    t.equal((await g.optionReply()).type, NBD_REP_ACK)
    g.sock.end(bytes)
    await g.closed
    t.pass(`${what} after the ACK: closed`)
  }
  const ok = await TestNbdClient.open(s.nbdPort, 'secret', { tls: { identity: 'alice', key: ALICE } })
  t.equal((await ok.pread(0, 4096)).errno, 0, 'a good client still gets in')
  ok.disconnect()
})

t.test('--tls required: every option but STARTTLS and ABORT gets TLS_REQD until TLS', async (t) => {
  const s = await setup(t, 'required')
  let c = await plain(s)
  t.equal(await list(c), NBD_REP_ERR_TLS_REQD, 'plain OPT_LIST')
  t.equal((await option(c, NBD_OPT_GO, nameData('open'))).type, NBD_REP_ERR_TLS_REQD, 'plain OPT_GO of the open disk')
  t.equal((await option(c, NBD_OPT_INFO, nameData('open'))).type, NBD_REP_ERR_TLS_REQD, 'plain OPT_INFO')
  t.equal((await option(c, NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0))).type, NBD_REP_ERR_TLS_REQD, 'plain STRUCTURED_REPLY')
  t.equal((await option(c, 99, Buffer.from('junk'))).type, NBD_REP_ERR_TLS_REQD, 'an unknown option')
  c = await c.startTls('bob', BOB)
  t.same(await list(c), ['open'], 'after TLS: OPT_LIST')
  t.equal((await option(c, NBD_OPT_GO, nameData('open'))).type, NBD_REP_ACK, 'after TLS: OPT_GO open')
  c.disconnect()
  c = await plain(s)
  c.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('open'))
  await c.closed
  t.pass('plain EXPORT_NAME: the session ends')
  c = await plain(s)
  t.equal((await option(c, NBD_OPT_ABORT, Buffer.alloc(0))).type, NBD_REP_ACK, 'ABORT is answered')
})

t.test('--tls off: STARTTLS is unsupported, disks with an access list are not offered over NBD', async (t) => {
  const s = await setup(t, 'off')
  const c = await plain(s)
  t.equal((await option(c, NBD_OPT_STARTTLS, Buffer.alloc(0))).type, NBD_REP_ERR_UNSUP, 'STARTTLS: UNSUP')
  t.same(await list(c), ['open'])
  const go = await option(c, NBD_OPT_GO, nameData('secret'))
  t.equal(go.type, NBD_REP_ERR_POLICY, 'OPT_GO secret: POLICY (NOTLS mode never says TLS_REQD)')
  t.match(go.message, /turned off/)
  t.equal((await option(c, NBD_OPT_GO, nameData('open'))).type, NBD_REP_ACK)
  c.disconnect()
})

const URI = (s: Server, who: string, name: string, keys: string) => `nbds://${who}@127.0.0.1:${s.nbdPort}/${name}?tls-psk-file=${keys}`

t.test('nbdinfo and nbdcopy: a listed identity gets in; wrong identity, wrong key and plain are refused', needs('nbdinfo', 'nbdcopy'), async (t) => {
  const s = await setup(t)
  const info = JSON.parse(await runOk('nbdinfo', ['--json', URI(s, 'alice', 'secret', s.keys)]))
  t.equal(info.TLS, true, 'nbdinfo reports TLS')
  t.equal(info.exports[0]['export-size'], 4 << 20)
  const all = JSON.parse(await runOk('nbdinfo', ['--list', '--json', URI(s, 'alice', '', s.keys)]))
  t.same(all.exports.map((e: { 'export-name': string }) => e['export-name']), ['open', 'secret', 'secret@s1'])
  const plainList = JSON.parse(await runOk('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${s.nbdPort}`]))
  t.same(plainList.exports.map((e: { 'export-name': string }) => e['export-name']), ['open'], 'a plain client lists only the open disk')
  t.equal(JSON.parse(await runOk('nbdinfo', ['--json', s.uri('open')])).exports[0]['export-size'], 4 << 20, 'the open disk over plain NBD')

  const debug = (args: string[]) => run('sh', ['-c', `LIBNBD_DEBUG=1 nbdinfo "$@" 2>&1`, 'nbdinfo', ...args])
  let r = await debug([s.uri('secret')])
  t.not(r.status, 0, 'plain nbdinfo on the restricted disk fails')
  t.match(r.stdout, /has an access list: connect with TLS-PSK/)
  r = await debug([URI(s, 'bob', 'secret', s.keys)])
  t.not(r.status, 0, 'bob fails')
  t.match(r.stdout, /identity 'bob' is not on the access list/)
  const d = tmp(t)
  const wrong = join(d, 'wrong.psk')
  writeFileSync(wrong, `alice:${BOB}\ncarol:${ALICE}\n`)
  r = await run('nbdinfo', [URI(s, 'alice', 'secret', wrong)])
  t.not(r.status, 0, 'alice with a wrong key fails')
  t.match(r.stderr, /gnutls_handshake/)
  r = await run('nbdinfo', [URI(s, 'carol', 'secret', wrong)])
  t.not(r.status, 0, 'an identity the server has no key for fails')
  t.match(r.stderr, /gnutls_handshake/)

  // nbdcopy in and out over TLS
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(4 << 20)
  pattern(1 << 20, 3).copy(data, 1 << 20)
  writeFileSync(src, data)
  await runOk('nbdcopy', [src, URI(s, 'alice', 'secret', s.keys)])
  const back = join(d, 'back.raw')
  await runOk('nbdcopy', [URI(s, 'alice', 'secret', s.keys), back])
  t.ok(readFileSync(back).equals(data), 'nbdcopy round trip over TLS')
  r = await run('nbdcopy', [src, URI(s, 'bob', 'secret', s.keys)])
  t.not(r.status, 0, 'bob cannot write it with nbdcopy')
})

t.test('qemu-io and qemu-img with a tls-creds-psk object', needs('qemu-io', 'qemu-img'), async (t) => {
  const s = await setup(t)
  const d = tmp(t)
  // qemu reads `keys.psk` in the folder `dir=` names: the server's own file serves as is
  const creds = (dir: string, user: string) => `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=${user}`
  const img = (name: string) => `driver=nbd,host=127.0.0.1,port=${s.nbdPort},export=${name},tls-creds=tls0`
  const keysDir = join(s.dir, '.tandem')
  await runOk('qemu-io', ['--object', creds(keysDir, 'alice'), '--image-opts', img('secret'), '-c', 'write -P 0x5a 1M 1M'])
  const out = join(d, 'out.raw')
  await runOk('qemu-img', ['convert', '--object', creds(keysDir, 'alice'), '--image-opts', img('secret'), '-O', 'raw', out])
  const expect = Buffer.alloc(4 << 20)
  expect.fill(0x5a, 1 << 20, 2 << 20)
  t.ok(readFileSync(out).equals(expect), 'qemu-img reads what qemu-io wrote, both over TLS as alice')
  // TLS 1.2 clients are served too
  const info = await runOk('qemu-img', ['info', '--object', `${creds(keysDir, 'alice')},priority=NORMAL:-VERS-TLS1.3:+ECDHE-PSK`, '--image-opts', img('secret')])
  t.match(info, /virtual size: 4 MiB/, 'TLS 1.2')

  let r = await run('qemu-img', ['info', '--object', creds(keysDir, 'bob'), '--image-opts', img('secret')])
  t.not(r.status, 0)
  t.match(r.stderr, /Denied by server[\s\S]*identity 'bob' is not on the access list/, 'bob: POLICY')
  r = await run('qemu-img', ['info', `nbd://127.0.0.1:${s.nbdPort}/secret`])
  t.not(r.status, 0)
  t.match(r.stderr, /tls-creds/, 'plain: qemu is told TLS is required')
  const wrongDir = join(d, 'wrong')
  mkdirSync(wrongDir)
  writeFileSync(join(wrongDir, 'keys.psk'), `alice:${BOB}\n`)
  r = await run('qemu-img', ['info', '--object', creds(wrongDir, 'alice'), '--image-opts', img('secret')])
  t.not(r.status, 0)
  t.match(r.stderr, /TLS handshake failed/, 'a wrong key fails the handshake')
  t.match(await runOk('qemu-img', ['info', `nbd://127.0.0.1:${s.nbdPort}/open`]), /virtual size: 4 MiB/, 'plain qemu-img on the open disk')
})

t.test('--tls required with the real clients', needs('nbdinfo', 'qemu-img'), async (t) => {
  const s = await setup(t, 'required')
  const r = await run('nbdinfo', [s.uri('open')])
  t.not(r.status, 0, 'plain nbdinfo is refused even for the open disk')
  t.equal(JSON.parse(await runOk('nbdinfo', ['--json', URI(s, 'bob', 'open', s.keys)])).exports[0]['export-size'], 4 << 20, 'nbds:// as bob')
  const q = await run('qemu-img', ['info', `nbd://127.0.0.1:${s.nbdPort}/open`])
  t.not(q.status, 0, 'plain qemu-img is refused')
})

t.test('the keys file is psktool\'s format, mode 0600, and psktool can edit it', needs('psktool'), async (t) => {
  const s = await setup(t)
  t.equal(statSync(s.keys).mode & 0o777, 0o600)
  t.equal(readFileSync(s.keys, 'utf8'), `alice:${ALICE}\nbob:${BOB}\n`)
  // psktool adds a key to the same file; a server started on it serves that identity
  await runOk('psktool', ['-u', 'dave', '-p', s.keys])
  const dave = /^dave:([0-9a-f]+)$/m.exec(readFileSync(s.keys, 'utf8'))![1]
  await s.close()
  const again = await serve({ datastore: s.dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0 }, pino({ level: 'silent' }))
  t.teardown(() => again.close())
  const c = await TestNbdClient.open(again.nbdPort, 'open', { tls: { identity: 'dave', key: dave } })
  t.equal((await c.pread(0, 512)).errno, 0, 'a restarted server reads the key psktool added')
  c.disconnect()
  t.same(await (await fetch(`http://127.0.0.1:${again.httpPort}/api/v1/nbd/keys`)).json(), { identities: ['alice', 'bob', 'dave'] })
})

t.test('tandem serve --tls: the CLI passes the mode through and refuses others', async (t) => {
  const bad = await run(process.execPath, [CLI, 'serve', '--tls', 'bogus'])
  t.not(bad.status, 0)
  t.match(bad.stderr, /Allowed choices are required, optional, off/)
  const dir = tmp(t, 'tandem-ds-')
  const child = spawn(process.execPath, [CLI, 'serve', '--datastore', dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0', '--tls', 'required'], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => child.kill('SIGKILL'))
  const ready = await new Promise<{ nbdPort: number; tls: string }>((resolve) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.includes('tandem serve ready')) resolve(JSON.parse(line))
    })
  })
  t.equal(ready.tls, 'required')
  const c = await TestNbdClient.raw(ready.nbdPort)
  await c.greet()
  t.equal(await list(c), NBD_REP_ERR_TLS_REQD, 'a plain OPT_LIST gets TLS_REQD')
  c.sock.destroy()
})

import t from 'tap'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { needs, pattern, run, tmp } from '../../helpers/peers.js'
import { bearer, startServer } from '../../helpers/server.js'
import { NbdClient } from '../../../src/client/transport/nbd/index.js'
import { parseNbdUri } from '../../../src/client/transport/nbd/uri.js'

/** The NBD client's TLS-PSK (#15 item 2): NBD_OPT_STARTTLS, then TLS-PSK, against Tandem and nbdkit. */
const ALICE = randomBytes(32).toString('hex')
const BOB = randomBytes(32).toString('hex')

async function api(s: { httpPort: number; apiToken: string | null }, method: string, path: string, body: unknown): Promise<number> {
  return (await fetch(`http://127.0.0.1:${s.httpPort}${path}`, { method, headers: { 'content-type': 'application/json', ...bearer(s.apiToken) }, body: JSON.stringify(body) })).status
}

t.test('nbds:// URIs: the key file, the identity, and what is refused before connecting', async (t) => {
  t.match(parseNbdUri('nbds://alice@h:1234/d?tls-psk-file=/k.psk'), { host: 'h', port: 1234, exportName: 'd', tls: { pskFile: '/k.psk', identity: 'alice' } })
  t.match(parseNbdUri('nbds://h/d?tls-psk-file=k&tls-username=bob'), { tls: { pskFile: 'k', identity: 'bob' } })
  t.throws(() => parseNbdUri('nbds://h/d'), { code: 'Unsupported', message: /needs \?tls-psk-file=FILE/ })
  t.equal(parseNbdUri('nbd://h/d').tls, undefined)
})

t.test('against Tandem (TLS required): alice reads and writes her disk; bob, a wrong key and plain NBD are refused', async (t) => {
  const s = await startServer(t, { tls: 'required' })
  await s.ds.createDisk('secret', 4 << 20)
  t.equal(await api(s, 'PUT', '/api/v1/disks/secret/access', { initiators: ['alice'] }), 200)
  t.equal(await api(s, 'PUT', '/api/v1/nbd/keys/alice', { key: ALICE }), 201)
  t.equal(await api(s, 'PUT', '/api/v1/nbd/keys/bob', { key: BOB }), 201)
  const keys = join(s.dir, '.tandem', 'keys.psk')
  const uri = (who: string, file = keys) => `nbds://${who}@127.0.0.1:${s.nbdPort}/secret?tls-psk-file=${encodeURIComponent(file)}`

  const c = await NbdClient.connect(uri('alice'))
  t.equal(c.size, 4 << 20)
  const data = pattern(1 << 20, 7)
  await c.write(1 << 20, data)
  await c.flush()
  await c.close()
  const again = await NbdClient.connect(uri('alice'))
  t.ok((await again.read(1 << 20, 1 << 20)).equals(data), 'what alice wrote over TLS reads back in a new TLS session')
  await again.close()

  await t.rejects(NbdClient.connect(uri('bob')), { message: /export 'secret'/ }, 'bob holds a key but is not on the disk\'s access list')
  const wrong = join(tmp(t), 'wrong.psk')
  writeFileSync(wrong, `alice:${BOB}\n`)
  await t.rejects(NbdClient.connect(uri('alice', wrong)), { code: 'IoError', message: /TLS-PSK handshake as 'alice'/ }, 'the wrong key for alice')
  await t.rejects(NbdClient.connect(uri('carol')), { code: 'NotFound', message: /no key for 'carol'/ }, 'an identity the file does not hold')
  await t.rejects(NbdClient.connect(`nbd://127.0.0.1:${s.nbdPort}/secret`), { message: /requires TLS/ }, 'plain NBD to a server that requires TLS')
})

t.test('against nbdkit --tls=require --tls-psk: the client writes, nbdcopy (libnbd) reads the same bytes back', needs('nbdkit', 'nbdcopy'), async (t) => {
  const d = tmp(t)
  const keys = join(d, 'keys.psk')
  writeFileSync(keys, `alice:${ALICE}\n`)
  const port = 20000 + Math.floor(Math.random() * 20000)
  const kit = spawn('nbdkit', ['-f', '-p', String(port), '-i', '127.0.0.1', '--tls=require', `--tls-psk=${keys}`, 'memory', '4M'], { stdio: 'ignore' })
  t.teardown(() => kit.kill('SIGKILL'))
  const uri = `nbds://alice@127.0.0.1:${port}/?tls-psk-file=${encodeURIComponent(keys)}`
  let c: NbdClient | null = null
  for (let i = 0; !c && i < 100; i++) c = await NbdClient.connect(uri).catch(async () => (await new Promise((r) => setTimeout(r, 100)), null))
  t.ok(c, 'connected over TLS-PSK')
  const data = pattern(1 << 20, 3)
  await c!.write(0, data)
  await c!.flush()
  await c!.close()
  const out = join(d, 'out.raw')
  const copy = await run('nbdcopy', [uri, out])
  t.equal(copy.status, 0, copy.stderr)
  t.ok(readFileSync(out).subarray(0, 1 << 20).equals(data), 'libnbd reads over TLS what the client wrote')
})

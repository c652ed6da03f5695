import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { NbdClient, parseNbdUri } from '../../../src/client/transport/nbd/index.js'
import { isStorageError } from '../../../src/disk-formats/errors.js'
import { needs, pattern, sh, shStatus, tandem, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { peerServer } from '../../helpers/nbd-peer.js'

t.test('URIs: host, port, export; nbds and junk refused with typed errors', async (t) => {
  t.same(parseNbdUri('nbd://h:10/a%20b'), { host: 'h', port: 10, exportName: 'a b' })
  t.same(parseNbdUri('nbd://h'), { host: 'h', port: 10809, exportName: '' })
  t.same(parseNbdUri('nbd://[::1]:5/x'), { host: '::1', port: 5, exportName: 'x' })
  t.throws(() => parseNbdUri('nbds://h/x'), { code: 'Unsupported' }) // nbds:// without tls-psk-file
  t.throws(() => parseNbdUri('http://h/x'), { code: 'InvalidArgument' })
  t.throws(() => parseNbdUri('nbd://'), { code: 'InvalidArgument' })
})

t.test('against tandem serve: pipelined reads and writes, zeroes, trim, flush, block status', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 8 << 20)
  const c = await NbdClient.connect(`nbd://127.0.0.1:${s.nbdPort}/d`)
  t.equal(c.size, 8 << 20)
  t.ok(c.info.structured && c.info.blockStatus, 'structured replies and base:allocation negotiated')
  const a = pattern(1 << 20, 1)
  const b = pattern(64 << 10, 2)
  await Promise.all([c.write(0, a), c.write(4 << 20, b), c.write(6 << 20, pattern(512, 3), { fua: true })])
  const [ra, rb] = await Promise.all([c.read(0, 1 << 20), c.read(4 << 20, 64 << 10)])
  t.ok(ra.equals(a) && rb.equals(b), 'reads return what was written, answered out of order or not')
  await c.writeZeroes(0, 64 << 10)
  t.ok((await c.read(0, 64 << 10)).equals(Buffer.alloc(64 << 10)), 'zeroed')
  await c.flush()
  const map = await c.blockStatus(0, c.size)
  t.equal(map.reduce((n, e) => n + e.length, 0), c.size, 'block status covers the export')
  t.ok(map.some((e) => e.data) && map.some((e) => !e.data), 'data and holes both reported')
  await t.rejects(c.read(c.size - 512, 1024), { code: 'OutOfRange' })
  await c.close()
  await t.rejects(c.read(0, 512), { code: 'IoError' }, 'closed')
  await t.rejects(NbdClient.connect(`nbd://127.0.0.1:${s.nbdPort}/nope`), { code: 'NotFound' }, 'unknown export: NotFound')
  const ro = await NbdClient.connect(`nbd://127.0.0.1:${s.nbdPort}/d`, { readOnly: true })
  await t.rejects(ro.write(0, Buffer.alloc(512)), { code: 'ReadOnly' })
  await ro.close()
})

t.test('a lost connection fails what is in flight and what comes after with IoError', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 4 << 20)
  const c = await NbdClient.connect(`nbd://127.0.0.1:${s.nbdPort}/d`)
  const inflight = Array.from({ length: 16 }, (_, i) => c.read((i * 4096) % c.size, 4096).then(() => 'ok', (e) => (isStorageError(e, 'IoError') ? 'io' : String(e))))
  ;(c as unknown as { sock: { destroy(): void } }).sock.destroy()
  const got = await Promise.all(inflight)
  t.ok(got.every((g) => g === 'ok' || g === 'io'), `each request answered or failed with IoError: ${[...new Set(got)]}`)
  await t.rejects(c.read(0, 512), { code: 'IoError' })
  await c.close()
})

t.test('against qemu-nbd and nbdkit: bytes written read back through the peer, map and info as qemu-img', needs('qemu-nbd', 'nbdkit', 'qemu-img', 'qemu-io', 'nbdinfo'), async (t) => {
  const d = tmp(t, 'tandem-nbdc-')
  const file = join(d, 'disk.raw')
  writeFileSync(file, Buffer.alloc(0))
  sh('truncate', ['-s', '16M', file])
  for (const [name, port] of [
    ['qemu-nbd', await peerServer(t, 'qemu-nbd', (p) => ['-f', 'raw', '-x', 'd', '-b', '127.0.0.1', '-p', String(p), '--persistent', '--shared=4', file])],
    ['nbdkit', await peerServer(t, 'nbdkit', (p) => ['-f', '-i', '127.0.0.1', '-p', String(p), '-e', 'd', 'memory', '16M'])],
  ] as const) {
    const uri = `nbd://127.0.0.1:${port}/d`
    const c = await NbdClient.connect(uri)
    const data = pattern(3 << 20, 7)
    await c.write(1 << 20, data)
    await c.flush()
    const copy = join(d, `${name}.copy`)
    sh('nbdcopy', [uri, copy])
    t.ok(readFileSync(copy).subarray(1 << 20, 4 << 20).equals(data), `${name}: nbdcopy reads what the client wrote`)
    t.ok((await c.read(1 << 20, 3 << 20)).equals(data), `${name}: read back`)
    await c.close()
    const ours = tandem(['disk', 'map', '--json', uri])
    t.equal(ours.status, 0, ours.stderr)
    t.equal(ours.stdout, sh('qemu-img', ['map', '--output=json', uri]), `${name}: disk map --json is qemu-img map's, byte for byte`)
    const info = tandem(['disk', 'info', '--json', uri])
    t.same(JSON.parse(info.stdout), JSON.parse(sh('qemu-img', ['info', '--output=json', uri])), `${name}: disk info --json is qemu-img info's`)
    const out = join(d, `${name}.raw`)
    const conv = tandem(['disk', 'convert', '-O', 'raw', uri, out])
    t.equal(conv.status, 0, conv.stderr)
    t.equal(shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, uri]).status, 0, `${name}: convert from nbd:// copies every byte`)
    // and into it: a VMDK whose data lies elsewhere overwrites the export (the old bytes zeroed)
    const vmdk = join(d, `${name}.vmdk`)
    t.equal(tandem(['disk', 'create', vmdk, '--size', '16M']).status, 0)
    t.equal(shStatus('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x3c 8M 1M', vmdk]).status, 0)
    const into = tandem(['disk', 'convert', vmdk, uri])
    t.equal(into.status, 0, into.stderr)
    t.equal(shStatus('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', vmdk, uri]).status, 0, `${name}: convert into nbd:// leaves the export equal to the source`)
  }
  t.equal(shStatus('qemu-img', ['compare', '-f', 'vmdk', '-F', 'raw', join(d, 'qemu-nbd.vmdk'), file]).status, 0, 'qemu-nbd\'s file holds the bytes written through it')
})

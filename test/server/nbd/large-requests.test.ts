import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { libnbdPython, needs, pattern, run, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'

const EINVAL = 22
const KiB = 1024
const MiB = 1024 * KiB
/** A peer that hangs is killed after this and the test fails (the server once hung on writes over 4 MiB). */
const PEER_TIMEOUT = 60_000

/** Write sizes from 4 KiB to the advertised 32 MiB maximum, with the socket queue's 4 MiB ± a sector. */
const SIZES = [4 * KiB, 64 * KiB, 1 * MiB, 4 * MiB - 512, 4 * MiB, 4 * MiB + 512, 5 * MiB, 16 * MiB, 32 * MiB - 512, 32 * MiB]

t.test('qemu-io: a write of every size up to the 32 MiB maximum completes and reads back', { ...needs('qemu-io'), timeout: 4 * PEER_TIMEOUT }, async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 40 * MiB)
  // one qemu-io per size, each with its own pattern, written 512 bytes in and verified by qemu-io
  for (const [i, size] of SIZES.entries()) {
    const p = `0x${(0x11 + i * 0x13).toString(16)}`
    const r = await run('qemu-io', ['-f', 'raw', '-c', `write -P ${p} 512 ${size}`, '-c', `read -P ${p} 512 ${size}`, s.uri('d')], { timeout: PEER_TIMEOUT })
    if (!t.equal(r.status, 0, `write of ${size} bytes: qemu-io finished (${r.stderr.trim() || 'ok'})`)) break
    t.match(r.stdout, `wrote ${size}/${size} bytes at offset 512`)
    t.match(r.stdout, `read ${size}/${size} bytes at offset 512`)
    t.notMatch(r.stdout, /verification failed/i)
  }
})

t.test('nbdcopy with 32 MiB requests, in and out', { ...needs('nbdcopy'), timeout: 3 * PEER_TIMEOUT }, async (t) => {
  const s = await startServer(t)
  const d = tmp(t)
  await s.ds.createDisk('vm', 96 * MiB)
  const data = pattern(96 * MiB, 41)
  writeFileSync(join(d, 'src.raw'), data)
  for (const [from, to] of [[join(d, 'src.raw'), s.uri('vm')], [s.uri('vm'), join(d, 'back.raw')]]) {
    const r = await run('nbdcopy', ['--request-size=33554432', '--requests=4', from, to], { timeout: PEER_TIMEOUT })
    if (!t.equal(r.status, 0, `nbdcopy ${from} ${to} finished ${r.stderr}`)) return
  }
  t.ok(readFileSync(join(d, 'back.raw')).equals(data), 'what nbdcopy wrote in 32 MiB requests reads back')
})

t.test('writes at the boundaries read back exactly; 32 MiB + 512 is refused with EINVAL and the connection goes on', { timeout: PEER_TIMEOUT }, async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 40 * MiB)
  const c = await TestNbdClient.open(s.nbdPort, 'd', { structured: true })
  for (const [i, size] of SIZES.entries()) {
    const data = pattern(size, 100 + i)
    t.equal((await c.pwrite(512, data)).errno, 0, `write of ${size} bytes`)
    t.ok((await c.pread(512, size)).data.equals(data), `${size} bytes read back`)
  }
  const last = pattern(32 * MiB, 7)
  t.equal((await c.pwrite(0, last)).errno, 0)
  t.equal((await c.pwrite(0, Buffer.alloc(32 * MiB + 512, 0xee))).errno, EINVAL, 'a write of 32 MiB + 512: EINVAL')
  t.ok((await c.pread(0, 32 * MiB)).data.equals(last), 'the refused write changed nothing')
  // pipelined after the refused one, on the same connection
  const after = pattern(4 * KiB, 8)
  const [w, r] = await Promise.all([c.pwrite(32 * MiB, after), c.pread(32 * MiB, 4 * KiB)])
  t.equal(w.errno, 0, 'the connection still works')
  t.equal(r.errno, 0)
  c.disconnect()
})

const py = libnbdPython()
const needsLibnbd = py ? {} : { skip: 'python3-libnbd not installed (scripts/install-peers.sh)' }

t.test('a READ of 0 bytes with structured replies: libnbd gets a NONE chunk and carries on', { ...needsLibnbd, timeout: PEER_TIMEOUT }, async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 1 * MiB)
  const c = await TestNbdClient.open(s.nbdPort, 'd')
  t.equal((await c.pwrite(4096, pattern(512, 5))).errno, 0)
  c.disconnect()
  // libnbd refuses 0-length requests itself unless strict mode's ZERO_SIZE check is off
  const script = [
    'import nbd, sys',
    'h = nbd.NBD()',
    'h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ZERO_SIZE)',
    'h.connect_uri(sys.argv[1])',
    'assert h.get_structured_replies_negotiated()',
    'print(len(h.pread(0, 0)), len(h.pread(0, 4096)))', // python's pread is (count, offset)
    'print(h.pread(512, 4096).hex()[:16])',
    'h.shutdown()',
  ].join('\n')
  const r = await run(py!, ['-c', script, s.uri('d')], { timeout: PEER_TIMEOUT })
  t.equal(r.status, 0, `libnbd: ${r.stderr.trim() || 'ok'}`)
  t.equal(r.stdout, `0 0\n${pattern(512, 5).subarray(0, 8).toString('hex')}\n`)
})

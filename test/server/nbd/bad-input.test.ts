import t, { type Test } from 'tap'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { pattern, rng } from '../../helpers/peers.js'

const EPERM = 1
const EINVAL = 22
const ENOSPC = 28
const NBD_FLAG_SEND_TRIM = 1 << 5

/** After each abuse, a well-behaved client still works. */
async function healthy(t: Test, port: number) {
  const c = await TestNbdClient.open(port, 'disk')
  const r = await c.pread(0, 512)
  t.equal(r.errno, 0, 'another client is unaffected')
  c.disconnect()
}

t.test('malformed handshakes close that connection only', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('disk', 1 << 20)
  // 1. client flags without fixed newstyle
  let c = await TestNbdClient.raw(s.nbdPort)
  await c.read(18)
  c.write(Buffer.from([0, 0, 0, 0]))
  await c.closed
  t.pass('no fixed newstyle: closed')
  // 2. bad option magic
  c = await TestNbdClient.raw(s.nbdPort)
  await c.greet()
  c.write(Buffer.alloc(16, 0x41))
  await c.closed
  t.pass('bad option magic: closed')
  // 3. an option claiming 1 GiB of data
  c = await TestNbdClient.raw(s.nbdPort)
  await c.greet()
  const h = Buffer.alloc(16)
  h.writeBigUInt64BE(0x49484156454f5054n, 0)
  h.writeUInt32BE(7, 8)
  h.writeUInt32BE(1 << 30, 12)
  c.write(h)
  const rep = await c.optionReply()
  t.equal(rep.type, 2 ** 31 + 9, 'NBD_REP_ERR_TOO_BIG')
  await c.closed
  // 4. unknown option: an error reply, and the session goes on
  c = await TestNbdClient.raw(s.nbdPort)
  await c.greet()
  c.sendOption(99, Buffer.from('junk'))
  t.equal((await c.optionReply()).type, 2 ** 31 + 1, 'NBD_REP_ERR_UNSUP')
  // 5. a GO whose lengths lie
  const bad = Buffer.alloc(10)
  bad.writeUInt32BE(100, 0)
  c.sendOption(7, bad)
  t.equal((await c.optionReply()).type, 2 ** 31 + 3, 'NBD_REP_ERR_INVALID')
  // 6. unknown export
  const nm = Buffer.from('ghost')
  const go = Buffer.alloc(4 + nm.length + 2)
  go.writeUInt32BE(nm.length, 0)
  nm.copy(go, 4)
  c.sendOption(7, go)
  const unk = await c.optionReply()
  t.equal(unk.type, 2 ** 31 + 6, 'NBD_REP_ERR_UNKNOWN')
  t.match(unk.data.toString(), /no disk named 'ghost'/)
  // 7. a hostile name (path traversal) is just an unknown/invalid export
  const trav = Buffer.from('../../etc/passwd')
  const go2 = Buffer.alloc(4 + trav.length + 2)
  go2.writeUInt32BE(trav.length, 0)
  trav.copy(go2, 4)
  c.sendOption(7, go2)
  const tr = await c.optionReply()
  t.equal(tr.type, 2 ** 31 + 6)
  t.match(tr.data.toString(), /invalid disk name/)
  c.sendOption(2, Buffer.alloc(0)) // ABORT
  t.equal((await c.optionReply()).type, 1)
  await c.closed
  // 8. random garbage in the handshake, many times
  const r = rng(5)
  for (let i = 0; i < 30; i++) {
    c = await TestNbdClient.raw(s.nbdPort)
    await c.read(18)
    c.write(pattern(1 + (r() % 300), r()))
    c.sock.end()
    await c.closed
  }
  await healthy(t, s.nbdPort)
})

t.test('bad requests get the protocol errno; framing errors close the connection', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('disk', 1 << 20)
  await s.ds.createSnapshot('disk', 'snap')
  const c = await TestNbdClient.open(s.nbdPort, 'disk')
  t.equal((await c.pread((1 << 20) - 512, 1024)).errno, EINVAL, 'read past the end: EINVAL')
  t.equal((await c.pwrite((1 << 20) - 512, Buffer.alloc(1024))).errno, ENOSPC, 'write past the end: ENOSPC')
  t.equal((await c.pread(2 ** 52, 512)).errno, EINVAL, 'huge offset: EINVAL')
  t.equal((await c.pread(2 ** 60, 512)).errno, EINVAL, 'an offset beyond 2^53: EINVAL')
  t.equal((await c.pwrite(2 ** 60, Buffer.alloc(512))).errno, EINVAL, 'a write there: EINVAL')
  t.equal((await c.request(0, 0, 64 << 20)).errno, EINVAL, 'read larger than the maximum block size: EINVAL')
  t.equal((await c.request(0, 0, 512, undefined, 1 << 9)).errno, EINVAL, 'unknown command flag: EINVAL')
  t.equal((await c.request(42, 0, 512)).errno, EINVAL, 'unknown command: EINVAL')
  t.equal((await c.request(7, 0, 512)).errno, EINVAL, 'block status without a negotiated context: EINVAL')
  t.equal((await c.request(3, 5, 0)).errno, EINVAL, 'flush with an offset: EINVAL')
  t.equal((await c.request(4, (1 << 20) - 512, 1024)).errno, ENOSPC, 'trim past the end: ENOSPC')
  t.equal((await c.request(6, 1 << 20, 512)).errno, ENOSPC, 'write zeroes past the end: ENOSPC')
  t.equal((await c.request(5, (1 << 20) - 512, 1024)).errno, EINVAL, 'cache past the end: EINVAL')
  t.equal((await c.request(0, (1 << 20) + 512, 0)).errno, EINVAL, 'an empty read past the end: EINVAL')
  t.equal((await c.pread(0, 512)).errno, 0, 'and the connection still works')
  // a VMDK's discard frees nothing, so TRIM is not advertised; one sent anyway is harmless
  t.equal(c.flags & NBD_FLAG_SEND_TRIM, 0, 'no NBD_FLAG_SEND_TRIM on a disk whose discard does nothing')
  t.equal((await c.request(4, 0, 512)).errno, 0, 'a TRIM sent anyway: no error')
  const ro = await TestNbdClient.open(s.nbdPort, 'disk@snap')
  t.equal((await ro.request(6, 0, 512)).errno, EPERM, 'write zeroes to a read-only export: EPERM')
  t.equal((await ro.request(6, 0, 512, undefined, 1 << 4)).errno, EPERM, 'fast write zeroes to a read-only export: EPERM')
  t.equal((await ro.pwrite(0, Buffer.alloc(512))).errno, EPERM, 'write to a read-only export: EPERM')
  t.equal((await ro.request(4, 0, 512)).errno, EPERM, 'trim on a read-only export: EPERM')
  t.equal((await ro.pread(0, 512)).errno, 0)
  ro.disconnect()
  // a write announcing more than the maximum payload: the framing cannot be trusted, close
  const big = Buffer.alloc(28)
  big.writeUInt32BE(0x25609513, 0)
  big.writeUInt16BE(1, 6)
  big.writeUInt32BE(0xffffffff, 24)
  c.write(big)
  await c.closed
  t.pass('oversized write: connection closed')
  // bad request magic
  const d = await TestNbdClient.open(s.nbdPort, 'disk')
  d.write(Buffer.alloc(28, 0xee))
  await d.closed
  t.pass('bad request magic: connection closed')
  await healthy(t, s.nbdPort)
})

t.test('a client that vanishes mid-write hurts nobody; acknowledged writes stay', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('disk', 4 << 20)
  const good = await TestNbdClient.open(s.nbdPort, 'disk')
  const data = pattern(65536, 9)
  t.equal((await good.pwrite(0, data)).errno, 0)
  for (let i = 0; i < 10; i++) {
    const bad = await TestNbdClient.open(s.nbdPort, 'disk')
    const h = Buffer.alloc(28)
    h.writeUInt32BE(0x25609513, 0)
    h.writeUInt16BE(1, 6)
    h.writeBigUInt64BE(BigInt(65536 * (i + 1)), 16)
    h.writeUInt32BE(1 << 20, 24)
    bad.write(Buffer.concat([h, Buffer.alloc(1000, 0xff)])) // header and a fraction of the payload
    bad.destroy()
    await bad.closed
  }
  t.ok((await good.pread(0, 65536)).data.equals(data), 'the good client reads its data')
  const rest = await good.pread(65536, 10 * 65536)
  t.ok(rest.data.every((b) => b === 0), 'no partial write from a vanished client was applied')
  good.disconnect()
})

t.test('structured replies: block status, REQ_ONE, DF, errors as chunks', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('disk', 1 << 20)
  const c = await TestNbdClient.open(s.nbdPort, 'disk', { structured: true })
  t.equal((await c.pwrite(65536, pattern(65536, 1))).errno, 0)
  const bs = await c.request(7, 0, 1 << 20)
  t.same(bs.extents, [
    { length: 65536, flags: 3 },
    { length: 65536, flags: 0 },
    { length: (1 << 20) - 131072, flags: 3 },
  ])
  const one = await c.request(7, 0, 1 << 20, undefined, 1 << 3)
  t.equal(one.extents.length, 1, 'REQ_ONE: one extent')
  const df = await c.request(0, 65536, 4096, undefined, 1 << 2)
  t.equal(df.errno, 0)
  t.equal(df.data.length, 4096)
  t.equal((await c.pread(1 << 20, 512)).errno, EINVAL, 'errors come as error chunks')
  const fz = await c.request(6, 65536, 65536, undefined, 1 << 4)
  t.equal(fz.errno, 95, 'FAST_ZERO on data: ENOTSUP (it would be slow)')
  t.equal((await c.request(6, 0, 65536, undefined, 1 << 4)).errno, 0, 'FAST_ZERO on a hole: done')
  c.disconnect()
})

import t from 'tap'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import { pattern } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { RawIscsi, write10 } from '../../helpers/iscsi-raw.js'

/*
 * CRC32C data digests. No initiator on this machine offers them (libiscsi sends DataDigest=None
 * only; open-iscsi needs the kernel's iscsi_tcp), so this test speaks the protocol over a raw
 * socket: digests checked on every PDU the target sends, and wrong digests sent on purpose.
 */

t.test('CRC32C matches RFC 3720 B.4', async (t) => {
  t.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa, '32 bytes of zeros')
  t.equal(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43, '32 bytes of ones')
  t.equal(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e, 'incrementing')
})

t.test('data digests: negotiated, checked both ways; a bad one fails its command only', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('dd', 4 << 20)
  const target = 'iqn.2026-11.local.tandem:dd'
  const c = await RawIscsi.open(s.iscsiPort)
  t.teardown(() => c.close())
  const keys = await c.login(target, 'HeaderDigest=CRC32C,None\0DataDigest=CRC32C,None\0')
  t.equal(keys.get('HeaderDigest'), 'CRC32C')
  t.equal(keys.get('DataDigest'), 'CRC32C')

  const readBack = async (lba: number, blocks: number): Promise<Buffer> => (await c.readBlocks(lba, blocks, { t })).data

  // a good write with immediate data (odd length: the digest covers the padding too)
  const good = pattern(512, 1)
  c.command(write10(10, 1), { write: good })
  let r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x21)
  t.equal(r.bhs[3], 0, 'GOOD')
  t.same(await readBack(10, 1), good, 'read back through Data-In with digests')

  // immediate data with a wrong digest: Reject (data digest error), then CHECK CONDITION
  const itt = c.command(write10(10, 1), { write: pattern(512, 2), badData: true })
  r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x3f, 'Reject')
  t.equal(r.bhs[2], 0x02, 'reason: data digest error')
  t.equal(r.data.length, 48, 'the rejected header comes back')
  t.equal(r.data.readUInt32BE(16), itt)
  r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x21)
  t.equal(r.bhs.readUInt32BE(16), itt)
  t.equal(r.bhs[3], 0x02, 'CHECK CONDITION')
  const sense = r.data.subarray(2)
  t.same([sense[2] & 0xf, sense[12], sense[13]], [0x0b, 0x47, 0x05], 'ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR')
  t.same(await readBack(10, 1), good, 'the corrupt write did not land')

  // solicited Data-Out with a wrong digest: the write fails, nothing is written
  const big = pattern(8192, 3)
  const w = c.command(write10(20, 16), { write: big.subarray(0, 512), edtl: 8192 })
  r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x31, 'R2T')
  const ttt = r.bhs.readUInt32BE(20)
  t.equal(r.bhs.readUInt32BE(40), 512, 'from the end of the immediate data')
  c.dataOut(w, ttt, 512, big.subarray(512), true)
  r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x3f, 'Reject')
  t.equal(r.bhs[2], 0x02)
  r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x21)
  t.equal(r.bhs[3], 0x02, 'CHECK CONDITION')
  t.same([r.data[2 + 2] & 0xf, r.data[2 + 12], r.data[2 + 13]], [0x0b, 0x47, 0x05])
  t.same(await readBack(20, 16), Buffer.alloc(8192), 'nothing of it was written')

  // the same write with good digests goes through, and the session is still in step
  const w2 = c.command(write10(20, 16), { write: big.subarray(0, 512), edtl: 8192 })
  r = await c.read(t)
  t.equal(r.bhs[0] & 0x3f, 0x31, 'R2T')
  c.dataOut(w2, r.bhs.readUInt32BE(20), 512, big.subarray(512))
  r = await c.read(t)
  t.equal(r.bhs[3], 0, 'GOOD')
  t.same(await readBack(20, 16), big, 'read back')
  // and what went in over iSCSI with digests is what the NBD export and the disk hold
  const nbd = await TestNbdClient.open(s.nbdPort, 'dd')
  t.teardown(() => nbd.destroy())
  t.same((await nbd.pread(20 * 512, 8192)).data, big, 'the NBD export shows the same bytes')
})

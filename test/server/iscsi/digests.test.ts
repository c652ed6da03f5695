import t, { type Test } from 'tap'
import { connect } from 'node:net'
import { crc32c } from '../../../src/disk-formats/lock-region/crc32c.js'
import { socketQueue } from '../../../src/server/net/tcp-service.js'
import { pattern } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'

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

const le32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n >>> 0)
  return b
}
const padded = (d: Buffer) => (d.length % 4 ? Buffer.concat([d, Buffer.alloc(4 - (d.length % 4))]) : d)

class RawSession {
  private cmdSN = 1
  private itt = 1
  digests = false
  constructor(
    private readonly sock: ReturnType<typeof connect>,
    private readonly q: ReturnType<typeof socketQueue>['q'],
  ) {}

  static async open(port: number): Promise<RawSession> {
    const sock = connect(port, '127.0.0.1')
    await new Promise<void>((r, j) => {
      sock.once('connect', () => r())
      sock.once('error', j)
    })
    return new RawSession(sock, socketQueue(sock, 1 << 24).q)
  }

  /** Sends a PDU; `badData` flips the data digest. */
  send(bhs: Buffer, data: Buffer = Buffer.alloc(0), badData = false): void {
    bhs.writeUIntBE(data.length, 5, 3)
    const parts = [bhs]
    if (this.digests) parts.push(le32(crc32c(bhs)))
    if (data.length) {
      parts.push(padded(data))
      if (this.digests) parts.push(le32(crc32c(padded(data)) ^ (badData ? 1 : 0)))
    }
    this.sock.write(Buffer.concat(parts))
  }

  /** Reads a PDU, checking both digests when they are on. */
  async read(t: Test): Promise<{ bhs: Buffer; data: Buffer }> {
    const bhs = await this.q.read(48)
    if (this.digests) {
      const hd = (await this.q.read(4)).readUInt32LE(0)
      if (hd !== crc32c(bhs)) t.fail('header digest from the target is wrong')
    }
    const dlen = bhs.readUIntBE(5, 3)
    let data: Buffer = Buffer.alloc(0)
    if (dlen) {
      const body = await this.q.read(dlen + ((4 - (dlen % 4)) % 4))
      if (this.digests) {
        const dd = (await this.q.read(4)).readUInt32LE(0)
        t.equal(dd, crc32c(body), `data digest of a ${dlen}-byte segment (opcode 0x${(bhs[0] & 0x3f).toString(16)})`)
      }
      data = body.subarray(0, dlen)
    }
    return { bhs, data }
  }

  async login(t: Test, target: string, keys: string): Promise<Map<string, string>> {
    const text = Buffer.from(`InitiatorName=iqn.2026-11.test:digests\0SessionType=Normal\0TargetName=${target}\0${keys}`)
    const b = Buffer.alloc(48)
    b[0] = 0x43
    b[1] = 0x80 | (1 << 2) | 3
    b.write('\x00\x02\x3d\x00\x00\x07', 8, 'latin1')
    b.writeUInt32BE(0, 16)
    b.writeUInt32BE(this.cmdSN, 24)
    this.send(b, text)
    const r = await this.read(t)
    t.equal(r.bhs[0] & 0x3f, 0x23, 'login response')
    t.equal(r.bhs[36], 0, 'login succeeded')
    this.digests = true
    return new Map(
      r.data
        .toString('latin1')
        .split('\0')
        .filter(Boolean)
        .map((kv) => kv.split('=') as [string, string]),
    )
  }

  /** A SCSI command with immediate data (W) or expecting data in (R). */
  command(cdb: Buffer, opts: { write?: Buffer; readLength?: number; badData?: boolean; edtl?: number }): number {
    const b = Buffer.alloc(48)
    b[0] = 0x01
    const write = opts.write !== undefined
    b[1] = 0x80 | (write ? 0x20 : 0) | (opts.readLength ? 0x40 : 0) | 1 // F, W/R, ATTR simple
    const itt = this.itt++
    b.writeUInt32BE(itt, 16)
    b.writeUInt32BE(opts.edtl ?? (write ? opts.write!.length : (opts.readLength ?? 0)), 20)
    b.writeUInt32BE(this.cmdSN++, 24)
    cdb.copy(b, 32)
    this.send(b, opts.write ?? Buffer.alloc(0), opts.badData)
    return itt
  }

  dataOut(itt: number, ttt: number, offset: number, data: Buffer, badData = false): void {
    const b = Buffer.alloc(48)
    b[0] = 0x05
    b[1] = 0x80
    b.writeUInt32BE(itt, 16)
    b.writeUInt32BE(ttt, 20)
    b.writeUInt32BE(0, 36)
    b.writeUInt32BE(offset, 40)
    this.send(b, data, badData)
  }

  close(): void {
    this.sock.destroy()
  }
}

/** A READ(10) or WRITE(10) CDB in a 16-byte field. */
const rw10 = (op: number, lba: number, blocks: number) => {
  const c = Buffer.alloc(16)
  c[0] = op
  c.writeUInt32BE(lba, 2)
  c.writeUInt16BE(blocks, 7)
  return c
}
const write10 = (lba: number, blocks: number) => rw10(0x2a, lba, blocks)
const read10 = (lba: number, blocks: number) => rw10(0x28, lba, blocks)

t.test('data digests: negotiated, checked both ways; a bad one fails its command only', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('dd', 4 << 20)
  const target = 'iqn.2026-11.local.tandem:dd'
  const c = await RawSession.open(s.iscsiPort)
  t.teardown(() => c.close())
  const keys = await c.login(t, target, 'HeaderDigest=CRC32C,None\0DataDigest=CRC32C,None\0')
  t.equal(keys.get('HeaderDigest'), 'CRC32C')
  t.equal(keys.get('DataDigest'), 'CRC32C')

  const readBack = async (lba: number, blocks: number): Promise<Buffer> => {
    c.command(read10(lba, blocks), { readLength: blocks * 512 })
    const parts: Buffer[] = []
    for (;;) {
      const r = await c.read(t)
      const op = r.bhs[0] & 0x3f
      if (op === 0x25) {
        parts.push(r.data)
        if (r.bhs[1] & 0x01) break // S: status in the last Data-In
      } else {
        t.equal(op, 0x21, 'SCSI response')
        break
      }
    }
    return Buffer.concat(parts)
  }

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

import t from 'tap'
import { connect, type Socket } from 'node:net'
import { needs, run, rng, pattern } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

function open(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s))
    s.on('error', reject)
  })
}

/** A Login Request going straight to full feature (CSG=1 → NSG=3, T=1). */
function login(target: string): Buffer {
  const text = Buffer.from(`InitiatorName=iqn.2026-11.test:fuzz\0SessionType=Normal\0TargetName=${target}\0`)
  const pad = (4 - (text.length % 4)) % 4
  const b = Buffer.alloc(48)
  b[0] = 0x43
  b[1] = 0x80 | (1 << 2) | 3
  b.writeUIntBE(text.length, 5, 3)
  b.write('\x00\x02\x3d\x00\x00\x01', 8, 'latin1') // ISID
  b.writeUInt32BE(1, 16)
  return Buffer.concat([b, text, Buffer.alloc(pad)])
}

/** Sends bytes, then waits until the server closes the socket or a short quiet period passes. */
async function abuse(port: number, bytes: Buffer[], waitMs = 150): Promise<void> {
  const s = await open(port)
  s.on('data', () => {})
  s.on('error', () => {})
  for (const b of bytes) s.write(b)
  await new Promise<void>((r) => {
    const timer = setTimeout(() => r(), waitMs)
    s.on('close', () => {
      clearTimeout(timer)
      r()
    })
  })
  s.destroy()
}

t.test('random and malformed PDUs: the server and other sessions carry on', needs('iscsi-inq'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('fz', 4 << 20)
  const target = 'iqn.2026-11.local.tandem:fz'
  const lun = `iscsi://127.0.0.1:${s.iscsiPort}/${target}/0`
  const r = rng(2026)
  for (let i = 0; i < 150; i++) {
    const bhs = pattern(48, r())
    // keep declared lengths small so the server reads them fully (a huge length is tested below)
    bhs[4] = r() % 3
    bhs.writeUIntBE(r() % 2048, 5, 3)
    const before = i % 3 === 0 ? [] : [login(target)]
    if (i % 5 === 0) bhs[0] = [0x01, 0x05, 0x04, 0x02, 0x06, 0x00, 0x10][r() % 7] | (r() % 2 ? 0x40 : 0)
    await abuse(s.iscsiPort, [...before, bhs, pattern(r() % 3000, r())])
  }
  // a data segment larger than declared MaxRecvDataSegmentLength: connection closed
  const huge = Buffer.alloc(48)
  huge[0] = 0x01
  huge.writeUIntBE(0xffffff, 5, 3)
  await abuse(s.iscsiPort, [login(target), huge], 2000)
  // a login with garbage text
  await abuse(s.iscsiPort, [Buffer.concat([login(target).subarray(0, 48), Buffer.from('no-equals-sign\0')])], 2000)
  // a Data-Out for a task that does not exist, and a SCSI command for LUN 7
  const dataOut = Buffer.alloc(48)
  dataOut[0] = 0x05
  dataOut[1] = 0x80
  dataOut.writeUInt32BE(12345, 16)
  await abuse(s.iscsiPort, [login(target), dataOut])
  const ok = await run('iscsi-inq', [lun])
  t.equal(ok.status, 0, `a well-behaved session still works: ${ok.stderr}`)
  const big = await run('iscsi-readcapacity16', [lun])
  t.match(big.stdout, /Total size:4194304/)
})

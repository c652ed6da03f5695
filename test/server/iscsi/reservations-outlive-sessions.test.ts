import t from 'tap'
import { IscsiInitiator } from '../../../src/client/transport/iscsi/index.js'
import { startServer } from '../../helpers/server.js'

const RESERVATION_CONFLICT = 0x18
const write10 = Buffer.from([0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0])

/** REGISTER (key) then RESERVE WRITE EXCLUSIVE, as `initiator`; then log out. */
async function reserve(uri: string, initiator: string, key: bigint): Promise<void> {
  const c = await IscsiInitiator.connect(uri, { initiatorName: initiator })
  const out = (sa: number, type: number, k: bigint, saKey: bigint) => {
    const cdb = Buffer.from([0x5f, sa, type, 0, 0, 0, 0, 0, 24, 0])
    const p = Buffer.alloc(24)
    p.writeBigUInt64BE(k, 0)
    p.writeBigUInt64BE(saKey, 8)
    return c.command(cdb, p)
  }
  await out(0x00, 0, 0n, key)
  await out(0x01, 1, key, 0n)
  await c.close()
}

async function writeStatus(uri: string, initiator: string): Promise<number> {
  const c = await IscsiInitiator.connect(uri, { initiatorName: initiator })
  try {
    return (await c.execute(write10, Buffer.alloc(512, 1))).status
  } finally {
    await c.close()
  }
}

t.test('a persistent reservation outlives the logout of every session (SPC-4 5.13), not the disk', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 1 << 20)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:d/0`
  await reserve(uri, 'iqn.2026-11.test:a', 7n)
  // no session has the disk open now: the target closed its LU
  t.equal(await writeStatus(uri, 'iqn.2026-11.test:b'), RESERVATION_CONFLICT, "after a's logout, b's write is still fenced")
  t.equal(await writeStatus(uri, 'iqn.2026-11.test:b'), RESERVATION_CONFLICT, 'and again after b logged out too')
  const h = await s.ds.openExport('d')
  t.ok((await h.device.read(0, 512)).equals(Buffer.alloc(512)), 'nothing written')
  await h.release()

  await s.ds.deleteDisk('d')
  await s.ds.createDisk('d', 1 << 20)
  t.equal(await writeStatus(uri, 'iqn.2026-11.test:b'), 0, 'a disk made again under the same name starts with no reservation')
})

import t from 'tap'
import { LOCKSPACE_IQN } from '../../../src/server/datastore/index.js'
import { openVmDisk, vmInitiatorName } from '../../../src/client/vm/index.js'
import { readReservation } from '../../../src/client/ft/fence.js'
import { fenceKey } from '../../../src/client/ft/arbiter.js'
import { startServer } from '../../helpers/server.js'
import { startPair, waitFor } from '../../helpers/ft-cli.js'

/**
 * Issue 17 "Done means" 2, ft-architecture §2 (d) test 4: the primary's process group SIGSTOPped
 * for ~3 s while its guest (disklog) appends to an iSCSI disk; the backup goes live; SIGCONT: the
 * zombie releases no output (no console line after the stop), halts (exit 123: its claim lost),
 * and its I_T nexus is fenced — it is no longer registered, the backup's key holds WRITE EXCLUSIVE –
 * REGISTRANTS ONLY, and a WRITE on that nexus gets RESERVATION CONFLICT. The disk holds the log as
 * the live backup wrote it: records 1..N in order, N at least every "synced n" either side released.
 * The lockspace is the server's LU over iSCSI: a process stopped inside a file lockspace's fcntl
 * lock would stall the other side's claim.
 */

const FT_HALTED = 123
const RESERVATION_CONFLICT = 0x18
const FIRST_LBA = 2048
const MAGIC = 0x474f4c44
const pattern = (n: number, i: number) => ((Math.imul(n, 2654435761) ^ Math.imul(i, 40503) ^ 0x5a5a5a5a) >>> 0)
const synced = (text: string) => [...text.matchAll(/disklog: synced (\d+)/g)].map((m) => Number(m[1]))
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('SIGSTOP of the primary for 3 s: the backup goes live; resumed, the primary releases nothing, halts, and is fenced on the disk', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('vm1', 16 << 20)
  const disk = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:vm1/0`
  const lockspace = `iscsi://127.0.0.1:${s.iscsiPort}/${LOCKSPACE_IQN}/0`
  const { primary, backup } = await startPair(t, { args: ['--guest', 'disklog', '--disk', disk, '--ft-loss-ms', '1000'], lockspace })
  await waitFor(primary, /disklog: synced \d+/, 30_000)
  await sleep(500)
  process.kill(-primary.child.pid!, 'SIGSTOP')
  await sleep(200)
  const before = primary.stderr().length
  const releasedBefore = synced(primary.stderr())
  const t0 = Date.now()
  const live = await waitFor(backup, /going live/, 10_000).then(() => Date.now() - t0, () => null)
  t.ok(live !== null, `the backup went live while the primary was stopped (${live} ms after the stop)`)
  await sleep(Math.max(0, 3000 - (Date.now() - t0)))
  process.kill(-primary.child.pid!, 'SIGCONT')
  const p = await Promise.race([primary.exited, sleep(10_000).then(() => null)])
  t.ok(p, 'the resumed primary exited within 10 s')
  t.equal(p?.code, FT_HALTED, `it halted (exit 123): ${primary.stderr().slice(-400)}`)
  t.match(JSON.parse(primary.stdout() || '{}').ft, { role: 'primary', outcome: 'halted' })
  const after = primary.stderr().slice(before)
  t.same(synced(after), [], `no console line left the primary after the stop (${releasedBefore.length} before it)`)
  t.match(after, /lost vm\/vm1 to the backup: halted, no output released/)

  // the backup runs on live and writes; the deposed primary's nexus (ISID qualifier 1) is fenced
  await waitFor(backup, /going live[\s\S]*disklog: synced/, 15_000)
  const zombie = await openVmDisk(disk, vmInitiatorName('vm1'), 1)
  t.teardown(() => zombie.close())
  const r = await readReservation(zombie.scsi!)
  t.equal(r.holder?.key, fenceKey(1, 'backup'), `the backup's key (generation 1) holds the reservation: ${r.holder?.key}`)
  t.notOk(r.keys.includes(fenceKey(1, 'primary')), `the primary's key is no longer registered (${r.keys.join(', ')})`)
  const w = Buffer.from([0x2a, 0, 0, 0, 0, 100, 0, 0, 1, 0])
  const res = await zombie.scsi!.execute(w, Buffer.alloc(512), 0)
  t.equal(res.status, RESERVATION_CONFLICT, 'a WRITE from the primary\'s nexus gets RESERVATION CONFLICT')
  await zombie.close()

  backup.child.kill('SIGTERM')
  await backup.exited
  const released = Math.max(0, ...releasedBefore, ...synced(backup.stderr()))
  const h = await s.ds.openExport('vm1')
  let n = 0
  try {
    for (;; n++) {
      const b = await h.device.read((FIRST_LBA + n) * 512, 512)
      const ok = b.readUInt32LE(0) === MAGIC && b.readUInt32LE(4) === n + 1 && Array.from({ length: 126 }, (_, i) => b.readUInt32LE(8 + 4 * i) === pattern(n + 1, i + 2)).every(Boolean)
      if (!ok) break
    }
  } finally {
    await h.release()
  }
  t.ok(n >= released && released > 0, `the disk holds records 1..${n} in order, every synced one released (${released}) among them`)
})

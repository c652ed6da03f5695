import t from 'tap'
import { LOCKSPACE_IQN } from '../../../src/server/datastore/index.js'
import { openVmDisk, vmInitiatorName } from '../../../src/client/vm/index.js'
import { readReservation } from '../../../src/client/ft/fence.js'
import { fenceKey } from '../../../src/client/ft/arbiter.js'
import { startServer } from '../../helpers/server.js'
import { kv, startPair, waitFor } from '../../helpers/ft-cli.js'
import { UdpSwitch } from '../../../src/client/net/udp-switch.js'
import { ANNOUNCE_ETHERTYPE, KEEPALIVE_MS } from '../../../src/client/net/udp-uplink.js'
import { join } from 'node:path'
import { tmp } from '../../helpers/peers.js'

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
  const zombie = await openVmDisk(disk, vmInitiatorName('vm1'), { isidQualifier: 1 })
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

t.test('SIGSTOP of a kvstore primary past its uplink keepalive: resumed, it announces no MAC and releases no reply; the live backup answers every acknowledged key', async (t) => {
  const VM_MAC = '02:00:00:00:00:43'
  const s = await startServer(t)
  const lockspace = `iscsi://127.0.0.1:${s.iscsiPort}/${LOCKSPACE_IQN}/0`
  const sw = await UdpSwitch.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(() => sw.close())
  const url = `udp:127.0.0.1:${sw.address.port}`
  const { primary, backup } = await startPair(t, { args: ['--guest', 'kvstore', '--switch', url, '--mac', VM_MAC, '--ft-loss-ms', '1000'], lockspace })
  await waitFor(primary, /kvstore: listening/, 30_000)
  await sleep(300)
  // the primary's uplink announced the VM's MAC (a frame); the backup's joined with an empty datagram
  const talkers = sw.list().filter((p) => p.framesIn > 0)
  t.equal(talkers.length, 1, `one peer has sent frames: the primary (${JSON.stringify(sw.list())})`)
  const peer = talkers[0].peer
  const framesOf = () => sw.list().find((p) => p.peer === peer)?.framesIn
  const acked = join(tmp(t, 'tandem-ft-stop-'), 'acked.jsonl')
  const stopMs = KEEPALIVE_MS + 500
  const load = kv(['load', '--switch', url, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '300', '--duration', String(Math.ceil(stopMs / 1000) + 4), '--log', acked, '--timeout', '20', '--json'])
  await sleep(1000)
  process.kill(-primary.child.pid!, 'SIGSTOP')
  await sleep(200)
  const f0 = framesOf()
  const t0 = Date.now()
  // every frame from the primary's uplink from now on, with its time and EtherType
  const late: { ms: number; type: number }[] = []
  const sock = (sw as unknown as { sock: import('node:dgram').Socket }).sock
  sock.on('message', (msg, r) => {
    if (`${r.address}:${r.port}` === peer && msg.length >= 14) late.push({ ms: Date.now() - t0, type: msg.readUInt16BE(12) })
  })
  t.ok(await waitFor(backup, /going live/, 10_000).then(() => true, () => false), `the backup went live while the primary was stopped (${Date.now() - t0} ms)`)
  // stopped past the uplink's keepalive: its timer is overdue when the process resumes
  await sleep(Math.max(0, stopMs - (Date.now() - t0)))
  const resumedAt = Date.now() - t0
  process.kill(-primary.child.pid!, 'SIGCONT')
  const p = await Promise.race([primary.exited, sleep(10_000).then(() => null)])
  t.equal(p?.code, FT_HALTED, `the resumed primary halted (exit 123): ${primary.stderr().slice(-300)}`)
  t.comment(`frames from the primary after the stop: ${late.length} (${late.map((x) => `${x.ms} ms 0x${x.type.toString(16)}`).join(', ')}); resumed at ${resumedAt} ms; ${f0} before the stop`)
  t.same(late.filter((x) => x.type === ANNOUNCE_ETHERTYPE), [], 'the resumed primary did not announce the VM\'s MAC (its overdue keepalive carries none)')
  // replies whose sends were queued in the OS before the stop leave at SIGCONT (as if delayed on
  // the wire); none may be decided after it: anything later than the first turn of its loop is a release
  const replies = late.filter((x) => x.type !== ANNOUNCE_ETHERTYPE)
  t.ok(replies.every((x) => x.ms - resumedAt < 100), `no reply left the primary later than 100 ms after SIGCONT (${replies.length} queued before the stop went out at it)`)
  const l = await load.done
  t.equal(l.code, 0, `kv load: ${l.err.slice(-300)}`)
  const c = await kv(['check', '--switch', url, '--vm-mac', VM_MAC, '--log', acked, '--timeout', '10']).done
  t.equal(c.code, 0, `kv check against the live backup: ${c.out}${c.err}`)
  backup.child.kill('SIGTERM')
  await backup.exited
})

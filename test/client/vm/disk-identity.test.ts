import t, { type Test } from 'tap'
import { getEventListeners } from 'node:events'
import { join } from 'node:path'
import { IscsiInitiator } from '../../../src/client/transport/iscsi/index.js'
import { openVmDisk, runVm, vmInitiatorName, vmIsid, type ScsiPath } from '../../../src/client/vm/index.js'
import { startServer } from '../../helpers/server.js'
import { CLI, needs, run, tandem, tmp } from '../../helpers/peers.js'
import { DISKIO, diskioPattern } from '../../helpers/diskio.js'

const VM = 'iqn.2026-11.local.tandem:vm:vm1'
const HOST = 'iqn.2026-11.local.tandem:host:h1'
/** another initiator on the disk's access list (an administrator's tool, a backup) */
const PEER = 'iqn.2026-11.test:peer'
const RESERVATION_CONFLICT = 0x18

const vmRun = (args: string[], cwd?: string) => run(process.execPath, [CLI, 'vm', 'run', ...args], { cwd, timeout: 120_000 })

/** A disk masked to the VM's identity (and PEER), on an in-process server. */
async function maskedDisk(t: Test, name = 'vm1') {
  const s = await startServer(t)
  await s.ds.createDisk(name, 64 << 20)
  await s.ds.setAccess(name, { initiators: [VM, PEER] })
  const iqn = `iqn.2026-11.local.tandem:${name}`
  return { s, iqn, uri: `iscsi://127.0.0.1:${s.iscsiPort}/${iqn}/0`, portal: `iscsi://127.0.0.1:${s.iscsiPort}` }
}

/** The blocks diskio writes, read at the server (its datastore's export, not over the network). */
async function serverHolds(s: Awaited<ReturnType<typeof startServer>>, disk: string, t: Test, what: string): Promise<void> {
  const h = await s.ds.openExport(disk)
  try {
    for (const chunk of [0, 1, 31, 63]) {
      const lba = DISKIO.firstLba + chunk * DISKIO.chunkBlocks
      const got = await h.device.read(lba * 512, DISKIO.chunkBlocks * 512)
      t.ok(got.equals(diskioPattern(lba, DISKIO.chunkBlocks)), `${what}: chunk ${chunk} (LBA ${lba}) at the server is what the guest wrote`)
    }
  } finally {
    await h.release()
  }
}

async function zeroAtServer(s: Awaited<ReturnType<typeof startServer>>, disk: string): Promise<void> {
  const h = await s.ds.openExport(disk)
  await h.device.write(DISKIO.firstLba * 512, Buffer.alloc(DISKIO.chunks * DISKIO.chunkBlocks * 512))
  await h.device.flush()
  await h.release()
}

/** PERSISTENT RESERVE OUT (SPC-4 6.16) with a basic parameter list. */
function prOut(p: ScsiPath, sa: number, type: number, key: bigint, saKey: bigint) {
  const cdb = Buffer.alloc(10)
  cdb[0] = 0x5f
  cdb[1] = sa
  cdb[2] = type
  cdb.writeUInt32BE(24, 5)
  const param = Buffer.alloc(24)
  param.writeBigUInt64BE(key, 0)
  param.writeBigUInt64BE(saKey, 8)
  return p.execute(cdb, param, 0)
}

const write10 = (lba: number) => Buffer.from([0x2a, 0, (lba >>> 24) & 0xff, (lba >>> 16) & 0xff, (lba >>> 8) & 0xff, lba & 0xff, 0, 0, 1, 0])
const read10 = (lba: number) => Buffer.from([0x28, 0, (lba >>> 24) & 0xff, (lba >>> 16) & 0xff, (lba >>> 8) & 0xff, lba & 0xff, 0, 0, 1, 0])

t.test('a disk masked to the VM: invisible to the host IQN (libiscsi the judge), usable by the VM', needs('iscsi-ls', 'iscsi-inq'), async (t) => {
  const { s, iqn, uri, portal } = await maskedDisk(t)
  const asHost = await run('iscsi-ls', ['-i', HOST, portal], { timeout: 30_000 })
  t.equal(asHost.status, 0, asHost.stderr)
  t.notMatch(asHost.stdout, `Target:${iqn} `, 'SendTargets to the host IQN does not list the disk')
  t.match(asHost.stdout, 'Target:iqn.2026-11.local.tandem:lockspace ', '(the host IQN sees the lockspace LUN)')
  const asVm = await run('iscsi-ls', ['-i', VM, portal], { timeout: 30_000 })
  t.match(asVm.stdout, `Target:${iqn} `, 'SendTargets to the VM IQN lists it')
  const inqHost = await run('iscsi-inq', ['-i', HOST, uri], { timeout: 30_000 })
  t.not(inqHost.status, 0, 'iscsi-inq as the host IQN fails')
  t.match(inqHost.stdout + inqHost.stderr, /Authorization failure/, 'the login is refused: not authorized')
  const inqVm = await run('iscsi-inq', ['-i', VM, uri], { timeout: 30_000 })
  t.equal(inqVm.status, 0, `iscsi-inq as the VM IQN logs in: ${inqVm.stderr}`)

  const refused = await vmRun(['--guest', 'diskio', '--disk', uri, '--initiator-name', HOST])
  t.equal(refused.status, 1, 'a VM run under the host IQN cannot open the disk')
  t.match(refused.stderr, `tandem: the VM's disk as ${HOST}: iSCSI login to ${iqn} failed: not authorized for this target`)
  t.notMatch(refused.stderr, /\n\s+at /, 'no stack trace')

  const r = await vmRun(['--guest', 'diskio', '--disk', uri, '--name', 'vm1', '--json'])
  t.equal(r.status, 0, r.stderr)
  t.match(r.stderr, /diskio: wrote and verified 1024 blocks/)
  await serverHolds(s, 'vm1', t, 'the VM under its own name')
})

t.test('a reservation the VM made holds after it moves: the next run (another process, the host form of the flags) is the same I_T nexus', async (t) => {
  const { s, uri } = await maskedDisk(t)
  // "host A": the VM's disk opened as `tandem vm run --name vm1` opens it; the guest's PERSISTENT
  // RESERVE OUT REGISTER and RESERVE (WRITE EXCLUSIVE) go down its path; then host A goes away
  const a = await openVmDisk(uri, vmInitiatorName('vm1'))
  t.ok(a.scsi, 'an iscsi:// disk is a SCSI path, not an in-process LU')
  t.equal((await prOut(a.scsi!, 0x00, 0, 0n, 0x1111n)).status, 0, 'REGISTER')
  t.equal((await prOut(a.scsi!, 0x01, 1, 0x1111n, 0n)).status, 0, 'RESERVE, WRITE EXCLUSIVE')
  await a.close()

  // "host B": another host's own session (its lockspace login under its host IQN) is open; the VM
  // runs in a new process, from another folder, named by --initiator-name as `tandem host` spawns it
  const lockspace = await IscsiInitiator.connect(`iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:lockspace/0`, { initiatorName: 'iqn.2026-11.local.tandem:host:h2' })
  t.teardown(() => lockspace.close())
  await zeroAtServer(s, 'vm1')
  const r = await vmRun(['--guest', 'diskio', '--disk', uri, '--initiator-name', VM, '--json'], tmp(t))
  t.equal(r.status, 0, `the moved VM writes under its own reservation: ${r.stderr}`)
  t.match(r.stderr, /diskio: wrote and verified 1024 blocks/)
  await serverHolds(s, 'vm1', t, 'after the move')

  // the reservation still fences everyone else: another initiator on the access list, and the same
  // VM name under another ISID (another role of the VM)
  const peer = await IscsiInitiator.connect(uri, { initiatorName: PEER })
  const other = await IscsiInitiator.connect(uri, { initiatorName: VM, isid: vmIsid(VM, 2) })
  t.teardown(() => Promise.all([peer.close(), other.close()]))
  for (const [who, ini] of [['another initiator', peer], ['the VM name under another ISID', other]] as const) {
    t.equal((await ini.execute(write10(0), Buffer.alloc(512, 9))).status, RESERVATION_CONFLICT, `${who}: a write is refused (RESERVATION CONFLICT)`)
    t.equal((await ini.execute(read10(0), null, 512)).status, 0, `${who}: a read passes (WRITE EXCLUSIVE)`)
  }
  const rr = Buffer.alloc(10)
  rr[0] = 0x5e // PERSISTENT RESERVE IN, READ RESERVATION
  rr[1] = 0x01
  rr.writeUInt16BE(24, 7)
  const held = await peer.execute(rr, null, 24)
  t.equal(held.data.length, 24, 'READ RESERVATION: one reservation')
  t.equal(held.data.length === 24 ? held.data.readBigUInt64BE(8) : null, 0x1111n, "the VM's key holds it")
  t.equal(held.data[21] & 0x0f, 1, 'type WRITE EXCLUSIVE')
  const h = await s.ds.openExport('vm1')
  t.ok((await h.device.read(0, 512)).equals(Buffer.alloc(512)), 'nothing the fenced initiators sent reached the disk')
  await h.release()
})

t.test('nbd:// works standalone (an in-process LU over the NBD client)', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('vm2', 64 << 20)
  const r = await vmRun(['--guest', 'diskio', '--disk', `nbd://127.0.0.1:${s.nbdPort}/vm2`])
  t.equal(r.status, 0, r.stderr)
  t.match(r.stdout, /diskio: wrote and verified 1024 blocks/)
  await serverHolds(s, 'vm2', t, 'over NBD')
})

t.test('record and replay with the disk over iSCSI: the replay re-executes the requests at the target and ends in the same state', async (t) => {
  const { uri } = await maskedDisk(t)
  const log = join(tmp(t), 'run.log')
  const rec = await vmRun(['--guest', 'diskio', '--disk', uri, '--name', 'vm1', '--record', log, '--json'])
  t.equal(rec.status, 0, rec.stderr)
  const rep = await vmRun(['--guest', 'diskio', '--disk', uri, '--name', 'vm1', '--replay', log, '--json'])
  t.equal(rep.status, 0, rep.stderr)
  const a = JSON.parse(rec.stdout) as Record<string, unknown>
  const b = JSON.parse(rep.stdout) as Record<string, unknown>
  t.ok((a.events as number) > 100, `${a.events} events recorded`)
  t.equal(b.stateHash, a.stateHash, 'same state hash')
  t.equal(b.consoleHash, a.consoleHash, 'same console')
})

t.test('a VM waiting on a remote disk leaves no abort listener behind per wait', async (t) => {
  const { uri } = await maskedDisk(t)
  const d = await openVmDisk(uri, VM)
  t.teardown(() => d.close())
  const stop = new AbortController()
  const warnings: Error[] = []
  const onWarning = (w: Error) => warnings.push(w)
  process.on('warning', onWarning)
  t.teardown(() => process.off('warning', onWarning))
  const r = await runVm({ guest: 'diskio', memory: 32 << 20, scsi: d.scsi, signal: stop.signal })
  t.equal(r.exitCode, 0, r.console)
  t.ok(r.interrupts >= 129, `${r.interrupts} completions waited for`)
  t.equal(getEventListeners(stop.signal, 'abort').length, 0, 'no listener left on the signal')
  t.same(warnings.map((w) => w.name), [], 'no MaxListenersExceededWarning')
})

t.test('bad identities are refused with the reason', async (t) => {
  for (const [args, why] of [
    [['--name', 'Web_1'], /invalid VM name 'Web_1' \(1 to 64 of a-z, 0-9/],
    [['--initiator-name', 'host one'], /invalid iSCSI initiator name 'host one'/],
    [['--initiator-name', 'iqn.2026-11.local.tandem:' + 'x'.repeat(220)], /at most 223 bytes/],
  ] as const) {
    const r = tandem(['vm', 'run', '--guest', 'diskio', ...args])
    t.equal(r.status, 1, args.join(' '))
    t.match(r.stderr, why)
    t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
  }
})

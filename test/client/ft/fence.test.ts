import t, { type Test } from 'tap'
import { join } from 'node:path'
import { FENCE_TYPE, FenceError, preemptAndAbort, readReservation, register, registerAndReserve } from '../../../src/client/ft/fence.js'
import { IscsiInitiator } from '../../../src/client/transport/iscsi/index.js'
import { initiatorPath, logicalUnitPath, nexusName, vmInitiatorName, vmIsid, type ScsiPath } from '../../../src/client/vm/scsi-path.js'
import { createVmdk, openVmdk, type BlockDevice, type WriteOptions } from '../../../src/disk-formats/index.js'
import { Filter } from '../../../src/disk-formats/filters/index.js'
import { Datastore } from '../../../src/server/datastore/index.js'
import { IscsiServer, LOCKSPACE_IQN } from '../../../src/server/iscsi/index.js'
import { Metrics } from '../../../src/server/metrics.js'
import { LogicalUnit, SCSI } from '../../../src/server/scsi/index.js'
import { pino } from 'pino'
import { pattern, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

/**
 * The FT pair's storage fence (ft-architecture.md §1.3, §1.4 step 2): primary (ISID qualifier 1)
 * and backup (qualifier 2) of one VM IQN on one LU; the primary reserves WRITE EXCLUSIVE –
 * REGISTRANTS ONLY, the backup takes over by PREEMPT AND ABORT; the deposed primary's writes are
 * refused, its reads are not.
 */

const VM = vmInitiatorName('ft1')
const PRIMARY_KEY = 0x1001n
const BACKUP_KEY = 0x2002n

const write10 = (lba: number, blocks = 1) => {
  const cdb = Buffer.alloc(10)
  cdb[0] = SCSI.WRITE_10
  cdb.writeUInt32BE(lba, 2)
  cdb.writeUInt16BE(blocks, 7)
  return cdb
}
const read10 = (lba: number, blocks = 1) => {
  const cdb = Buffer.alloc(10)
  cdb[0] = SCSI.READ_10
  cdb.writeUInt32BE(lba, 2)
  cdb.writeUInt16BE(blocks, 7)
  return cdb
}
const write = (p: ScsiPath, lba: number, data: Buffer) => p.execute(write10(lba, data.length / 512), data, 0)
const read = async (p: ScsiPath, lba: number, blocks = 1) => {
  const r = await p.execute(read10(lba, blocks), null, blocks * 512)
  if (r.status !== SCSI.GOOD) throw new Error(`read status 0x${r.status.toString(16)}`)
  return r.dataIn!
}
const asc = (r: { sense?: Buffer }) => (r.sense ? [r.sense[2] & 0xf, r.sense[12], r.sense[13]] : null)

/** The same checks on any two paths of the VM (qualifiers 1 and 2) and a third, unregistered one. */
async function pairFence(t: Test, primary: ScsiPath, backup: ScsiPath, stranger: ScsiPath): Promise<void> {
  const data = pattern(512, 5)
  await registerAndReserve(primary, PRIMARY_KEY)
  await registerAndReserve(primary, PRIMARY_KEY) // again: it holds it already
  await register(backup, BACKUP_KEY)
  const before = await readReservation(backup)
  t.match(before, { keys: [PRIMARY_KEY, BACKUP_KEY], holder: { key: PRIMARY_KEY, type: FENCE_TYPE } }, 'both registered, the primary holds WERO')
  await t.rejects(registerAndReserve(backup, BACKUP_KEY), { name: 'StorageError', code: 'Busy', conflict: true, status: SCSI.RESERVATION_CONFLICT, message: /RESERVE\) under key 0x2002: RESERVATION CONFLICT/ }, 'the backup cannot reserve while the primary holds it')
  t.equal((await write(primary, 8, data)).status, SCSI.GOOD, 'the primary writes')
  t.equal((await write(stranger, 9, data)).status, SCSI.RESERVATION_CONFLICT, 'an unregistered nexus may not write under WERO')
  t.ok((await read(stranger, 8)).equals(data), 'but reads')
  t.ok((await read(stranger, 9)).equals(Buffer.alloc(512)), 'and its write left nothing')
  await t.rejects(preemptAndAbort(stranger, 0x3003n, PRIMARY_KEY), { code: 'Busy', message: /key 0x3003 is not registered/ }, 'an unregistered nexus cannot preempt')

  await preemptAndAbort(backup, BACKUP_KEY, PRIMARY_KEY)
  const after = await readReservation(backup)
  t.match(after, { keys: [BACKUP_KEY], holder: { key: BACKUP_KEY, type: FENCE_TYPE } }, 'the backup holds it; the primary\'s key is gone')
  t.ok(after.generation > before.generation, 'PRgeneration moved on')
  t.same(asc(await write(primary, 10, data)), [SCSI.UNIT_ATTENTION, 0x2a, 0x05], 'the deposed primary is told: REGISTRATIONS PREEMPTED')
  t.equal((await write(primary, 10, data)).status, SCSI.RESERVATION_CONFLICT, 'its writes are refused')
  t.ok((await read(primary, 8)).equals(data), 'its reads still work')
  t.ok((await read(backup, 10)).equals(Buffer.alloc(512)), 'nothing of its write landed')
  t.equal((await write(backup, 11, data)).status, SCSI.GOOD, 'the new primary writes')
  await preemptAndAbort(backup, BACKUP_KEY, PRIMARY_KEY) // sent again (a resent command after a lost connection)
  t.same((await readReservation(backup)).holder, { key: BACKUP_KEY, type: FENCE_TYPE }, 'a repeated preemption is success and changes nothing')
  await t.rejects(preemptAndAbort(primary, PRIMARY_KEY, BACKUP_KEY), { code: 'Busy', message: /key 0x1001 is not registered \(this I_T nexus was preempted itself\)/ }, 'the deposed primary cannot preempt back with its old key')
  t.equal((await write(primary, 12, data)).status, SCSI.RESERVATION_CONFLICT)
}

t.test('in process: the pair fence on a LogicalUnit', async (t) => {
  const f = join(tmp(t), 'lu.vmdk')
  await createVmdk(f, { size: 8 << 20 })
  const dev = await openVmdk(f)
  t.teardown(() => dev.close())
  const lu = new LogicalUnit(dev, { serial: 'tandem-test-ft-fence' })
  const nexus = [nexusName(VM, vmIsid(VM, 1)), nexusName(VM, vmIsid(VM, 2)), nexusName('iqn.2026-11.test:stranger', vmIsid('x'))]
  for (const n of nexus) lu.nexusJoined(n)
  const [primary, backup, stranger] = nexus.map((n) => logicalUnitPath(lu, n))
  await pairFence(t, primary, backup, stranger)
})

t.test('bad input and targets without persistent reservations give typed errors', async (t) => {
  const f = join(tmp(t), 'lu.vmdk')
  await createVmdk(f, { size: 1 << 20 })
  const dev = await openVmdk(f)
  t.teardown(() => dev.close())
  const lu = new LogicalUnit(dev, { serial: 'tandem-test-ft-fence-bad' })
  const p = logicalUnitPath(lu, nexusName(VM, vmIsid(VM, 1)))
  for (const key of [0n, -1n, 1n << 64n]) await t.rejects(register(p, key), { code: 'InvalidArgument', message: /not a reservation key/ })
  await t.rejects(preemptAndAbort(p, 5n, 5n), { code: 'InvalidArgument', message: /distinct keys/ })
  const q = logicalUnitPath(lu, nexusName(VM, vmIsid(VM, 3)))
  await registerAndReserve(q, 8n)
  await register(p, 7n)
  await t.rejects(preemptAndAbort(p, 7n, 9n), { code: 'Busy', conflict: true, message: /RESERVE\) under key 0x7 after preempting 0x9 \(key 0x8 holds it\): RESERVATION CONFLICT/ }, 'a victim key nobody has, while a third key holds the reservation: refused')
  await preemptAndAbort(p, 7n, 8n)
  t.match(await readReservation(q), { keys: [7n], holder: { key: 7n } })
  // a target that has no PERSISTENT RESERVE OUT (tgt without PR support, an old SAN)
  const none: ScsiPath = {
    blocks: 8,
    execute: async () => ({ status: SCSI.CHECK_CONDITION, sense: Buffer.from('700005000000000a00000000200000000000', 'hex') }),
  }
  const e = await register(none, 7n).catch((x: unknown) => x)
  t.ok(e instanceof FenceError, 'FenceError')
  t.match(e, { code: 'Unsupported', conflict: false, senseKey: SCSI.ILLEGAL_REQUEST, asc: 0x20, message: /REGISTER AND IGNORE EXISTING KEY\) of key 0x7: .*sense key 0x5, ASC\/ASCQ 0x20\/0x00/ })
  // a unit attention is an event, not a failure: consumed, and the command sent again
  let calls = 0
  const ua: ScsiPath = {
    blocks: 8,
    execute: async () => (++calls === 1 ? { status: SCSI.CHECK_CONDITION, sense: Buffer.from('700006000000000a000000002a0500000000', 'hex') } : { status: SCSI.GOOD }),
  }
  await register(ua, 7n)
  t.equal(calls, 2)
})

/** A disk on a real `tandem serve`, and sessions of the VM's two roles (ISID qualifiers 1, 2) plus a stranger. */
async function sessions(t: Test) {
  const s = await startServer(t)
  await s.ds.createDisk('ft1', 64 << 20)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:ft1/0`
  const connect = (initiatorName: string, isid: Buffer) => IscsiInitiator.connect(uri, { initiatorName, isid })
  const inis = [await connect(VM, vmIsid(VM, 1)), await connect(VM, vmIsid(VM, 2)), await connect('iqn.2026-11.test:stranger', vmIsid('iqn.2026-11.test:stranger'))]
  t.teardown(() => Promise.all(inis.map((i) => i.close())))
  return inis.map(initiatorPath)
}

t.test('over iSCSI: two sessions of one VM IQN, the pair fence', async (t) => {
  const [primary, backup, stranger] = await sessions(t)
  await pairFence(t, primary, backup, stranger)
})

t.test('over iSCSI: no write of the deposed primary lands after PREEMPT AND ABORT answers', async (t) => {
  const [primary, backup] = await sessions(t)
  await registerAndReserve(primary, PRIMARY_KEY)
  await register(backup, BACKUP_KEY)
  const WRITES = 24
  const BLOCKS = 2048 // 1 MiB each, at LBAs 2048·i: many still in flight when the preemption arrives
  const answered: (number | null)[] = new Array(WRITES).fill(null)
  let first = () => {}
  const firstAnswered = new Promise<void>((r) => (first = r))
  const writes = Array.from({ length: WRITES }, (_, i) =>
    write(primary, i * BLOCKS, pattern(BLOCKS * 512, 100 + i)).then((r) => {
      answered[i] = r.status
      first()
    }),
  )
  await firstAnswered // the writes are reaching the medium now
  const pendingAtPreempt = answered.filter((s) => s === null).length
  await preemptAndAbort(backup, BACKUP_KEY, PRIMARY_KEY)
  // the medium as it is when PREEMPT AND ABORT has answered…
  const snapshot: Buffer[] = []
  for (let i = 0; i < WRITES; i++) snapshot.push(await read(backup, i * BLOCKS, BLOCKS))
  await Promise.all(writes)
  // …is the medium after every one of the primary's writes has answered
  let landed = 0
  for (let i = 0; i < WRITES; i++) {
    const now = await read(backup, i * BLOCKS, BLOCKS)
    t.ok(now.equals(snapshot[i]), `write ${i}: nothing changed after the preemption answered`)
    const mine = pattern(BLOCKS * 512, 100 + i)
    if (answered[i] === SCSI.GOOD) {
      t.ok(now.equals(mine), `write ${i}: answered GOOD, so it is on the medium`)
      landed++
    } else {
      t.ok(now.equals(Buffer.alloc(BLOCKS * 512)), `write ${i}: answered 0x${answered[i]!.toString(16)}, and nothing of it is on the medium`)
    }
  }
  t.comment(`${WRITES} writes of 1 MiB: ${pendingAtPreempt} unanswered when PREEMPT AND ABORT was sent; ${landed} landed, ${WRITES - landed} refused or aborted (statuses ${JSON.stringify(answered)})`)
  t.ok(pendingAtPreempt > 0, 'the preemption raced writes in flight')
  t.ok(landed > 0, 'some of the primary\'s writes had landed')
  let later = await write(primary, 0, pattern(512, 9))
  if (later.status === SCSI.CHECK_CONDITION) later = await write(primary, 0, pattern(512, 9)) // the unit attention, unless a late write took it
  t.equal(later.status, SCSI.RESERVATION_CONFLICT, 'a later write of the primary: RESERVATION CONFLICT')
  t.ok((await read(primary, 0)).equals((await read(backup, 0))), 'the primary still reads')
})

/** A device whose writes wait, once `hold()` is called, until `release()`; `events` logs each landing. */
class HeldWrites extends Filter {
  readonly events: string[] = []
  private holding = false
  private waiting: (() => void)[] = []
  private arrived = () => {}
  constructor(next: BlockDevice) {
    super(next)
  }
  override async write(o: number, d: Buffer, opts?: WriteOptions): Promise<void> {
    if (this.holding) {
      await new Promise<void>((r) => {
        this.waiting.push(r)
        this.arrived()
      })
    }
    await super.write(o, d, opts)
    this.events.push(`landed at LBA ${o / 512}`)
  }
  /** holds the writes that come next; resolves when the first of them reaches the device */
  hold(): Promise<void> {
    this.holding = true
    return new Promise<void>((r) => (this.arrived = r))
  }
  release(): void {
    this.holding = false
    for (const r of this.waiting.splice(0)) r()
  }
}

t.test('over iSCSI: PREEMPT AND ABORT answers only once the deposed primary\'s write in the device has landed', async (t) => {
  // an iSCSI target in this process whose LUN (the lockspace target, any device) holds writes on demand
  const dir = tmp(t)
  const f = join(dir, 'held.vmdk')
  await createVmdk(f, { size: 8 << 20 })
  const held = new HeldWrites(await openVmdk(f))
  const ds = await Datastore.open(join(dir, 'ds'))
  const target = new IscsiServer(ds, pino({ level: 'silent' }), new Metrics(), {}, held)
  const port = await target.listen(0, '127.0.0.1')
  t.teardown(async () => {
    await target.close(Promise.resolve())
    await ds.close()
    await held.close()
  })
  const uri = `iscsi://127.0.0.1:${port}/${LOCKSPACE_IQN}/0`
  const inis = [await IscsiInitiator.connect(uri, { initiatorName: VM, isid: vmIsid(VM, 1) }), await IscsiInitiator.connect(uri, { initiatorName: VM, isid: vmIsid(VM, 2) })]
  t.teardown(() => Promise.all(inis.map((i) => i.close())))
  const [primary, backup] = inis.map(initiatorPath)
  await registerAndReserve(primary, PRIMARY_KEY)
  await register(backup, BACKUP_KEY)
  const data = pattern(512, 7)
  const reached = held.hold()
  const inFlight = write(primary, 16, data).then((r) => (held.events.push('primary write answered'), r))
  await reached
  const fenced = preemptAndAbort(backup, BACKUP_KEY, PRIMARY_KEY).then(() => held.events.push('PREEMPT AND ABORT answered'))
  await new Promise((r) => setTimeout(r, 200)) // time for a preemption that did not wait to answer
  t.same(held.events, [], 'PREEMPT AND ABORT has not answered while the primary\'s write is in the device')
  held.release()
  const [w] = await Promise.all([inFlight, fenced])
  t.equal(w.status, SCSI.GOOD, 'the write on the medium completed')
  t.equal(held.events[0], 'landed at LBA 16')
  t.ok(held.events.indexOf('PREEMPT AND ABORT answered') > 0, `and landed before the preemption answered (${held.events.join(', ')})`)
  t.ok((await read(backup, 16)).equals(data))
  let later = await write(primary, 17, data)
  if (later.status === SCSI.CHECK_CONDITION) later = await write(primary, 17, data)
  t.equal(later.status, SCSI.RESERVATION_CONFLICT, 'the primary\'s next write: RESERVATION CONFLICT')
  t.ok((await read(backup, 17)).equals(Buffer.alloc(512)), 'nothing of it landed')
})

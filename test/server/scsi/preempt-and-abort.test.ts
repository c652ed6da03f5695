import t from 'tap'
import { join } from 'node:path'
import { tmp, pattern } from '../../helpers/peers.js'
import { createVmdk, openVmdk, type BlockDevice, type WriteOptions } from '../../../src/disk-formats/index.js'
import { Filter, delay } from '../../../src/disk-formats/filters/index.js'
import { LogicalUnit, SCSI } from '../../../src/server/scsi/index.js'

/**
 * PREEMPT AND ABORT fences the preempted I_T nexus: when it answers GOOD, none of that nexus's
 * commands is still to land. Writes are held on demand by the `delay` filter on a clock that
 * stands still while held (a write in flight, no real time), so each interleaving is forced, not raced.
 */

const A = 'iqn.2026-11.test:a,i,0x000000000001'
const B = 'iqn.2026-11.test:b,i,0x000000000002'
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex')
const sk = (r: { sense?: Buffer }) => (r.sense ? [r.sense[2] & 0xf, r.sense[12], r.sense[13]] : null)
/** every callback and microtask queued so far has run */
const settle = async () => {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r))
}

/** An LU whose device holds writes between `hold()` and `release()`; `events` logs each landing. */
async function heldLu(t: { teardown(fn: () => unknown): void }) {
  const f = join(tmp(t), 'lu.vmdk')
  await createVmdk(f, { size: 8 << 20 })
  const dev: BlockDevice = await openVmdk(f)
  t.teardown(() => dev.close())
  const events: string[] = []
  // the delay filter's clock: time stands still while held, so a held write waits for release()
  let holding = false
  const waiting: (() => void)[] = []
  let arrived = () => {}
  const timers = {
    setTimeout: (fn: () => void) => {
      if (!holding) return queueMicrotask(fn)
      waiting.push(fn)
      arrived()
    },
  }
  const landings = new (class extends Filter {
    override async write(o: number, d: Buffer, opts?: WriteOptions): Promise<void> {
      await super.write(o, d, opts)
      events.push(`landed at LBA ${o / 512}`)
    }
  })(dev)
  const slow = delay(landings, { ops: ['write'], ms: 0, timers })
  const u = new LogicalUnit(slow, { serial: 'tandem-test-fence' })
  u.nexusJoined(A)
  u.nexusJoined(B)
  const prout = (sa: number, type: number, key: bigint, saKey: bigint, nexus: string) => {
    const p = Buffer.alloc(24)
    p.writeBigUInt64BE(key, 0)
    p.writeBigUInt64BE(saKey, 8)
    return u.execute(hex(`5f ${sa.toString(16).padStart(2, '0')} ${type.toString(16).padStart(2, '0')} 00 00 00000018 00`), p, nexus)
  }
  // A registers 0xaa and holds WRITE EXCLUSIVE; B registers 0xbb.
  for (const [sa, type, key, saKey, n] of [[0, 0, 0n, 0xaan, A], [0, 0, 0n, 0xbbn, B], [1, 1, 0xaan, 0n, A]] as const) {
    if ((await prout(sa, type, key, saKey, n)).status !== SCSI.GOOD) throw new Error('reservation setup failed')
  }
  return {
    u,
    events,
    /** holds the writes that come next; resolves when the first of them reaches the device */
    hold: () => {
      holding = true
      return new Promise<void>((r) => (arrived = r))
    },
    release: () => {
      holding = false
      for (const fn of waiting.splice(0)) fn()
    },
    /** PREEMPT AND ABORT of A's key by B, taking WRITE EXCLUSIVE; logged when it answers */
    preemptAndAbort: () =>
      prout(5, 1, 0xbbn, 0xaan, B).then((r) => {
        events.push('PREEMPT AND ABORT answered')
        return r
      }),
    read: async (lba: number) => (await u.execute(hex(`28 00 ${lba.toString(16).padStart(8, '0')} 00 0001 00`), null, B)).dataIn!,
    write: (lba: number, data: Buffer, n: string) => u.execute(hex(`2a 00 ${lba.toString(16).padStart(8, '0')} 00 0001 00`), data, n),
  }
}

t.test('PREEMPT AND ABORT answers only after the preempted nexus\'s write in flight has landed', async (t) => {
  const l = await heldLu(t)
  const data = pattern(512, 1)
  const reached = l.hold()
  const aWrite = l.write(16, data, A).then((r) => {
    l.events.push('A write answered')
    return r
  })
  await reached
  const pa = l.preemptAndAbort()
  await settle()
  t.same(l.events, [], 'PREEMPT AND ABORT has not answered while A\'s write is in the device')
  l.release()
  const [aw, p] = await Promise.all([aWrite, pa])
  t.equal(p.status, SCSI.GOOD)
  t.equal(aw.status, SCSI.GOOD, 'A\'s write was on the medium already: it completes')
  t.same(l.events, ['landed at LBA 16', 'A write answered', 'PREEMPT AND ABORT answered'], 'and before the preemption answers')
  t.ok((await l.read(16)).equals(data), 'its data is there')
  t.same(sk(await l.write(17, data, A)), [6, 0x2a, 0x05], 'A is told: REGISTRATIONS PREEMPTED')
  t.equal((await l.write(17, data, A)).status, SCSI.RESERVATION_CONFLICT, 'A\'s next write is fenced off')
  t.ok((await l.read(17)).equals(Buffer.alloc(512)), 'and nothing of it lands')
  t.equal((await l.write(18, data, B)).status, SCSI.GOOD, 'B, the new holder, writes')
})

t.test('PREEMPT AND ABORT aborts the preempted nexus\'s commands not yet on the medium: TASK ABORTED, no effect', async (t) => {
  const l = await heldLu(t)
  const cawData = Buffer.concat([Buffer.alloc(512), pattern(512, 2)])
  const reached = l.hold()
  // COMPARE AND WRITE holds the LU exclusively while its write is held: what comes next queues
  const caw = l.u.execute(hex('89 00 0000000000000000 000000 01 00 00'), cawData, A)
  await reached
  const pa = l.preemptAndAbort()
  const late = l.write(32, pattern(512, 3), A) // passed its reservation check: A still holds
  await settle()
  t.same(l.events, [], 'nothing has answered yet')
  l.release()
  const [c, p, w] = await Promise.all([caw, pa, late])
  t.equal(c.status, SCSI.GOOD, 'the COMPARE AND WRITE on the medium completed')
  t.ok((await l.read(0)).equals(cawData.subarray(512)), 'with its effect')
  t.equal(p.status, SCSI.GOOD)
  t.equal(w.status, 0x40, 'A\'s queued write: TASK ABORTED')
  t.ok((await l.read(32)).equals(Buffer.alloc(512)), 'and it wrote nothing')
  t.same(l.events, ['landed at LBA 0', 'PREEMPT AND ABORT answered'])
})

t.test('the Control mode page sets TAS: commands aborted by another nexus answer TASK ABORTED', async (t) => {
  const l = await heldLu(t)
  const ms = (await l.u.execute(hex('1a 08 0a 00 ff 00'), null, B)).dataIn!
  t.equal(ms[4], 0x0a, 'the Control page')
  t.equal(ms[4 + 5] & 0x40, 0x40, 'TAS')
})

import t from 'tap'
import { WriteAfterReadGuard } from '../../../src/client/ft/write-after-read.js'

/** whether `p` has settled after the pending callbacks ran */
async function settled(p: Promise<void>): Promise<boolean> {
  let done = false
  void p.then(() => (done = true))
  await new Promise((r) => setImmediate(r))
  return done
}

t.test('a write that overlaps no read the backup still has to do goes at once', async (t) => {
  const g = new WriteAfterReadGuard()
  t.ok(await settled(g.beforeWrite(0, 8)), 'no reads at all')
  g.read(0, 100, 8) // blocks 100..107
  t.ok(await settled(g.beforeWrite(92, 8)), 'just below (92..99)')
  t.ok(await settled(g.beforeWrite(108, 4)), 'just above (108..111)')
  t.equal(g.stalls, 0)
})

t.test('a write over a read the backup has not done waits for the ack that covers it', async (t) => {
  const g = new WriteAfterReadGuard()
  g.read(0, 100, 8)
  g.read(1, 200, 8)
  g.read(2, 104, 1)
  const w = g.beforeWrite(107, 2) // overlaps read 0 (100..107) only
  t.notOk(await settled(w), 'waits')
  t.equal(g.stalls, 1)
  g.backupDone(0)
  t.notOk(await settled(w), 'readsDone 0: no read done yet')
  g.backupDone(1)
  t.ok(await settled(w), 'read 0 done: the write goes')
  const last = g.beforeWrite(100, 8) // overlaps read 2 (104) — read 0 is done
  g.backupDone(2)
  t.notOk(await settled(last), 'read 2 not done yet')
  g.backupDone(3)
  t.ok(await settled(last))
  t.equal(g.pending, 0)
})

t.test('a write waits for every overlapping read, the last one included', async (t) => {
  const g = new WriteAfterReadGuard()
  g.read(5, 0, 4)
  g.read(6, 2, 4)
  g.read(9, 3, 1)
  const w = g.beforeWrite(0, 10)
  g.backupDone(7)
  t.notOk(await settled(w), 'reads 5 and 6 done, read 9 not')
  g.backupDone(10)
  t.ok(await settled(w))
})

t.test('several writers wake as their reads are done, each on its own ack', async (t) => {
  const g = new WriteAfterReadGuard()
  g.read(0, 0, 1)
  g.read(1, 1, 1)
  g.read(2, 2, 1)
  const w0 = g.beforeWrite(0, 1)
  const w2 = g.beforeWrite(2, 1)
  const w0b = g.beforeWrite(0, 1)
  t.equal(g.waiting, 3)
  g.backupDone(1)
  t.same([await settled(w0), await settled(w0b), await settled(w2)], [true, true, false])
  g.backupDone(3)
  t.ok(await settled(w2))
  t.equal(g.waiting, 0)
})

t.test('reads recorded after a write do not hold it', async (t) => {
  const g = new WriteAfterReadGuard()
  g.read(0, 10, 1)
  const w = g.beforeWrite(50, 1)
  g.read(1, 50, 1)
  t.ok(await settled(w), 'issued before the read')
  t.notOk(await settled(g.beforeWrite(50, 1)), 'a later write waits for it')
})

t.test('losing the peer lets every waiting write go, and later ones do not wait', async (t) => {
  const g = new WriteAfterReadGuard()
  g.read(0, 0, 8)
  const a = g.beforeWrite(0, 1)
  const b = g.beforeWrite(4, 4)
  g.lost()
  t.same([await settled(a), await settled(b)], [true, true])
  g.read(1, 0, 8)
  t.ok(await settled(g.beforeWrite(0, 8)), 'no backup: nothing to wait for')
})

t.test('bad requests are typed errors; a stale ack is ignored', async (t) => {
  const g = new WriteAfterReadGuard()
  g.read(3, 0, 1)
  t.throws(() => g.read(3, 0, 1), { code: 'InvalidArgument' }, 'seq must increase')
  t.throws(() => g.read(4, -1, 1), { code: 'InvalidArgument' })
  t.throws(() => g.read(4, 0, 1.5), { code: 'InvalidArgument' })
  t.throws(() => g.beforeWrite(0, -1), { code: 'InvalidArgument' })
  g.backupDone(4)
  g.backupDone(2)
  t.equal(g.readsDone, 4)
  g.read(4, 0, 0)
  t.equal(g.pending, 0, 'an empty read has nothing to protect')
})

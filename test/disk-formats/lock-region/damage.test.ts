import t from 'tap'
import { openSync, closeSync, ftruncateSync, writeSync } from 'node:fs'
import { join } from 'node:path'
import { FakeClock, memorySpace, type MemoryLockStorage, twoHosts } from '../../helpers/locks.js'
import { tmp } from '../../helpers/peers.js'
import { FileLockStorage, LockManager, initLockspace, countingStorage, recordOffset, regionSize, SECTOR, slotOffset } from '../../../src/disk-formats/lock-region/index.js'

const HOSTS = 8
const LOCKS = 16

const space = () => memorySpace(HOSTS, LOCKS)

/** The index of the record bearing `name` (names sit at byte 32 of their record). */
function recordIndexOf(st: MemoryLockStorage, name: string): number {
  for (let i = 0; i < LOCKS; i++) {
    const off = recordOffset({ maxHosts: HOSTS }, i)
    if (st.buf.toString('utf8', off + 32, off + 32 + name.length) === name && st.buf[off + 32 + name.length] === 0) return i
  }
  return -1
}

const scribble = (st: MemoryLockStorage, off: number) => st.buf.fill(0xa5, off + 8, off + 40)

t.test('one corrupt unused record: views list it, other locks work, a holder stays visible', async (t) => {
  const { st, clock, a, b } = await twoHosts(await space())
  const held = await a.acquire('vm1')
  // damage a record nobody uses: the first blank one
  let victim = -1
  for (let i = 0; i < LOCKS && victim < 0; i++) if (st.buf.subarray(recordOffset({ maxHosts: HOSTS }, i), recordOffset({ maxHosts: HOSTS }, i) + SECTOR).every((x) => x === 0)) victim = i
  scribble(st, recordOffset({ maxHosts: HOSTS }, victim))
  const v = await b.view()
  t.match(v.locks.find((l) => l.name === 'vm1'), { state: 'exclusive', owner: 'a', generation: held.generation }, 'the holder is still seen')
  t.match(v.locks.find((l) => l.state === 'damaged'), { record: victim, error: /bad magic|checksum/ }, 'the damaged record is reported')
  await t.rejects(b.acquire('vm1'), { code: 'Busy' }, 'and its lock still refused to others')
  // every other lock name works, except one whose record could be the damaged one
  let worked = 0
  let refused = 0
  for (let i = 0; i < 10; i++) {
    try {
      await b.acquire(`other-${i}`)
      await b.release(`other-${i}`)
      worked++
    } catch (e) {
      t.match(e, { code: 'Corrupt', message: new RegExp(`may be the damaged record ${victim}`) })
      refused++
    }
  }
  t.ok(worked >= 7, `other locks work (${worked} of 10; ${refused} refused: their record may be the damaged one)`)
  await a.release('vm1')
  for (const m of [a, b]) await m.leave()
})

t.test('a damaged record held by a host: its release fails and leave says so', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const a = new LockManager(st, 'a', clock)
  await a.join()
  await a.acquire('res')
  scribble(st, recordOffset({ maxHosts: HOSTS }, recordIndexOf(st, 'res')))
  await t.rejects(a.leave(), { code: 'IoError', message: /could not release: lock 'res'/ })
})

t.test('liveness: a host never seen advancing is unknown, then dead after a lease; a beating one alive', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const dead = new LockManager(st, 'dead', clock)
  const live = new LockManager(st, 'live', clock)
  await dead.join()
  await live.join()
  dead.halt() // silent from now on, its slot still says live
  await clock.advance(5000) // long dead before anyone looks
  const observer = new LockManager(st, 'observer', clock)
  const first = await observer.view()
  t.same(first.hosts.map((h) => [h.name, h.alive]), [['dead', null], ['live', null]], 'first look: unknown, not alive')
  await clock.advance(400)
  const second = await observer.view()
  t.same(second.hosts.map((h) => [h.name, h.alive]), [['dead', null], ['live', true]], 'seen advancing: alive; still silent: unknown')
  await clock.advance(2000)
  const third = await observer.view()
  t.same(third.hosts.map((h) => [h.name, h.alive]), [['dead', false], ['live', true]], 'silent for a lease: dead')
  await live.leave()
})

t.test('join: a live process under the same name is reported after waitMs; a crashed one is taken over, with its locks', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const first = new LockManager(st, 'esx', clock)
  await first.join()
  await first.acquire('vm1')
  const dup = new LockManager(st, 'esx', clock)
  const outcome = dup.join({ waitMs: 0 }).then(() => 'joined', (e) => e)
  await clock.advance(1000)
  t.match(await outcome, { code: 'Busy', message: /host name 'esx' is in use by a live process/ })
  first.halt() // crashes
  const again = new LockManager(st, 'esx', clock)
  const t0 = clock.now()
  const joined = again.join({ waitMs: 0 }).then(() => clock.now())
  await clock.advance(3000)
  const at = await joined
  t.ok(at - t0 >= 2000, `a silent predecessor is watched for a whole lease first (${at - t0} ms)`)
  t.equal((await again.acquire('vm1')).generation, 2, 'the crashed incarnation\'s lock is taken over at once: same slot, older generation')
  await again.leave()
})

t.test('halt() while join waits out a live-looking predecessor: join gives up, claims nothing; its waits are not background timers', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const first = new LockManager(st, 'esx', clock)
  await first.join()
  t.ok(clock.pending().length >= 2 && clock.pending().every((p) => p.background), 'a joined host\'s heartbeat and fence timers are background work')
  first.halt() // crashes: its slot looks live for a lease
  const before = (await new LockManager(st, 'obs', clock).view()).hosts.find((h) => h.name === 'esx')
  const again = new LockManager(st, 'esx', clock)
  const outcome = again.join({ waitMs: 10_000 }).then(() => 'joined', (e) => e)
  await clock.advance(300)
  t.ok(clock.pending().some((p) => !p.background), 'the join\'s wait is a timer its caller awaits (not background: it keeps a process alive)')
  again.halt()
  await clock.advance(1000)
  t.match(await outcome, { code: 'Busy', message: /joining lockspace .* was stopped/ })
  const after = (await new LockManager(st, 'obs', clock).view()).hosts.find((h) => h.name === 'esx')
  t.same(after, before, 'the slot was not claimed')
})

t.test('waiters of any mode appear in `waiting`', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const [a, b, c] = ['a', 'b', 'c'].map((n) => new LockManager(st, n, clock))
  for (const m of [a, b, c]) await m.join()
  await a.acquire('plain')
  const bw = b.acquire('plain', { waitMs: 1000 }).catch((e) => e)
  const cw = c.acquire('plain', { shared: true, waitMs: 1000 }).catch((e) => e)
  await clock.advance(300)
  t.same((await a.view()).locks.find((l) => l.name === 'plain')?.waiting, ['b', 'c'])
  await clock.advance(1000)
  t.match(await bw, { code: 'Busy', timedOut: true, message: /timed out after 1 s/ })
  await cw
  t.same((await a.view()).locks.find((l) => l.name === 'plain')?.waiting, [], 'gone once they stop waiting')
  for (const m of [a, b, c]) await m.leave()
})

t.test('managed: when the owner releases, the oldest requester gets it by the owner\'s rewrite', async (t) => {
  const mem = await space()
  const clock = new FakeClock()
  const sa = countingStorage(mem)
  const a = new LockManager(sa, 'a', clock)
  const late = new LockManager(mem, 'late', clock) // lower slot, asks later
  const early = new LockManager(mem, 'early', clock)
  await a.join()
  await late.join()
  await early.join()
  const h = await a.acquire('vmdk', { managed: true })
  const requested: string[] = []
  a.onRequested = (lock, by) => requested.push(`${lock}:${by}`)
  const e = early.acquire('vmdk', { waitMs: 10_000 }).then((x) => ({ who: 'early', x, at: clock.now() }))
  await clock.advance(600)
  const l = late.acquire('vmdk', { waitMs: 10_000 }).then((x) => ({ who: 'late', x, at: clock.now() }))
  await clock.advance(600)
  t.same((await a.view()).locks[0].waiting, ['early', 'late'], 'waiting, oldest first')
  t.ok(requested.includes('vmdk:early'), 'the owner is told its lock in use is asked for (lock run --yield)')
  const cas = sa.counts.cas
  const releasedAt = clock.now()
  await a.release('vmdk')
  t.equal(sa.counts.cas, cas, 'the handover is a plain rewrite by the owner')
  await clock.advance(200)
  const first = await Promise.race([e, l])
  t.equal(first.who, 'early', 'the oldest requester gets it')
  t.equal(first.x.generation, h.generation + 1)
  t.ok(first.at - releasedAt <= 250, `at once (${first.at - releasedAt} ms), not after a lease`)
  await early.release('vmdk')
  await clock.advance(200)
  const second = await l
  t.equal(second.x.generation, h.generation + 2, 'then the next requester')
  for (const m of [a, late, early]) await m.leave()
})

t.test('a truncated lockspace file is reported, never read as free records', async (t) => {
  const dir = tmp(t)
  const path = join(dir, 'ls')
  const fd = openSync(path, 'w')
  ftruncateSync(fd, regionSize({ maxHosts: HOSTS, maxLocks: LOCKS }))
  closeSync(fd)
  const st = await FileLockStorage.open(path)
  t.teardown(() => st.close())
  await initLockspace(st, { maxHosts: HOSTS, maxLocks: LOCKS })
  const a = new LockManager(st, 'a')
  await a.join()
  await a.acquire('held')
  const fd2 = openSync(path, 'r+')
  ftruncateSync(fd2, slotOffset(HOSTS) + SECTOR) // the header, the slots and one record survive
  closeSync(fd2)
  const observer = new LockManager(st, 'observer')
  await t.rejects(observer.view(), { code: 'Corrupt', message: /truncated/ })
  a.halt()
  // and a never-written sector is still a free one: a short write is no reason to refuse
  const fd3 = openSync(path, 'r+')
  writeSync(fd3, Buffer.alloc(1), 0, 1, regionSize({ maxHosts: HOSTS, maxLocks: LOCKS }) - 1)
  closeSync(fd3)
  t.ok(Array.isArray((await observer.view()).locks), 'restored to its size, it reads again')
})

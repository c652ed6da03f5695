import t from 'tap'
import { FakeClock, MemoryLockStorage, memorySpace, settle, twoHosts } from '../../helpers/locks.js'
import { LockManager, initLockspace, countingStorage, regionSize } from '../../../src/disk-formats/lock-region/index.js'
import { setWallOffset } from '../../../src/client/host/wall-clock.js'

const space = memorySpace

t.test('join by name claims slots automatically; rejoin keeps the slot with a new generation', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const a = new LockManager(st, 'alpha', clock)
  const b = new LockManager(st, 'beta', clock)
  t.same(await a.join(), { slot: 0, generation: 1 })
  t.same(await b.join(), { slot: 1, generation: 1 })
  await a.leave()
  const a2 = new LockManager(st, 'alpha', clock)
  t.same(await a2.join(), { slot: 0, generation: 2 }, 'same name, same slot, next generation')
  for (const m of [a2, b]) await m.leave()
})

t.test('exclusive: one holder; generation bumps on every change of owner', async (t) => {
  const { st, clock, a, b } = await twoHosts()
  const h1 = await a.acquire('vm1')
  t.equal(h1.generation, 1)
  await t.rejects(b.acquire('vm1'), { code: 'Busy', message: /held by host 'a' \(generation 1\)/ })
  await a.release('vm1')
  const h2 = await b.acquire('vm1')
  t.equal(h2.generation, 2)
  await t.rejects(a.acquire('vm1'), { code: 'Busy' })
  await b.release('vm1')
  t.equal((await a.acquire('vm1')).generation, 3)
  await a.leave()
  await b.leave()
})

t.test('a live holder is never broken; a silent one is broken after the lease, and fenced before', async (t) => {
  const { st, clock, a, b } = await twoHosts()
  let fencedAt = -1
  a.onFence = () => (fencedAt = clock.now())
  await a.acquire('vm1')
  // a keeps renewing: b may try for 10 s and never get it
  const tryFor = b.acquire('vm1', { waitMs: 10_000 })
  const outcome = tryFor.then(() => 'acquired', () => 'refused')
  await clock.advance(10_500)
  t.equal(await outcome, 'refused', 'a live holder keeps its lock')
  t.equal(fencedAt, -1)
  // a hangs: no more heartbeats
  a.halt()
  const haltedAt = clock.now()
  const takeover = b.acquire('vm1', { waitMs: 10_000 }).then((h) => ({ h, at: clock.now() }))
  // a's own fence timer still runs in this test (halt stops it), so check the deadline arithmetic instead
  await clock.advance(4000)
  const { h, at } = await takeover
  t.equal(h.generation, 2, 'broken by compare-and-write, generation bumped')
  t.ok(at - haltedAt >= 2000, `not before the lease (${at - haltedAt} ms)`)
  t.ok(at - haltedAt <= 2000 + 250 + 250, `within lease + heartbeat + poll (${at - haltedAt} ms)`)
  t.ok(a.fenceDeadline < at - 500 + 1, 'the holder\'s fence deadline came at least the margin before the takeover')
  await b.leave()
})

t.test('a wall-clock jump (an hour back, a day on) neither breaks a live holder nor delays the takeover of a silent one: leases are on the monotonic clock', async (t) => {
  const { clock, a, b } = await twoHosts()
  t.teardown(() => setWallOffset(0))
  await a.acquire('vm1')
  let lost = ''
  a.onLost = (name) => (lost = name)
  const tryFor = b.acquire('vm1', { waitMs: 6000 }).then(() => 'acquired', () => 'refused')
  for (const jump of [-3_600_000, 86_400_000, 0, -86_400_000]) {
    setWallOffset(jump)
    await clock.advance(1500)
  }
  t.equal(await tryFor, 'refused', 'the holder kept its lock through every jump')
  t.equal(lost, '', 'and never saw it as lost')
  t.ok(a.valid() && a.holds('vm1'))
  a.halt()
  const haltedAt = clock.now()
  setWallOffset(3_600_000)
  const takeover = b.acquire('vm1', { waitMs: 10_000 }).then((h) => ({ h, at: clock.now() }))
  await clock.advance(4000)
  const { h, at } = await takeover
  t.equal(h.generation, 2)
  t.ok(at - haltedAt >= 2000 && at - haltedAt <= 2500, `taken after the lease as measured on the monotonic clock (${at - haltedAt} ms)`)
  await b.leave()
})

t.test('a holder whose storage stalls fences itself before its lease can be broken', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  let stall = false
  const slow = {
    ...st,
    size: st.size,
    name: 'slow',
    read: (o: number, l: number) => (stall ? new Promise<Buffer>(() => {}) : st.read(o, l)),
    write: (o: number, d: Buffer) => (stall ? new Promise<void>(() => {}) : st.write(o, d)),
    compareAndWrite: (o: number, e: Buffer, d: Buffer) => st.compareAndWrite(o, e, d),
    close: async () => {},
  }
  const a = new LockManager(slow, 'a', clock)
  const b = new LockManager(st, 'b', clock)
  await a.join()
  await b.join()
  let fencedAt = -1
  a.onFence = () => (fencedAt = clock.now())
  await a.acquire('vm1')
  await clock.advance(1000)
  stall = true
  const stalledAt = clock.now()
  const takeover = b.acquire('vm1', { waitMs: 10_000 }).then(() => clock.now())
  await clock.advance(5000)
  const at = await takeover
  t.ok(fencedAt > 0, 'the holder fenced itself')
  t.ok(fencedAt <= at - 500, `fenced at ${fencedAt - stalledAt} ms, taken at ${at - stalledAt} ms: at least the 500 ms margin apart`)
  t.notOk(a.valid(), 'and no longer claims a valid lease')
  await b.leave()
})

t.test('shared mode: many readers, no writer while a live reader holds it', async (t) => {
  const st = await space()
  const clock = new FakeClock()
  const [a, b, c] = ['a', 'b', 'c'].map((n) => new LockManager(st, n, clock))
  for (const m of [a, b, c]) await m.join()
  await a.acquire('ds', { shared: true })
  await b.acquire('ds', { shared: true })
  await t.rejects(c.acquire('ds'), { code: 'Busy' }, 'exclusive refused while shared holders live')
  await a.release('ds')
  await t.rejects(c.acquire('ds'), { code: 'Busy' })
  await b.release('ds')
  t.ok((await c.acquire('ds')).generation > 0)
  await t.rejects(a.acquire('ds', { shared: true }), { code: 'Busy' }, 'shared refused while an exclusive holder lives')
  for (const m of [a, b, c]) await m.leave()
})

t.test('managed: ownership passes from A to B by A\'s rewrite alone, no compare-and-write', async (t) => {
  const mem = await space()
  const clock = new FakeClock()
  const sa = countingStorage(mem)
  const sb = countingStorage(mem)
  const a = new LockManager(sa, 'a', clock)
  const b = new LockManager(sb, 'b', clock)
  await a.join()
  await b.join()
  const h = await a.acquire('vmdk-lock', { managed: true })
  await a.release('vmdk-lock') // owned but idle: A keeps it until someone asks
  const before = { a: sa.counts.cas, b: sb.counts.cas }
  const t0 = clock.now()
  const got = b.acquire('vmdk-lock', { waitMs: 5000 }).then((x) => ({ x, at: clock.now() }))
  await clock.advance(1000)
  const { x, at } = await got
  t.equal(x.generation, h.generation + 1, 'the token moves on')
  t.equal(sa.counts.cas - before.a, 0, 'A issued no compare-and-write')
  t.equal(sb.counts.cas - before.b, 0, 'B issued no compare-and-write')
  t.ok(at - t0 <= 250 + 125, `handover in ${at - t0} ms (≤ one heartbeat + one poll)`)
  t.comment(`managed handover on the fake clock: ${at - t0} ms`)
  const view = await a.view()
  t.equal(view.locks[0].owner, 'b')
  await t.rejects(a.acquire('vmdk-lock'), { code: 'Busy' }, 'B uses it now; A must ask')
  await a.leave()
  await b.leave()
  await settle()
})

t.test('a lockspace of the wrong size or foreign content is refused', async (t) => {
  const st = new MemoryLockStorage(4096)
  const m = new LockManager(st, 'a')
  await t.rejects(m.join(), { code: 'BadMagic', message: /not a Tandem lockspace/ })
  await t.rejects(initLockspace(st, { maxHosts: 8, maxLocks: 16 }), { code: 'InvalidArgument', message: /needs exactly/ })
  const foreign = new MemoryLockStorage(regionSize({ maxHosts: 8, maxLocks: 16 }))
  foreign.buf.write('some other data')
  await t.rejects(initLockspace(foreign, { maxHosts: 8, maxLocks: 16 }), { code: 'Exists', message: /not empty/ })
})

t.test('acquire and release read a window of the probe sequence, not the region (64 hosts, 256 locks)', async (t) => {
  const st = await memorySpace(64, 256)
  let bytesRead = 0
  const counted = Object.assign(Object.create(st) as MemoryLockStorage, {
    read: (o: number, l: number) => ((bytesRead += l), st.read(o, l)),
  })
  const clock = new FakeClock()
  const a = new LockManager(counted, 'a', clock)
  await a.join()
  bytesRead = 0
  await a.acquire('vm1')
  t.ok(bytesRead <= 2 * 8 * 512, `the first acquire (claiming a record for the name) read ${bytesRead} bytes (the region is ${regionSize({ maxHosts: 64, maxLocks: 256 })})`)
  await a.release('vm1')
  bytesRead = 0
  await a.acquire('vm1')
  t.ok(bytesRead <= 8 * 512, `acquire read ${bytesRead} bytes`)
  bytesRead = 0
  await a.release('vm1')
  t.ok(bytesRead <= 8 * 512, `release read ${bytesRead} bytes`)
  await a.leave()
})

t.test('every record of a small lockspace is found along its probe sequence, across windows and the wrap', async (t) => {
  const { a, b } = await twoHosts(await memorySpace(8, 16))
  const names = Array.from({ length: 16 }, (_, i) => `lock-${i}`)
  for (const n of names) await a.acquire(n)
  await t.rejects(a.acquire('one-too-many'), { code: 'NoSpace' })
  for (const n of names) await t.rejects(b.acquire(n), { code: 'Busy' }, `${n} is found held`)
  for (const n of names) await a.release(n)
  for (const n of names) t.equal((await b.acquire(n)).generation, 2, `${n}: the same record again`)
  await a.leave()
  await b.leave()
})

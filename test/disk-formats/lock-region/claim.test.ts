import t from 'tap'
import { FakeClock, memorySpace, settle, twoHosts } from '../../helpers/locks.js'
import { LockManager, type LockStorage } from '../../../src/disk-formats/lock-region/index.js'

/** claim(name, g): one compare-and-write from generation g, whatever the owner's liveness (SPEC "Claim"). */

const lockOf = async (m: LockManager, name: string) => (await m.view()).locks.find((l) => l.name === name)

t.test('claim takes a lock from a live holder at once; the holder learns it at its next heartbeat', async (t) => {
  const { clock, a, b } = await twoHosts()
  const lost: string[] = []
  a.onLost = (lock, reason) => lost.push(`${lock}: ${reason}`)
  const h = await a.acquire('vm/x')
  t.equal(h.generation, 1)
  await clock.advance(1000) // a is seen alive by b
  await t.rejects(b.acquire('vm/x'), { code: 'Busy' }, 'acquire refuses: the holder is live')
  const t0 = clock.now()
  const won = await b.claim('vm/x', 1)
  t.equal(clock.now(), t0, 'no lease wait')
  t.match(won, { name: 'vm/x', mode: 'exclusive', managed: false, generation: 2 })
  t.equal(await a.claim('vm/x', 1), null, 'the other claim of generation 1 loses')
  t.match(await lockOf(a, 'vm/x'), { owner: 'b', generation: 2, state: 'exclusive' }, 'and the loser sees the winner at generation 2')
  t.ok(a.holds('vm/x'), 'the deposed holder does not know until it renews')
  await clock.advance(250)
  t.same(lost, ["vm/x: lock 'vm/x' (generation 1) is now held by host 'b' at generation 2"], 'its heartbeat reports the loss')
  t.notOk(a.holds('vm/x'))
  t.ok(a.valid(), 'the host lease itself is fine')
  t.same(a.heldLocks(), [])
  await clock.advance(5000)
  t.ok(b.holds('vm/x'), 'the winner keeps it by its heartbeat')
  t.equal(lost.length, 1, 'reported once')
  await t.rejects(a.acquire('vm/x'), { code: 'Busy', message: /held by host 'b' \(generation 2\)/ })
  await b.release('vm/x')
  t.match(await lockOf(a, 'vm/x'), { owner: null, state: 'free', generation: 2 })
  await a.leave()
  await b.leave()
})

t.test('a claim of any other generation takes nothing', async (t) => {
  const { a, b } = await twoHosts()
  await a.acquire('vm/x')
  await b.claim('vm/x', 1)
  for (const g of [0, 1, 3]) t.equal(await a.claim('vm/x', g), null, `generation ${g} is stale or not yet`)
  t.match(await lockOf(a, 'vm/x'), { owner: 'b', generation: 2 })
  await a.leave()
  await b.leave()
})

t.test('the holder may claim its own lock: it keeps it under the next generation, and reports no loss', async (t) => {
  const { clock, a, b } = await twoHosts()
  let lost = 0
  a.onLost = () => lost++
  await a.acquire('vm/x')
  t.match(await a.claim('vm/x', 1), { generation: 2 })
  t.equal(await b.claim('vm/x', 1), null)
  await clock.advance(1000)
  t.equal(lost, 0)
  t.ok(a.holds('vm/x'))
  t.same(a.heldLocks().map((h) => h.generation), [2])
  await a.leave()
  await b.leave()
})

t.test('a record still at the generation but released meanwhile is claimed; a new lock at generation 0', async (t) => {
  const { a, b } = await twoHosts()
  await a.acquire('vm/x')
  await a.release('vm/x')
  t.match(await b.claim('vm/x', 1), { generation: 2 }, 'free at generation 1: claimed')
  t.match(await b.claim('vm/new', 0), { generation: 1 }, 'a lock with no record yet')
  t.equal(await a.claim('vm/new', 0), null)
  await a.leave()
  await b.leave()
})

t.test('claims racing for one generation: exactly one wins, every time', async (t) => {
  const { a, b } = await twoHosts()
  let g = 0
  for (let i = 0; i < 50; i++) {
    const [x, y] = await Promise.all([a.claim('vm/x', g), b.claim('vm/x', g)])
    t.equal(Number(x !== null) + Number(y !== null), 1, `round ${i}: one winner`)
    t.equal((x ?? y)!.generation, g + 1)
    g++
  }
  await a.leave()
  await b.leave()
})

t.test('a managed lock cannot be claimed; a host without a lease cannot claim', async (t) => {
  const { clock, a, b } = await twoHosts()
  await a.acquire('m', { managed: true })
  await t.rejects(b.claim('m', 1), { code: 'InvalidArgument', message: /managed/ })
  b.halt()
  await clock.advance(3000)
  await t.rejects(b.claim('vm/x', 0), { code: 'IoError', message: /no valid lease/ })
  await a.leave()
})

t.test('a heartbeat whose read races the host\'s own claim does not report the lock lost', async (t) => {
  const mem = await memorySpace()
  const clock = new FakeClock()
  let hold: Promise<void> | null = null
  // the compare-and-write takes effect at once, its answer comes when `hold` resolves
  const slow: LockStorage = {
    size: mem.size,
    name: 'slow-answers',
    read: (o, l) => mem.read(o, l),
    write: (o, d, w) => mem.write(o, d, w),
    compareAndWrite: async (o, e, d) => {
      const ok = await mem.compareAndWrite(o, e, d)
      if (hold) await hold
      return ok
    },
    close: async () => {},
  }
  const a = new LockManager(slow, 'a', clock)
  await a.join()
  const lost: string[] = []
  a.onLost = (l) => lost.push(l)
  await a.acquire('vm/x')
  let answer = () => {}
  hold = new Promise<void>((r) => (answer = r))
  const claimed = a.claim('vm/x', 1)
  await settle()
  await a.heartbeat() // reads generation 2 while the held lock still says 1
  answer()
  t.match(await claimed, { generation: 2 })
  hold = null
  await a.heartbeat()
  t.same(lost, [], 'no loss reported')
  t.ok(a.holds('vm/x'))
  await a.leave()
})

import t from 'tap'
import { FakeClock, memorySpace, twoHosts } from '../../helpers/locks.js'
import { countingStorage, LockManager, LockspaceObserver } from '../../../src/disk-formats/lock-region/index.js'

t.test('an observer only reads, and judges liveness by watching heartbeats on its own clock', async (t) => {
  const st = await memorySpace()
  const clock = new FakeClock()
  const a = new LockManager(st, 'a', clock)
  await a.join()
  await a.acquire('vm1')
  const counted = countingStorage(st)
  const o = new LockspaceObserver(counted, clock)
  t.equal(o.slot, -1, 'an observer has no slot of its own')

  let v = await o.view()
  t.match(v.hosts, [{ name: 'a', state: 'live', alive: null }], 'first look: not yet seen advancing')
  t.match(v.locks, [{ name: 'vm1', state: 'exclusive', owner: 'a', waiting: [] }])
  await clock.advance(600)
  v = await o.view()
  t.match(v.hosts, [{ name: 'a', alive: true }], 'seen advancing: alive')
  a.halt()
  await clock.advance(2100)
  v = await o.view()
  t.match(v.hosts, [{ name: 'a', alive: false }], 'silent for a whole lease: dead')
  t.match(counted.counts, { write: 0, cas: 0 }, 'never writes')
  t.ok(counted.counts.read > 0)
})

t.test('an observer lists a host waiting for a lock', async (t) => {
  const { st, clock, a, b } = await twoHosts()
  await a.acquire('vm1', { managed: true })
  const wait = b.acquire('vm1', { waitMs: 60_000 }).catch(() => undefined)
  await clock.advance(600)
  const o = new LockspaceObserver(st, clock)
  await o.view()
  await clock.advance(300)
  t.match((await o.view()).locks, [{ name: 'vm1', owner: 'a', waiting: ['b'] }])
  await a.release('vm1')
  await clock.advance(600)
  await wait
  for (const m of [a, b]) await m.leave()
})

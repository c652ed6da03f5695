import t from 'tap'
import { MemoryBudget } from '../../../src/server/iscsi/memory-budget.js'

const tick = () => new Promise((r) => setImmediate(r))

t.test('takes what fits, queues the rest in order, and counts the socket queue', async (t) => {
  let queued = 0
  const b = new MemoryBudget(100, () => queued)
  t.ok(b.tryTake(60), '60 of 100')
  t.notOk(b.tryTake(50), '50 more does not fit')
  const order: string[] = []
  void b.take(50).then(() => order.push('big'))
  t.notOk(b.tryTake(10), 'a small one does not overtake a waiting one')
  void b.take(10).then(() => order.push('small'))
  await tick()
  t.same(order, [])
  queued = 30
  b.give(60) // 0 reserved, 30 queued: 50 fits, then 10 does too
  await tick()
  t.same(order, ['big', 'small'])
  t.equal(b.used, 90)
})

t.test('room() waits while the limit is exceeded, until the socket drains', async (t) => {
  let queued = 0
  const b = new MemoryBudget(100, () => queued)
  t.ok(b.tryTake(80))
  queued = 40
  let roomy = false
  void b.room().then(() => (roomy = true))
  await tick()
  t.notOk(roomy, 'over the limit')
  queued = 0
  b.drained()
  await tick()
  t.ok(roomy, 'drained')
})

t.test('close() ends every wait, and later takes succeed', async (t) => {
  const b = new MemoryBudget(10, () => 0)
  t.ok(b.tryTake(10))
  let took = false
  void b.take(10).then(() => (took = true))
  b.close()
  await tick()
  t.ok(took)
  t.ok(b.tryTake(1000))
  await b.room()
})

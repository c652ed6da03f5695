import t from 'tap'
import { Fifo } from '../../../src/client/ft/fifo.js'

t.test('Fifo: in order out, positions from the front, sorted insert and search', async (t) => {
  const q = new Fifo<number>()
  t.equal(q.shift(), undefined)
  for (const x of [10, 20, 30, 40]) q.push(x)
  t.equal(q.shift(), 10)
  t.same([q.length, q.peek(), q.last(), q.at(1), q.at(3), q.at(-1)], [3, 20, 40, 30, undefined, undefined])
  t.equal(q.partition((x) => x < 30), 1, 'first item not below 30')
  t.equal(q.partition((x) => x < 99), 3, 'all below: length')
  q.insert(q.partition((x) => x <= 25), 25)
  q.insert(0, 5)
  q.insert(99, 50)
  t.same(q.toArray(), [5, 20, 25, 30, 40, 50])
  q.drop(2)
  t.same(q.toArray(), [25, 30, 40, 50])
  q.drop(10)
  t.same([q.length, q.peek()], [0, undefined])
})

t.test('Fifo: a long-running queue stays correct across compactions', async (t) => {
  const q = new Fifo<number>()
  let next = 0
  let expect = 0
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 997; i++) q.push(next++)
    const out: number[] = []
    for (let i = 0; i < 900; i++) out.push(q.shift()!)
    const want = Array.from({ length: 900 }, (_, i) => expect + i)
    expect += 900
    if (!t.same(out, want, `round ${round}`, { diagnostic: false })) break
  }
  t.equal(q.length, next - expect)
  t.equal(q.peek(), expect)
  t.equal(q.at(q.length - 1), next - 1)
  t.equal(q.partition((x) => x < expect + 10), 10)
})

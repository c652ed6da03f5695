import t from 'tap'
import { OutputGate, OUTPUT_GATE_LIMIT_BYTES, type OutputKind } from '../../../src/client/ft/output-gate.js'
import { FakeTimers } from '../../helpers/timers.js'

/** A gate and the outputs it let out, in order, each as `kind@at#n`. */
function gate(o?: { limitBytes?: number }) {
  const clock = new FakeTimers()
  const g = new OutputGate(clock, o)
  const out: string[] = []
  let n = 0
  const hold = (kind: OutputKind, at: number, bytes = 0) => {
    const name = `${kind}@${at}#${n++}`
    g.hold(kind, at, () => out.push(name), bytes)
    return name
  }
  return { clock, g, out, hold }
}

t.test('an output leaves only once the backup has received past the instruction that made it', async (t) => {
  const { g, out, hold } = gate()
  hold('console', 10)
  hold('frame', 20)
  t.same(out, [], 'nothing acked: nothing out')
  g.acked(10)
  t.same(out, [], 'received 10 does not cover the instruction at 10')
  g.acked(11)
  t.same(out, ['console@10#0'])
  g.acked(5)
  t.equal(g.received, 11, 'a lower ack is ignored')
  g.acked(1000)
  t.same(out, ['console@10#0', 'frame@20#1'])
  hold('disk', 500)
  t.same(out, ['console@10#0', 'frame@20#1', 'disk@500#2'], 'held after its ack: out at once')
  t.equal(g.held, 0)
})

t.test('outputs leave in order of instruction, and in the order held among equal instructions', async (t) => {
  const { g, out, hold } = gate()
  const a = hold('frame', 30)
  const b = hold('console', 10)
  const c = hold('disk', 20)
  const d = hold('console', 10)
  const e = hold('frame', 20)
  const f = hold('console', 10)
  g.acked(25)
  t.same(out, [b, d, f, c, e], 'all at 10 in hold order, then all at 20')
  g.acked(31)
  t.same(out, [b, d, f, c, e, a])
})

t.test('while the claim is not current nothing leaves, even acked; once won, the acked outputs leave', async (t) => {
  const { g, out, hold } = gate()
  hold('console', 1)
  g.claimed(false)
  hold('frame', 2)
  g.acked(100)
  t.same(out, [], 'peer lost, claim pending: held')
  hold('disk', 3)
  t.same(out, [], 'held after its ack too')
  g.claimed(true)
  t.same(out, ['console@1#0', 'frame@2#1', 'disk@3#2'], 'claim won: released in order')
})

t.test('halt drops everything held and everything after; nothing is ever released', async (t) => {
  const { g, out, hold } = gate()
  hold('console', 1, 10)
  hold('frame', 2, 60)
  g.claimed(false)
  g.acked(100)
  g.halt()
  t.equal(g.heldBytes, 0)
  t.equal(g.held, 0)
  g.claimed(true)
  g.acked(1000)
  hold('console', 500, 5)
  t.same(out, [], 'the loser of the claim releases nothing')
  t.equal(g.snapshot().dropped, 3)
  t.ok(g.isHalted)
})

t.test('the backstop: held bytes are counted, and over the limit the primary can wait for the acks', async (t) => {
  const { g, hold } = gate({ limitBytes: 1000 })
  hold('console', 1, 400)
  hold('frame', 2, 600)
  t.equal(g.heldBytes, 1000)
  t.notOk(g.overLimit, 'at the limit is not over it')
  let under = false
  await g.whenUnder()
  hold('frame', 3, 1)
  t.ok(g.overLimit, '1001 bytes held')
  void g.whenUnder().then(() => (under = true))
  await new Promise((r) => setImmediate(r))
  t.notOk(under, 'the primary waits')
  g.acked(2)
  await new Promise((r) => setImmediate(r))
  t.equal(g.heldBytes, 601)
  t.ok(under, 'released under the limit: it goes on')
  t.equal(new OutputGate(new FakeTimers()).snapshot().heldBytes, 0)
  t.equal(OUTPUT_GATE_LIMIT_BYTES, 64 * 1024 * 1024, 'the default backstop is 64 MiB')
  let halted = false
  hold('frame', 4, 2000)
  void g.whenUnder().then(() => (halted = true))
  g.halt()
  await new Promise((r) => setImmediate(r))
  t.ok(halted, 'a halt wakes the waiter too')
})

t.test('the release delay of each output is measured on the injected clock', async (t) => {
  const { g, clock, hold } = gate()
  hold('console', 1)
  await clock.advance(3)
  hold('frame', 2)
  await clock.advance(2)
  g.acked(2) // console after 5 ms
  await clock.advance(10)
  g.acked(3) // frame after 12 ms
  t.same(g.takeDelays(), [
    { kind: 'console', ms: 5 },
    { kind: 'frame', ms: 12 },
  ])
  t.same(g.takeDelays(), [], 'taken once')
  const s = g.snapshot()
  t.same(s.released, { console: 1, frame: 1, disk: 0 })
  t.same([s.delay.count, s.delay.p50, s.delay.max], [2, 5, 12])
})

t.test('a release that throws does not keep the others in', async (t) => {
  const { g, out, hold } = gate()
  hold('console', 1)
  g.hold('frame', 2, () => {
    throw new Error('uplink gone')
  })
  hold('disk', 3)
  t.throws(() => g.acked(10), { message: 'uplink gone' })
  t.same(out, ['console@1#0', 'disk@3#1'])
  t.equal(g.held, 0)
})

t.test('bad holds are typed errors', async (t) => {
  const { hold } = gate()
  t.throws(() => hold('console', -1), { code: 'InvalidArgument' })
  t.throws(() => hold('console', NaN), { code: 'InvalidArgument' })
  t.throws(() => hold('frame', 1, -5), { code: 'InvalidArgument' })
})

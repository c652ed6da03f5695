import t from 'tap'
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { Machine, encodeHeader, guestPath } from '../../../src/client/vm/index.js'
import { EventSource } from '../../../src/client/vm/events.js'
import { freeze } from '../../../src/client/vm/freeze.js'
import { encodeState, type VmState } from '../../../src/client/vm/state.js'
import type { SwitchPort } from '../../../src/client/vm/net.js'
import { realTimers } from '../../../src/client/vm/timers.js'
import { FtPrimary, type Pairing } from '../../../src/client/ft/primary.js'
import { FtBackup } from '../../../src/client/ft/backup.js'
import { OutputGate } from '../../../src/client/ft/output-gate.js'
import { LagMeter } from '../../../src/client/ft/lag.js'
import { randomFillSync } from 'node:crypto'
import { StateReceiver, precopy, sendFrozen, STATE_ITEM, type StateLink } from '../../../src/client/ft/state-sync.js'
import { FakeTimers } from '../../helpers/timers.js'
import { timersWithoutTime } from '../../helpers/timers.js'

const pairing = (timers: FakeTimers, logged: Buffer[]): Pairing => ({
  link: { log: (b) => void logged.push(Buffer.from(b)), bufferedBytes: 0, drained: async () => {} },
  gate: new OutputGate(timers),
  lag: new LagMeter(),
})

t.test('the live side\'s outputs: at once while alone, held until acked once paired, at once again alone', async (t) => {
  const timers = new FakeTimers()
  const out = new FtPrimary({ timers, reads: 'disk' })
  const written: number[] = []
  const frames: Buffer[] = []
  const write = out.consoleWriter((b) => written.push(b))
  const port = out.port({ onReceive: null, send: (f) => void frames.push(f), close: () => {} } as SwitchPort)
  t.equal(out.paired, false)
  write(0x41)
  port.send(Buffer.from('one'))
  t.same(written, [0x41], 'alone: a console byte leaves at once (no line buffering)')
  t.equal(frames.length, 1, 'alone: a frame leaves at once')
  t.equal(out.sink.count, 0, 'alone: nothing is logged')

  const logged: Buffer[] = []
  const p = pairing(timers, logged)
  out.pair(p)
  t.equal(out.paired, true)
  port.send(Buffer.from('two'))
  for (const b of Buffer.from('hi\n')) write(b)
  write(0x42)
  t.equal(frames.length, 1, 'paired: the frame waits')
  t.same(written, [0x41], 'paired: the line waits')
  t.equal(p.gate.held, 2)
  out.ack({ received: 1, executed: 1, readsDone: 0 })
  t.equal(frames.length, 2, 'acked past its instruction: the frame leaves')
  t.same(Buffer.from(written).toString(), 'Ahi\n', 'and the line')

  // the claim won after a loss: what the gate held is released by the caller, the partial line by alone()
  port.send(Buffer.from('three'))
  p.gate.acked(Infinity)
  out.alone()
  t.equal(frames.length, 3)
  t.same(Buffer.from(written).toString(), 'Ahi\nB', 'alone again: the partial line leaves')
  port.send(Buffer.from('four'))
  t.equal(frames.length, 4, 'alone: at once again')
  t.equal(out.gate, null)
  out.ack({ received: 1e9, executed: 1e9, readsDone: 0 })

  // a second pairing starts its log afresh (a state saved in the pause has log position 0)
  const q = pairing(timers, [])
  out.pair(q)
  t.equal(out.sink.count, 0, 'a new pairing: a new log')
  port.send(Buffer.from('five'))
  t.equal(frames.length, 4, 'paired again: held')
  t.equal(p.gate.held, 0, 'not in the old gate')
  t.equal(q.gate.held, 1, 'in the new one')
})

t.test('a state stream: bad items are typed errors; a hash mismatch is refused', async (t) => {
  const r = new StateReceiver(1 << 16)
  t.throws(() => r.add(Buffer.alloc(0)), { code: 'InvalidArgument' })
  t.throws(() => r.add(Buffer.from([9])), { code: 'InvalidArgument', message: /unknown STATE item 9/ })
  t.throws(() => r.add(Buffer.from([STATE_ITEM.PAGES, 0, 0, 0, 0, 1])), { message: /5 \+ whole pages/ })
  const past = Buffer.concat([Buffer.from([STATE_ITEM.PAGES, 16, 0, 0, 0]), Buffer.alloc(4096)])
  t.throws(() => r.add(past), { message: /past the end of memory/ })
  await t.rejects(r.end(0, Buffer.alloc(32)), { message: /before the VM state/ })
  t.throws(() => r.add(Buffer.from([STATE_ITEM.VMSTATE, 1, 2, 3])), { name: 'StateError' })
  const m = new Machine({ image: readFileSync(guestPath('cpu')), memory: 1 << 20 })
  const s = m.saveState()
  const ok = new StateReceiver(1 << 20)
  ok.add(Buffer.concat([Buffer.from([STATE_ITEM.VMSTATE]), encodeState(s)]))
  await t.rejects(ok.end(s.instret + 1, Buffer.alloc(32)), { message: /STATE_END at instruction 1, the state is at 0/ })
  await t.rejects(ok.end(s.instret, Buffer.alloc(32)), { message: /the received state's hash .* is not the primary's/ }, 'a memory not as the sender hashed it is refused')
  const all = new StateReceiver(1 << 20)
  all.add(Buffer.concat([Buffer.from([STATE_ITEM.VMSTATE]), encodeState(s)]))
  all.add(Buffer.concat([Buffer.from([STATE_ITEM.PAGES, 0, 0, 0, 0]), Buffer.from(m.mem.bytes)]))
  const got = await all.end(s.instret, Buffer.from(m.stateHash(), 'hex'))
  t.ok(Buffer.from(got.memory!).equals(Buffer.from(m.mem.bytes)), 'the whole memory in one run: accepted, as sent')
})

for (const guest of ['memdirty']) {
  t.test(`${guest}: a VM running alone is paired in a live checkpoint's pause; the new backup, built from the state sent while it ran, follows to the same end`, async (t) => {
    const image = readFileSync(guestPath(guest))
    // the guest's 16 MiB and 8 MiB of random pages above: pre-copy has something to send
    const memory = 24 << 20
    const sha = createHash('sha256').update(image).digest()
    const out = new FtPrimary({ timers: realTimers, reads: 'disk' })
    const consoleP: number[] = []
    // the VM keeps its shortest slices (SLICE_MIN), so the pre-copy and the pause come while the guest
    // still runs (in ~1-ms slices the translator ran it to its end first)
    const pm = new Machine({ image, memory, timers: timersWithoutTime, ...out.machineOptions({ onConsole: (b) => consoleP.push(b) }) })
    pm.mem.bytes.set(randomFillSync(new Uint8Array(8 << 20)), 16 << 20)
    out.attach(pm)
    const running = pm.run()
    // far enough in that the guest has dirtied memory (and goes on dirtying it while the state is sent)
    while (pm.hart.instret < 1_000_000) await new Promise((r) => setTimeout(r, 5))

    const source = new EventSource('(restored)', { memoryBytes: memory, imageSha: sha })
    source.push(encodeHeader(memory, sha))
    const backup = new FtBackup({ source, ack: (a) => out.ack(a), timers: realTimers })
    const gate = new OutputGate(realTimers)
    const p: Pairing = { link: { log: (b) => backup.received(Buffer.from(b)), bufferedBytes: 0, drained: async () => {} }, gate, lag: new LagMeter() }
    const recv = new StateReceiver(memory)
    let ended: Promise<VmState> | undefined
    const link: StateLink = { state: (d) => (recv.add(d), true), drained: async () => {}, end: (n, h) => void (ended = recv.end(n, h)) }
    const pre = await precopy(pm.mem, link)
    t.ok(pre.pages >= 2048 && pre.rounds >= 1, `pre-copy: ${pre.pages} pages in ${pre.rounds} rounds while the VM ran, nothing held (${gate.held})`)
    let dirty: number[] = []
    const f = await freeze(pm, { inPause: () => ((dirty = pm.mem.readAndClearDirty()), out.pair(p)) })
    t.ok(f.instret > 0, `frozen at instruction ${f.instret} (pause ${f.stunMs.toFixed(2)} ms, ${dirty.length} pages dirty since the pre-copy)`)
    const sent = await sendFrozen(f, link, dirty)
    f.release()
    const state = await ended!
    t.ok(state, 'STATE_END: the hash of the received state and memory is the sender\'s')
    t.equal(sent.pages, dirty.length, `then the dirty pages as they were at the pause (${f.copied} copied on write first)`)
    const consoleB: number[] = []
    const bm = Machine.fromState(state, { image, memory, ...backup.machineOptions({ onConsole: (b) => consoleB.push(b) }) }, { loadImage: false })
    backup.attach(bm)
    const [a, b] = await Promise.all([running.finally(() => out.sink.close().then(() => backup.received(Buffer.alloc(0)))), bm.run()])
    t.equal(a.end, 'exit', `the VM ends: ${a.message ?? ''}`)
    t.equal(b.end, 'exit', `the new backup follows to the end: ${b.message ?? ''}`)
    t.ok(f.instret < a.instructions, `the pause (${f.instret}) came before the guest's end (${a.instructions})`)
    t.equal(b.instructions, a.instructions, 'at the same instruction')
    t.equal(b.stateHash, a.stateHash, 'in the same state')
    t.equal(b.console, a.console, 'with the same console')
    t.equal(consoleB.length, 0, 'the backup sent nothing')
    t.ok(gate.snapshot().released.console > 0 || a.console.length === 0, `outputs after the pause went through the gate (${gate.snapshot().released.console} console releases)`)
  })
}

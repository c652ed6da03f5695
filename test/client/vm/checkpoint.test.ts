import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { Machine, EventRecorder, EventReplayer, encodeHeader, guestPath } from '../../../src/client/vm/index.js'
import { restoreCheckpoint, takeCheckpoint } from '../../../src/client/vm/checkpoint.js'
import { shmTmp } from '../../helpers/peers.js'

const image = (guest: string) => readFileSync(guestPath(guest))

t.test('a checkpoint taken while memdirty runs restores, fed the recording\'s tail, to the same end; its summary has the stun', async (t) => {
  const dir = shmTmp(t, 'tandem-ckpt-')
  const memory = 64 << 20
  const img = image('memdirty')
  const sha = createHash('sha256').update(img).digest()
  const record = new EventRecorder(encodeHeader(memory, sha))
  const m = new Machine({ image: img, memory, record })
  // guest RAM beyond the guest's own 16 MiB filled: pages the file must carry
  m.mem.bytes.fill(0xa5, 32 << 20, 40 << 20)
  const running = m.run()
  await m.requestPause(2_000_000)
  m.resume()
  const file = join(dir, 'vm.ckpt')
  const s = await takeCheckpoint(m, { file, name: 'vm1' })
  const whole = await running
  t.equal(whole.end, 'exit')
  t.ok(s.instructions >= 2_000_000 && s.instructions < whole.instructions, `checkpoint at ${s.instructions} of ${whole.instructions}`)
  t.ok(s.stunMs >= 0 && s.stunMs < 1000, `stun ${s.stunMs.toFixed(3)} ms`)
  t.ok(s.bytes > 8 << 20 && s.bytes < 40 << 20, `${s.bytes} bytes (zero pages not stored: ${s.zeroPages})`)
  t.equal(s.disk, null, 'no disk')
  const log = join(dir, 'run.log')
  writeFileSync(log, record.bytes())
  const back = await restoreCheckpoint(file, { image: img, replay: await EventReplayer.open(log, memory, sha) })
  t.equal(back.hart.instret, s.instructions)
  t.ok(back.mem.bytes.subarray(32 << 20, 40 << 20).every((b) => b === 0xa5), 'the filled memory came back')
  const end = await back.run()
  t.match({ end: end.end, instructions: end.instructions, stateHash: end.stateHash, consoleHash: end.consoleHash }, { end: 'exit', instructions: whole.instructions, stateHash: whole.stateHash, consoleHash: whole.consoleHash }, 'the same end as the uninterrupted run')
})

t.test('restore refuses another guest image, naming it', async (t) => {
  const dir = shmTmp(t, 'tandem-ckpt-')
  const m = new Machine({ image: image('cpu'), memory: 16 << 20 })
  const file = join(dir, 'cpu.ckpt')
  await takeCheckpoint(m, { file })
  await t.rejects(restoreCheckpoint(file, { image: image('ticker') }), { name: 'StateError', message: /different guest image/ })
  const back = await restoreCheckpoint(file, { image: image('cpu') })
  t.equal(back.stateHash(), m.stateHash(), 'a VM that never ran restores to the same state')
})

t.test('go-live: a replay whose log is over goes on as a live run (ticker, its log cut in half)', async (t) => {
  const { HEADER_BYTES, RECORD_BYTES, MemoryEventSink } = await import('../../../src/client/vm/events.js')
  const dir = shmTmp(t, 'tandem-golive-')
  const img = image('ticker')
  const memory = 16 << 20
  const sha = createHash('sha256').update(img).digest()
  const record = new MemoryEventSink(encodeHeader(memory, sha))
  const rec = await new Machine({ image: img, memory, record }).run()
  const full = record.bytes()
  const records = (full.length - HEADER_BYTES) / RECORD_BYTES
  const kept = Math.floor(records / 2)
  const cut = full.subarray(0, HEADER_BYTES + kept * RECORD_BYTES)
  const lastAt = cut.readDoubleLE(cut.length - RECORD_BYTES + 4)
  const log = join(dir, 'half.log')
  writeFileSync(log, cut)
  // without go-live the replay stops where the log does
  const stopped = await new Machine({ image: img, memory, replay: await EventReplayer.open(log, memory, sha) }).run()
  t.equal(stopped.end, 'replay-error', `without go-live: ${stopped.message}`)
  let out = ''
  const live = await new Machine({ image: img, memory, replay: await EventReplayer.open(log, memory, sha), goLive: true, onConsole: (b) => (out += String.fromCharCode(b)) }).run()
  t.match({ end: live.end, exitCode: live.exitCode }, { end: 'exit', exitCode: 0 }, 'with go-live it runs on to its own end')
  t.equal(live.events, kept, `every one of the ${kept} records was used before going live`)
  t.ok(live.instructions > lastAt, `it ran past the log's last record (instruction ${lastAt}) to ${live.instructions}`)
  t.equal(rec.end, 'exit')
  t.match(out, /ticker: ticks \d+/, 'and printed its summary line')
})

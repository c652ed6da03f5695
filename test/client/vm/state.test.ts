import t, { type Test } from 'tap'
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { Machine, EventRecorder, EventReplayer, encodeHeader, guestPath, logicalUnitPath, type MachineOptions } from '../../../src/client/vm/index.js'
import { ClintRegs, FinisherRegs, HbaRegs, NicRegs, UartRegs } from '../../../src/client/vm/devices/index.js'
import { HartRegs, decodeState, encodeState, hashState, hashStateAsync } from '../../../src/client/vm/state.js'
import { StateError } from '../../../src/client/vm/state-codec.js'
import { LogicalUnit } from '../../../src/server/scsi/index.js'
import { RawFile } from '../../../src/disk-formats/index.js'
import { rng as rngU32, shmTmp } from '../../helpers/peers.js'

const NEXUS = 'iqn.2026-11.local.tandem:vm,i,0x000000000001'
/** uniform in [0, 1), seeded */
const rng = (seed: number) => {
  const u = rngU32(seed)
  return () => u() / 2 ** 32
}
const image = (guest: string) => readFileSync(guestPath(guest))

/** Each device's register table, by state section: a device added without one fails here. */
const TABLES: Record<string, { fields: Record<string, { type: unknown }> } | null> = { FINI: FinisherRegs, CLNT: ClintRegs, UART: UartRegs, ENTR: null, 'HBA ': HbaRegs, 'NIC ': NicRegs }
/**
 * A device's own fields besides its register table `r`: wiring, or state its save()/saveHost()
 * write beside the table (round-tripped below). A field added to a device and not listed here
 * fails this test: put it in the register table, or save it and list it.
 */
const OTHER_FIELDS: Record<string, string[]> = {
  FINI: ['tag', 'size', 'base', 'ctx'],
  CLNT: ['tag', 'size', 'base', 'ctx'],
  UART: ['tag', 'size', 'base', 'onConsole', 'block', 'kept', 'keptBytes', 'current', 'currentLength'],
  ENTR: ['tag', 'size', 'base', 'ctx', 'entropy', 'wall'],
  'HBA ': ['tag', 'size', 'base', 'ctx', 'disk', 'inflight', 'chain'],
  'NIC ': ['tag', 'size', 'base', 'ctx', 'port', 'rxQueue', 'framesDropped', 'arrived'],
}
/**
 * The hart's fields: its register table's, the wiring, transient run flags, the counter offsets
 * (section CNTR, isa-details.test.ts) and the JIT's translation cache (not guest state).
 */
const HART_OTHER = ['x', 'mem', 'bus', 'readTime', 'fault', 'stopRequested', 'counterOffset', 'blocks', 'pageBlocks', 'pageWords', 'exit', 'make', 'stats']

t.test('every device register and hart field is in the saved state: set each, save, restore, compare', async (t) => {
  const r = rng(7)
  const m = new Machine({ image: image('cpu'), memory: 1 << 20 })
  t.same(m.devices.map((d) => d.tag).sort(), Object.keys(TABLES).sort(), 'a register table for every device')
  for (const d of m.devices) {
    const dev = d as unknown as Record<string, unknown> & { r?: Record<string, unknown> }
    const table = TABLES[d.tag]
    const extra = Object.keys(dev).filter((k) => k !== 'r' && !OTHER_FIELDS[d.tag].includes(k))
    t.same(extra, [], `${d.tag}: no field outside its register table and its saved queues`)
    if (!table) continue
    t.same(Object.keys(dev.r!).sort(), Object.keys(table.fields).sort(), `${d.tag}: its registers are its table's fields`)
    for (const [name, f] of Object.entries(table.fields)) {
      const ty = f.type
      dev.r![name] = typeof ty === 'object' ? Buffer.from(Array.from({ length: (ty as { bytes: number }).bytes }, () => Math.floor(r() * 256))) : ty === 'u8' ? 1 : ty === 'u16' ? 17 : ty === 'f64' ? Math.floor(r() * 2 ** 40) : Math.floor(r() * 2 ** 32) >>> 0
    }
  }
  const hart = m.hart as unknown as Record<string, unknown>
  t.same(Object.keys(hart).filter((k) => !(k in HartRegs.fields) && !HART_OTHER.includes(k)), [], 'the hart has no field outside its register table')
  for (const i of m.hart.x.keys()) m.hart.x[i] = i ? Math.floor(r() * 2 ** 32) | 0 : 0
  for (const k of Object.keys(HartRegs.fields)) if (k !== 'x') hart[k] = k === 'instret' ? 123456789 : Math.floor(r() * 2 ** 32) | 0
  m.uart.write(0, 1, 0x41)
  const state = decodeState(encodeState(m.saveState({ memory: true })))
  const again = Machine.fromState({ ...state, memory: m.mem.bytes }, { image: image('cpu'), memory: 1 << 20 })
  for (const [i, d] of m.devices.entries()) t.same((again.devices[i] as unknown as { r: unknown }).r, (d as unknown as { r: unknown }).r, `${d.tag}: every register restored`)
  for (const k of Object.keys(HartRegs.fields)) t.same((again.hart as unknown as Record<string, unknown>)[k], hart[k], `hart ${k} restored`)
  t.equal(again.stateHash(), m.stateHash(), 'the same state hash')
  t.equal(again.uart.hash(), m.uart.hash(), 'the same console hash')
})

t.test('bad states end in a typed error', async (t) => {
  const m = new Machine({ image: image('cpu'), memory: 1 << 20 })
  const good = encodeState(m.saveState())
  t.throws(() => decodeState(Buffer.from('nonsense'.repeat(10))), StateError, 'no magic')
  const v2 = Buffer.from(good)
  v2.writeUInt32LE(2, 8)
  t.throws(() => decodeState(v2), { name: 'StateError', message: /version 2/ })
  t.throws(() => decodeState(good.subarray(0, good.length - 3)), { name: 'StateError', message: /header says/ })
  t.throws(() => Machine.fromState(decodeState(good), { image: image('cpu'), memory: 2 << 20 }), { name: 'StateError', message: /1048576 bytes of guest memory, this VM 2097152/ })
  t.throws(() => Machine.fromState(decodeState(good), { image: image('ticker'), memory: 1 << 20 }), { name: 'StateError', message: /different guest image/ })
  const s = decodeState(good)
  t.throws(() => Machine.fromState({ ...s, guest: s.guest.subarray(0, s.guest.length - 5) }, { image: image('cpu'), memory: 1 << 20 }), StateError, 'a cut section')
})

/**
 * A recorded run paused at `counts` (exact instruction counts): at each, the state (with memory)
 * and a copy of the disk. Then each is restored and fed the rest of the recording.
 */
async function checkpointsAgree(t: Test, guest: string, memory: number, n: number, seed: number) {
  const dir = shmTmp(t, 'tandem-state-')
  const img = image(guest)
  const sha = createHash('sha256').update(img).digest()
  const diskFile = join(dir, 'disk.raw')
  const dev = await RawFile.create(diskFile, 8 << 20)
  const record = new EventRecorder(encodeHeader(memory, sha))
  const opts = (disk: RawFile): MachineOptions => ({ image: img, memory, disk: logicalUnitPath(new LogicalUnit(disk, { serial: 'vm' }), NEXUS) })
  // a first run to learn how long this guest runs
  const probe = new Machine({ ...opts(dev), record: new EventRecorder(encodeHeader(memory, sha)) })
  const total = (await probe.run()).instructions
  await dev.close()
  const fresh = await RawFile.create(join(dir, 'disk2.raw'), 8 << 20)
  const r = rng(seed)
  const counts = [...new Set(Array.from({ length: n }, () => 1 + Math.floor(r() * total * 0.9)))].sort((a, b) => a - b)
  const m = new Machine({ ...opts(fresh), record })
  const taken: { at: number; state: ReturnType<Machine['saveState']>; disk: string }[] = []
  const running = m.run()
  for (const c of counts) {
    const at = await m.requestPause(c)
    if (at !== c) {
      t.fail(`asked to pause at ${c}, paused at ${at}`)
      break
    }
    const copy = join(dir, `at-${c}.raw`)
    copyFileSync(join(dir, 'disk2.raw'), copy)
    taken.push({ at, state: m.saveState({ memory: true }), disk: copy })
    m.resume()
  }
  const whole = await running
  await fresh.close()
  t.equal(whole.end, 'exit', `${guest}: the recorded run ends (${whole.instructions} instructions)`)
  t.equal(taken.length, counts.length, `${guest}: paused at each of ${counts.length} instruction counts exactly`)
  const log = join(dir, 'run.log')
  writeFileSync(log, record.bytes())
  const finalDisk = readFileSync(join(dir, 'disk2.raw'))
  let agree = 0
  for (const c of taken) {
    const disk = await RawFile.open(c.disk)
    const replay = await EventReplayer.open(log, memory, sha)
    const state = decodeState(encodeState(c.state))
    const back = Machine.fromState({ ...state, memory: c.state.memory }, { ...opts(disk), replay })
    const s = await back.run()
    await disk.close()
    const same = s.end === 'exit' && s.instructions === whole.instructions && s.stateHash === whole.stateHash && s.consoleHash === whole.consoleHash && readFileSync(c.disk).equals(finalDisk)
    if (same) agree++
    else t.fail(`${guest}: restored at ${c.at}, ended ${s.end} at ${s.instructions} (${s.message ?? ''}); state ${s.stateHash === whole.stateHash}, console ${s.consoleHash === whole.consoleHash}`)
  }
  t.equal(agree, taken.length, `${guest}: each of ${taken.length} checkpoints (at ${taken.map((c) => c.at).join(', ')}), restored and fed the recording's tail, ends exactly as the uninterrupted run: instructions, state, console, disk`)
}

t.test('checkpoints at 20 random instruction counts of a recorded diskio run each continue to the same end', (t) => checkpointsAgree(t, 'diskio', 16 << 20, 20, 1))
t.test('the same for memdirty and ticker (timer interrupts)', async (t) => {
  await checkpointsAgree(t, 'memdirty', 16 << 20, 6, 2)
  await checkpointsAgree(t, 'ticker', 16 << 20, 3, 3)
})

t.test('copy-on-write memory: pages read while memdirty and diskio run on are exactly the memory at the stun', async (t) => {
  const { freeze } = await import('../../../src/client/vm/freeze.js')
  const { PAGE_SIZE } = await import('../../../src/client/vm/memory.js')
  const dir = shmTmp(t, 'tandem-cow-')
  for (const guest of ['memdirty', 'diskio']) {
    const memory = 16 << 20
    const dev = await RawFile.create(join(dir, `${guest}.raw`), 8 << 20)
    const m = new Machine({ image: image(guest), memory, disk: logicalUnitPath(new LogicalUnit(dev, { serial: 'vm' }), NEXUS) })
    const running = m.run()
    await m.requestPause(300_000)
    m.resume()
    // inside the stun (the VM stopped): the hash of its state and memory, computed by the test
    let atStun = ''
    const f = await freeze(m, { switchDisk: async () => void (atStun = m.stateHash()) })
    t.notOk(f.state.memory, `${guest}: the state carries no memory (the checkpoint file writes it)`)
    // every page read one at a time, the VM running between reads
    const seen: Buffer[] = []
    for (let p = 0; p < f.pages; p++) {
      seen.push(Buffer.from(f.page(p)))
      if (p % 16 === 0) await new Promise((r) => setImmediate(r))
    }
    const copied = f.copied
    f.release()
    const after = await running
    await dev.close()
    let changed = 0
    for (let p = 0; p < f.pages; p++) if (!seen[p].equals(m.mem.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE))) changed++
    t.ok(changed > 0 && copied > 0, `${guest}: frozen at ${f.instret}; ran on to ${after.instructions}, writing ${changed} pages after the freeze (${copied} copied on first write)`)
    const back = Machine.fromState({ ...f.state, memory: Buffer.concat(seen) }, { image: image(guest), memory })
    t.equal(back.stateHash(), atStun, `${guest}: the state and the pages read make exactly the state hash taken inside the stun`)
  }
})

t.test('hashStateAsync (a chunk of memory per turn) equals hashState, at chunk boundaries and between them', async (t) => {
  const guest = Buffer.from('guest sections')
  for (const size of [0, 4096, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 9 << 20]) {
    const mem = new Uint8Array(size)
    for (let i = 0; i < size; i += 4093) mem[i] = i & 0xff
    t.equal(await hashStateAsync(guest, mem), hashState(guest, mem), `${size} bytes`)
  }
  // the summary's hash lets other work run while it reads memory
  let turns = 0
  const tick = setInterval(() => turns++, 0)
  await hashStateAsync(guest, new Uint8Array(64 << 20))
  clearInterval(tick)
  t.ok(turns > 0, `timers ran while 64 MiB was hashed (${turns})`)
})

t.test('a state taken after the guest exited, loaded and run again, runs nothing: the run ends at once with the exit (a colo secondary given its ended primary\'s state)', async (t) => {
  const img = image('cpu')
  const a = new Machine({ image: img, memory: 16 << 20 })
  const first = await a.run()
  t.match(first, { end: 'exit', exitCode: 0 })
  t.equal(a.ended, 'exit', 'ended says how the run ended')
  const state = a.saveState({ memory: true })
  const out: number[] = []
  const b = new Machine({ image: img, memory: 16 << 20, onConsole: (c) => out.push(c) })
  t.equal(b.ended, null, 'never run: null')
  b.loadState(state)
  const r = await b.run()
  t.match(r, { end: 'exit', exitCode: first.exitCode, instructions: first.instructions }, 'the exit, at the exited count')
  t.same(out, [], 'no instruction past the exit ran: nothing on the console')
  t.equal(r.stateHash, first.stateHash, 'the same state')
  // and the machine that ended runs again to the same end
  a.loadState(state)
  t.match(await a.run(), { end: 'exit', instructions: first.instructions, stateHash: first.stateHash })
})

import t from 'tap'
import type { Test } from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { EventReplayer, IRQ, JitHart, Machine, MemoryEventSink, encodeHeader, guestPath, logicalUnitPath, type Engine } from '../../../src/client/vm/index.js'
import { VirtualSwitch } from '../../../src/client/vm/net.js'
import { LogicalUnit } from '../../../src/server/scsi/index.js'
import { RawFile } from '../../../src/disk-formats/index.js'
import { rv, elf, li } from '../../helpers/rv.js'
import { rng, tmp } from '../../helpers/peers.js'

/**
 * The block translator against the interpreter (SPEC.md §Engines): random instruction streams run
 * to the same state; every guest recorded under one engine replays under the other identically.
 * FT_FUZZ_PROGRAMS=n runs more fuzz programs (CI: 150).
 */
const BASE = 0x80000000
const HANDLER = BASE + 0x40
const PROG = BASE + 0x100
const DATA = BASE + 0x8000
const other = (e: Engine): Engine => (e === 'jit' ? 'interp' : 'jit')

/**
 * A random program: ALU and M operations on x1-x27; loads and stores around DATA (x31; some
 * misaligned), through random registers (mostly access faults), and over the program itself (x30:
 * code that changes as it runs); branches and JAL within it, JALR through x30 (some misaligned);
 * CSR reads and writes; FENCE. A trap handler skips the trapping instruction.
 */
function program(seed: number, len: number): Buffer {
  const r = rng(seed)
  const pick = (n: number) => r() % n
  const reg = () => 1 + pick(27)
  const words: number[] = []
  for (let k = 0; k < len; k++) {
    const c = pick(100)
    const rd = reg()
    const a = reg()
    const b = reg()
    const imm = ((r() << 20) >> 20) as number
    if (c < 30) {
      const ops = [rv.add, rv.sub, rv.sll, rv.slt, rv.sltu, rv.xor, rv.srl, rv.sra, rv.or, rv.and, rv.mul, rv.mulh, rv.mulhsu, rv.mulhu, rv.div, rv.divu, rv.rem, rv.remu]
      words.push(ops[pick(ops.length)](rd, a, b))
    } else if (c < 50) {
      const ops = [rv.addi, rv.slti, rv.sltiu, rv.xori, rv.ori, rv.andi]
      if (pick(4) === 0) words.push([rv.slli, rv.srli, rv.srai][pick(3)](rd, a, pick(32)))
      else words.push(ops[pick(ops.length)](rd, a, imm))
    } else if (c < 54) words.push(pick(2) ? rv.lui(rd, r() & 0xfffff) : rv.auipc(rd, r() & 0xfffff))
    else if (c < 64) words.push([rv.lb, rv.lh, rv.lw, rv.lbu, rv.lhu][pick(5)](rd, pick(8) === 0 ? a : 31, pick(8) === 0 ? imm : pick(256) - 128))
    else if (c < 72) words.push([rv.sb, rv.sh, rv.sw][pick(3)](b, pick(10) === 0 ? a : 31, pick(8) === 0 ? imm : pick(256) - 128))
    else if (c < 75) words.push(rv.sw(pick(2) ? 28 : b, 30, 4 * pick(len))) // over the program: an instruction (x28) or anything
    else if (c < 87) {
      const off = 4 * (pick(24) - 12) || 8
      words.push([rv.beq, rv.bne, rv.blt, rv.bge, rv.bltu, rv.bgeu][pick(6)](a, b, off))
    } else if (c < 91) words.push(rv.jal(pick(3) ? 0 : rd, 4 * (pick(24) - 12) || 4))
    else if (c < 93) words.push(rv.jalr(pick(2) ? 0 : rd, 30, 4 * pick(len) + (pick(6) === 0 ? 2 : 0)))
    else if (c < 96) words.push([rv.csrrs(rd, 0xb02, 0), rv.csrrw(rd, 0x340, a), rv.csrrs(rd, 0xb00, 0), rv.csrrwi(rd, 0x340, pick(32))][pick(4)])
    else if (c < 98) words.push(rv.fence())
    else words.push([rv.ecall(), rv.ebreak(), 0xffffffff, rv.csrrw(rd, 0x7c0, a)][pick(4)]) // traps
  }
  // the handler (x29 is its own): skips the trapping instruction, or goes back to the start when
  // the trap is outside the program (a jump far away, as a random word stored over code may be)
  const handler = [rv.csrrs(29, 0x341, 0), rv.sub(29, 29, 30), rv.sltiu(29, 29, 4 * len), rv.beq(29, 0, 20), rv.csrrs(29, 0x341, 0), rv.addi(29, 29, 4), rv.csrrw(0, 0x341, 29), rv.mret(), rv.csrrw(0, 0x341, 30), rv.mret()]
  const boot = [...li(1, HANDLER), rv.csrrw(0, 0x305, 1), ...li(31, DATA), ...li(30, PROG), ...li(28, rv.addi(5, 5, 1)), rv.addi(1, 0, 0x80), rv.csrrs(0, 0x304, 1), rv.csrrsi(0, 0x300, 8), rv.jalr(0, 30, 0)]
  const image = new Array((PROG - BASE) / 4).fill(0)
  boot.forEach((w, k) => (image[k] = w))
  handler.forEach((w, k) => (image[(HANDLER - BASE) / 4 + k] = w))
  const data = Buffer.alloc(0x400)
  for (let k = 0; k < data.length; k += 4) data.writeUInt32LE(r(), k)
  // past the end, jumps back to the start (a branch may land there)
  const back = Array.from({ length: 16 }, (_, k) => rv.jal(0, -4 * (len + k)))
  return elf([...image, ...words, ...back], [{ at: DATA - 0x200, bytes: data }])
}

/**
 * Runs `programs` random programs under both engines from the count `from` (a VM that has run
 * that long), `steps` instructions each in random slices; reports the first that differs.
 */
function fuzz(t: Test, programs: number, from: number, seed: number): { compiled: number; invalidated: number; ok: boolean } {
  const steps = 4_000
  let compiled = 0
  let invalidated = 0
  for (let p = 0; p < programs; p++) {
    const image = program(seed + p, 48 + (p % 5) * 40)
    const ends: string[] = []
    for (const engine of ['interp', 'jit'] as Engine[]) {
      const m = new Machine({ image, memory: 1 << 16, engine })
      m.hart.instret = from
      const s = rng(7 + p)
      const points: string[] = []
      while (m.hart.instret - from < steps && !m.hart.fault) {
        const n = 1 + (s() % (s() % 4 === 0 ? 400 : 40))
        // now and then a timer interrupt is pending for a slice (taken where the interpreter takes it)
        m.hart.setPending(IRQ.MTI, s() % 32 === 0)
        m.hart.run(Math.min(from + steps, m.hart.instret + n))
        points.push(`${m.hart.instret}`)
      }
      if (m.hart instanceof JitHart) {
        compiled += m.hart.stats.compiled
        invalidated += m.hart.stats.invalidated
      }
      ends.push(`${m.stateHash()} pc ${m.hart.pc >>> 0} instret ${m.hart.instret} fault ${m.hart.fault?.message ?? '-'} slices ${points.join(',')}`)
    }
    if (ends[0] !== ends[1]) {
      t.fail(`program ${p} (seed ${seed + p}, from instruction ${from}): the engines differ`, { interp: ends[0].slice(0, 200), jit: ends[1].slice(0, 200) })
      return { compiled, invalidated, ok: false }
    }
  }
  t.pass(`${programs} programs x ${steps} instructions from instruction ${from}: the same state, pc, count and fault under both engines`)
  return { compiled, invalidated, ok: true }
}

t.test('differential fuzzer: random programs, run in random slices, end in the same state under both engines', async (t) => {
  const programs = Number(process.env.FT_FUZZ_PROGRAMS ?? 150)
  const { compiled, invalidated, ok } = fuzz(t, programs, 0, 1000)
  if (!ok) return
  t.ok(compiled > programs * 10, `the JIT ran compiled blocks (${compiled} compiled)`)
  t.ok(invalidated > 0, `stores over code invalidated blocks (${invalidated})`)
})

t.test('a VM that has run past 2^32 instructions: the counts under the translator (read by the guest too) match the interpreter', async (t) => {
  // from 2000 below 2^32: the count passes 2^32 (the high half of mcycle/minstret moves) in every program
  fuzz(t, 20, 2 ** 32 - 2000, 5000)
  fuzz(t, 10, 2 ** 40 + 17, 6000)
})

t.test('a store over a compiled loop takes effect at once, by the CPU or by DMA', async (t) => {
  // loop: x1 += 1; x2 -= 1; bnez x2, loop. Then the loop's first instruction is rewritten to x1 += 100.
  const loop = [rv.addi(1, 1, 1), rv.addi(2, 2, -1), rv.bne(2, 0, -8)]
  const words = [rv.addi(2, 0, 50), rv.jal(0, 4), ...loop, ...li(3, BASE + 8), ...li(4, rv.addi(1, 1, 100)), rv.sw(4, 3, 0), rv.addi(2, 0, 3), rv.jal(0, -4 * 9), rv.jal(0, 0)]
  for (const engine of ['interp', 'jit'] as Engine[]) {
    const m = new Machine({ image: elf(words), memory: 1 << 16, engine })
    m.hart.run(2 + 150 + 6 + 1 + 9)
    t.equal(m.hart.x[1], 50 + 300, `${engine}: the CPU's store rewrote the loop (50 x 1, then 3 x 100)`)
    // DMA: a device writes the loop back to +1 (as the HBA and NIC do, through touchRange)
    m.mem.touchRange(8, 4)
    m.mem.i32[2] = rv.addi(1, 1, 1)
    m.hart.x[2] = 4
    m.hart.pc = BASE + 8
    m.hart.run(m.hart.instret + 12)
    t.equal(m.hart.x[1], 350 + 4, `${engine}: the DMA write took effect`)
  }
})

t.test('a looping block left mid-pass (device read, store over code) or at the limit counts exactly as the interpreter, at every limit', async (t) => {
  // A, one self-looping block: x1 += 1; an UART read (a side exit); x1 += 2; a store to the code
  // page, not over code; x2 -= 1; bnez x2, A. Then B: x1 += 1; a store over the block `other`
  // (its own word again: invalidated, B's block returns after it); x2 -= 1; call `other`; bnez x2, B
  const UART = 0x10000000
  const other = BASE + 4 * 30
  const words = [...li(3, UART), ...li(4, BASE + 0x800), ...li(6, other), ...li(7, rv.addi(8, 8, 1)), rv.addi(2, 0, 30)]
  words.push(rv.addi(1, 1, 1), rv.lbu(5, 3, 5), rv.addi(1, 1, 2), rv.sw(1, 4, 0), rv.addi(2, 2, -1), rv.bne(2, 0, -4 * 5), rv.addi(2, 0, 30))
  const b = words.length
  words.push(rv.addi(1, 1, 1), rv.sw(7, 6, 0), rv.addi(2, 2, -1), rv.jal(9, other - BASE - 4 * (b + 3)), rv.bne(2, 0, -4 * 4), rv.jal(0, 0))
  while (words.length < 30) words.push(0)
  words.push(rv.addi(8, 8, 1), rv.jalr(0, 9, 0))
  const image = elf(words)
  let invalidating = 0
  for (let limit = 1; limit <= 420; limit++) {
    const ends: string[] = []
    for (const engine of ['interp', 'jit'] as Engine[]) {
      const m = new Machine({ image, memory: 1 << 16, engine })
      const s = rng(limit)
      while (m.hart.instret < limit && !m.hart.fault) m.hart.run(Math.min(limit, m.hart.instret + 1 + (s() % 23)))
      if (m.hart instanceof JitHart && m.hart.stats.invalidated > 0) invalidating++
      ends.push(`${m.stateHash()} pc ${m.hart.pc >>> 0} instret ${m.hart.instret} x1 ${m.hart.x[1]} x8 ${m.hart.x[8]}`)
    }
    if (ends[0] !== ends[1]) return t.fail(`limit ${limit}: the engines differ`, { interp: ends[0], jit: ends[1] })
  }
  t.pass('420 limits, each reached in random slices: the same state, pc and count under both engines')
  t.ok(invalidating > 150, `B's store invalidated compiled code (in ${invalidating} runs)`)
})

interface RunOut {
  end: string
  instret: number
  stateHash: string
  consoleHash: string
  seen: string[]
  log?: Buffer
  disk?: Buffer
}

/** A guest run in-process under `engine`: recorded, or replaying `log`; `drive` feeds a NIC guest. */
async function runGuest(d: string, guest: string, engine: Engine, log: Buffer | undefined, drive?: (port: ReturnType<VirtualSwitch['port']>) => void): Promise<RunOut> {
  const image = readFileSync(guestPath(guest))
  const sha = createHash('sha256').update(image).digest()
  const memory = 16 << 20
  const tag = `${guest}-${engine}-${log ? 'replay' : 'record'}`
  const file = join(d, `${tag}.raw`)
  const dev = await RawFile.create(file, 8 << 20)
  const record = log ? undefined : new MemoryEventSink(encodeHeader(memory, sha))
  let replay
  if (log) {
    writeFileSync(join(d, `${tag}.log`), log)
    replay = await EventReplayer.open(join(d, `${tag}.log`), memory, sha)
  }
  const sw = guest === 'kvstore' && !log ? new VirtualSwitch() : undefined
  const net = sw?.port()
  const seen: string[] = []
  const every = guest === 'cpu' || guest === 'ticker' ? 2_000_000 : 200_000
  // cpu and ticker run 10^8 instructions: the first 2*10^7 here (a replay stops at the same limit)
  const maxInstructions = guest === 'cpu' || guest === 'ticker' ? 20_000_000 : undefined
  const m = new Machine({ image, memory, record, replay, engine, net, maxInstructions, disk: logicalUnitPath(new LogicalUnit(dev, { serial: 'vm' }), 'iqn.2026-11.local.tandem:vm,i,0x000000000001'), observe: { every, fn: (x) => seen.push(`${x.hart.instret}:${x.stateHash()}`) } })
  if (sw) drive!(sw.port()) // the NIC is on the switch now: the first request reaches it
  const s = await m.run()
  await dev.close()
  return { end: s.end, instret: s.instructions, stateHash: s.stateHash, consoleHash: s.consoleHash, seen, log: record?.bytes(), disk: readFileSync(file) }
}

/** kvstore's client on the switch: a few requests, each after the last answer, then QUIT. */
function kvClient(port: ReturnType<VirtualSwitch['port']>): void {
  const me = Buffer.from([2, 0, 0, 0, 0, 0x99])
  const send = (text: string) => port.send(Buffer.concat([Buffer.alloc(6, 0xff), me, Buffer.from([0x88, 0xb5]), Buffer.from(text)]))
  const script = ['SET a 1', 'SET b two', 'GET a', 'DEL a', 'COUNT', 'QUIT']
  let k = 0
  port.onReceive = () => {
    if (++k < script.length) send(script[k])
  }
  send(script[0])
}

t.test('every guest recorded under one engine replays under the other: same count, states on the way, console, disk', async (t) => {
  const d = tmp(t)
  const plan: [string, Engine][] = [
    ['cpu', 'jit'],
    ['memdirty', 'interp'],
    ['ticker', 'jit'],
    ['ticker', 'interp'],
    ['diskio', 'jit'],
    ['disklog', 'interp'],
    ['kvstore', 'jit'],
  ]
  for (const [guest, engine] of plan) {
    const rec = await runGuest(d, guest, engine, undefined, kvClient)
    t.equal(rec.end, guest === 'cpu' || guest === 'ticker' ? 'limit' : 'exit', `${guest} under ${engine}: ran to its end (or the limit)`)
    const rep = await runGuest(d, guest, other(engine), rec.log)
    t.equal(rep.end, rec.end, `${guest}: recorded under ${engine}, replayed under ${other(engine)} to the same end`)
    t.equal(rep.instret, rec.instret, `${guest}: the same count (${rec.instret})`)
    t.same(rep.seen, rec.seen, `${guest}: the same state at each of ${rec.seen.length} points`)
    t.equal(rep.stateHash, rec.stateHash, `${guest}: the same final state`)
    t.equal(rep.consoleHash, rec.consoleHash, `${guest}: the same console`)
    t.ok(rep.disk!.equals(rec.disk!), `${guest}: the same disk, byte for byte`)
  }
})

t.test('a loop tested at its top (the block follows the jump back and falls through to its own start) goes round inside one block call', async (t) => {
  // x5 = 100 000; X: beq x5, x0, out; E: x5 -= 1; j X; out: j out
  const words = [...li(5, 100_000), rv.beq(5, 0, 12), rv.addi(5, 5, -1), rv.jal(0, -8), rv.jal(0, 0)]
  const m = new Machine({ image: elf(words), memory: 1 << 16, engine: 'jit' })
  const hart = m.hart as JitHart
  // every translated block counted as it is called
  let calls = 0
  const h = hart as unknown as { make: (body: string) => (x: Int32Array, budget: number) => number }
  const make = h.make
  h.make = (body) => {
    const fn = make(body)
    return (x, budget) => (calls++, fn(x, budget))
  }
  // li (2), 100 000 passes of beq, addi, j (3 each), the last beq (taken)
  const end = 2 + 100_000 * 3 + 1
  while (m.hart.instret < end) m.hart.run(Math.min(end, m.hart.instret + 50_000))
  t.equal(m.hart.x[5], 0, 'the loop ran to its end')
  t.equal(m.hart.pc >>> 0, BASE + 4 * 5, 'and left it at its exact count')
  t.ok(calls < 100, `${calls} block calls for 100 000 passes (one per pass when the fall-through back to the block's start leaves it)`)
})

t.test('a live slice that only its length ends (soft) stops at a block boundary, without the interpreter, and changes nothing else', async (t) => {
  // the loop above: every pass is one block call, so a slice's end falls inside a block at almost every length
  const words = [...li(5, 100_000), rv.beq(5, 0, 12), rv.addi(5, 5, -1), rv.jal(0, -8), rv.jal(0, 0)]
  const end = 2 + 100_000 * 3 + 1
  for (const soft of [false, true]) {
    const m = new Machine({ image: elf(words), memory: 1 << 16, engine: 'jit' })
    const hart = m.hart as unknown as { interpret: (limit: number) => string; run: (limit: number, soft?: boolean) => string }
    let stepped = 0
    const interpret = hart.interpret.bind(hart)
    hart.interpret = (limit) => (stepped++, interpret(limit))
    const s = rng(3)
    let short = 0
    let slices = 0
    let other = 0
    while (m.hart.instret < end - 1000) {
      const limit = m.hart.instret + 497 + (s() % 500)
      if (hart.run(limit, soft) !== 'limit') other++
      if (m.hart.instret < limit) short = Math.max(short, limit - m.hart.instret)
      slices++
    }
    // the last slice exact, as an instruction limit is
    hart.run(end)
    t.equal(other, 0, `soft ${soft}: every slice ended at its limit`)
    t.equal(m.hart.x[5], 0, `soft ${soft}: the loop ran to its end`)
    t.equal(m.hart.instret, end, `soft ${soft}: and stopped at its exact count`)
    if (soft) {
      t.ok(slices > 300, `${slices} soft slices`)
      t.ok(short > 0 && short < 64, `each soft slice ended less than one block short of its limit (at most ${short})`)
      t.ok(stepped <= 5, `the interpreter ran ${stepped} times (the li's start and the last exact slice), not at every slice end`)
    } else t.ok(stepped > 200, `exact slices stepped through the interpreter at their ends (${stepped} times)`)
  }
  // random programs (side exits, traps, stores over code) in soft slices end where the interpreter does
  for (let p = 0; p < 40; p++) {
    const image = program(5000 + p, 48 + (p % 5) * 40)
    const ends: string[] = []
    for (const engine of ['interp', 'jit'] as Engine[]) {
      const m = new Machine({ image, memory: 1 << 16, engine })
      const s = rng(11 + p)
      // (a soft slice is at least a block long, as a live one is: SLICE_MIN)
      while (m.hart.instret < 3_000 && !m.hart.fault) m.hart.run(m.hart.instret + 64 + (s() % 400), true)
      if (!m.hart.fault) m.hart.run(4_000)
      ends.push(`${m.stateHash()} pc ${m.hart.pc >>> 0} instret ${m.hart.instret} fault ${m.hart.fault?.message ?? '-'}`)
    }
    if (ends[0] !== ends[1]) return t.fail(`program ${p}: soft slices changed the run`, { interp: ends[0], jit: ends[1] })
  }
  t.pass('40 random programs in soft slices, then exact to 4 000: the same state as the interpreter')
})

t.test('the run loop asks for soft slices only where the slice length is the limit; a replay of that run stops at the same counts', async (t) => {
  const d = tmp(t)
  const image = elf([...li(5, 3_000_000), rv.beq(5, 0, 12), rv.addi(5, 5, -1), rv.jal(0, -8), rv.jal(0, 0)])
  const sha = createHash('sha256').update(image).digest()
  const memory = 1 << 16
  const calls = (m: Machine) => {
    const seen = { soft: 0, exact: 0 }
    const hart = m.hart as unknown as { run: (limit: number, soft?: boolean) => string }
    const run = hart.run.bind(hart)
    hart.run = (limit, soft) => (soft ? seen.soft++ : seen.exact++, run(limit, soft))
    return seen
  }
  const record = new MemoryEventSink(encodeHeader(memory, sha))
  const live = new Machine({ image, memory, record, maxInstructions: 9_000_000 })
  const liveCalls = calls(live)
  const a = await live.run()
  t.equal(a.instructions, 9_000_000, 'live: stopped at the instruction limit exactly')
  t.ok(liveCalls.soft > 0, `live: ${liveCalls.soft} soft slices, ${liveCalls.exact} exact`)
  writeFileSync(join(d, 'l.log'), record.bytes())
  const replay = new Machine({ image, memory, replay: await EventReplayer.open(join(d, 'l.log'), memory, sha), maxInstructions: 9_000_000 })
  const replayCalls = calls(replay)
  const b = await replay.run()
  // the log's END is the instruction limit: the replay's own slices are soft, its last one exact
  t.ok(replayCalls.soft > 0 && replayCalls.exact > 0, `replay: ${replayCalls.soft} soft slices, ${replayCalls.exact} exact`)
  t.equal(b.instructions, a.instructions, 'the replay stops at the same count')
  t.equal(b.stateHash, a.stateHash, 'in the same state')
})

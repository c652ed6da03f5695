import t from 'tap'
import { ENGINES, JitHart, Machine, type Engine } from '../../../src/client/vm/index.js'
import { rv, elf, li } from '../../helpers/rv.js'

/** The ISA details riscv-tests' "p" environment and qemu expect (SPEC.md §Hart), under each engine. */
const BASE = 0x80000000
const DATA = 0x80010000
const u = (v: number) => v >>> 0
const machine = (words: number[], engine: Engine, mem: { at: number; bytes: Buffer }[] = []) => new Machine({ image: elf([...words, rv.jal(0, 0)], mem), memory: 1 << 20, engine })

for (const engine of ENGINES) {
  t.test(`${engine}: misaligned loads and stores in RAM are performed, across a page boundary too`, async (t) => {
    const data = Buffer.from([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0xf0, 0xff])
    const words = [
      rv.jal(0, 8), // a jump: what follows is a block entry under the JIT
      0,
      ...li(1, DATA),
      rv.lw(2, 1, 1),
      rv.lh(3, 1, 7), // 0x88 0xf0: negative
      rv.lhu(4, 1, 7),
      rv.lh(5, 1, 3),
      ...li(6, 0xa1b2c3d4),
      ...li(7, DATA + 0xffe),
      rv.sw(6, 7, 0), // two bytes in each of two pages
      rv.lw(8, 7, 0),
      rv.lbu(9, 7, 2),
      rv.sh(6, 1, 0x21),
      rv.lw(10, 1, 0x20),
    ]
    const m = machine(words, engine, [{ at: DATA, bytes: Buffer.concat([data, Buffer.alloc(0x2000 - data.length)]) }])
    m.mem.readAndClearDirty()
    t.equal(m.hart.run(words.length), 'limit') // the word skipped, the closing loop once
    if (m.hart instanceof JitHart) t.ok(m.hart.stats.compiled > 0, 'ran as compiled blocks')
    t.equal(m.hart.fault, null)
    const x = m.hart.x
    t.equal(u(x[2]), 0x55443322, 'lw at +1')
    t.equal(x[3], (0xf088 << 16) >> 16, 'lh at +7 sign-extends')
    t.equal(x[4], 0xf088, 'lhu at +7')
    t.equal(x[5], 0x5544, 'lh at +3')
    t.equal(u(x[8]), 0xa1b2c3d4, 'sw across a page boundary, read back')
    t.equal(x[9], 0xb2, 'its third byte is in the next page')
    t.equal(u(x[10]), 0x00c3d400, 'sh at +0x21')
    const pages = m.mem.readAndClearDirty()
    t.ok(pages.includes(0x10) && pages.includes(0x11), `both pages the spanning store wrote are dirty (${pages})`)
  })

  t.test(`${engine}: trigger CSRs read as "no triggers", PMP CSRs are WARL, mcycle and minstret are writable`, async (t) => {
    const words = [
      rv.jal(0, 8),
      0,
      rv.csrrwi(0, 0x7a0, 1), // tselect = 1: WARL, stays 0
      rv.csrrs(1, 0x7a0, 0),
      rv.csrrs(2, 0x7a1, 0), // tdata1: type 0
      rv.csrrs(3, 0x7a4, 0), // tinfo: type 0 only
      ...li(4, -1),
      rv.csrrw(0, 0x3b0, 4), // pmpaddr0
      rv.csrrw(0, 0x3a0, 4), // pmpcfg0
      rv.csrrs(5, 0x3b0, 0),
      rv.csrrs(6, 0x3a0, 0),
      rv.csrrs(7, 0x3bf, 0), // pmpaddr15
      ...li(8, 1000),
      rv.csrrw(0, 0xb02, 8), // minstret = 1000: the next instruction reads 1000
      rv.csrrs(9, 0xb02, 0),
      rv.csrrs(10, 0xc02, 0), // instret mirrors it
      rv.csrrw(0, 0xb80, 4), // mcycleh = 0xffffffff
      rv.csrrs(11, 0xb80, 0),
      rv.csrrs(12, 0xb00, 0),
      rv.csrrs(13, 0xb82, 0),
    ]
    const m = machine(words, engine)
    t.equal(m.hart.run(words.length), 'limit')
    t.equal(m.hart.fault, null, 'no CSR here is illegal')
    const x = m.hart.x
    t.same([x[1], x[2], x[3]], [0, 0, 1], 'tselect 0, tdata1 0, tinfo 1')
    t.same([x[5], x[6], x[7]], [0, 0, 0], 'PMP CSRs take writes and read 0 (no PMP entries)')
    t.equal(x[9], 1000, 'minstret reads what was written, at the next instruction')
    t.equal(x[10], 1001, 'instret one instruction later')
    t.equal(u(x[11]), 0xffffffff, 'mcycleh as written')
    t.equal(x[12], words.length - 3, 'mcycle low word goes on with the count')
    t.equal(x[13], 0, 'minstreth unchanged')
    t.equal(m.hart.instret, words.length, 'the deterministic count is untouched by the writes')

    // the offsets are in the state (section CNTR), so a restored VM reads the same counters
    const st = m.saveState({ memory: true })
    const r = new Machine({ image: elf([...words, rv.jal(0, 0)]), memory: 1 << 20, engine: engine === 'jit' ? 'interp' : 'jit' })
    const back = Machine.fromState(st, { image: elf([...words, rv.jal(0, 0)]), memory: 1 << 20 })
    t.same(back.hart.counterOffset, m.hart.counterOffset, 'counter offsets restored')
    t.equal(back.stateHash(), m.stateHash(), 'same state hash after a restore')
    t.not(r.stateHash(), m.stateHash())
    // a state without counter writes has no CNTR section (states saved before it stay as they were)
    t.ok(st.guest.includes('CNTR\x10\0\0\0', 0, 'latin1'), 'a CNTR section with the offsets')
    t.notOk(r.saveState().guest.includes('CNTR', 0, 'latin1'), 'no CNTR section without a counter write')
  })
}

t.test('misaligned branch and jump targets still trap (no C extension)', async (t) => {
  for (const engine of ENGINES) {
    const m = machine([...li(1, BASE + 0x20), rv.csrrw(0, 0x305, 1), rv.jal(0, 6)], engine)
    m.hart.run(4)
    t.equal(m.hart.mcause, 0, `${engine}: instruction address misaligned`)
    t.equal(u(m.hart.mtval), BASE + 12 + 6, "mtval: the target")
  }
})

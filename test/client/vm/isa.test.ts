import t from 'tap'
import { Machine, CAUSE, IRQ } from '../../../src/client/vm/index.js'
import { rv, elf, li } from '../../helpers/rv.js'
import { rng } from '../../helpers/peers.js'

const BASE = 0x80000000
const DATA = 0x80010000

/** Runs `words` (then an infinite loop) for `steps` instructions; returns the machine. */
function exec(words: number[], steps?: number, mem: { at: number; bytes: Buffer }[] = []): Machine {
  const code = [...words, rv.jal(0, 0)]
  const m = new Machine({ image: elf(code, mem), memory: 1 << 20 })
  m.hart.run(steps ?? words.length)
  return m
}
const u = (v: number) => v >>> 0

t.test('integer register-immediate and register-register', async (t) => {
  const cases: [string, number[], number, number][] = [
    // name, program, register, expected (as uint32)
    ['addi', [rv.addi(1, 0, -5)], 1, u(-5)],
    ['addi wraps', [...li(1, 0x7fffffff), rv.addi(1, 1, 1)], 1, 0x80000000],
    ['slti', [rv.addi(1, 0, -3), rv.slti(2, 1, -2)], 2, 1],
    ['sltiu sign-extends the immediate', [rv.addi(1, 0, 5), rv.sltiu(2, 1, -1)], 2, 1],
    ['xori -1 is not', [rv.addi(1, 0, 0x55), rv.xori(2, 1, -1)], 2, u(~0x55)],
    ['ori', [rv.addi(1, 0, 0x50), rv.ori(2, 1, 0x0f)], 2, 0x5f],
    ['andi', [rv.addi(1, 0, 0x5f), rv.andi(2, 1, 0x0f)], 2, 0x0f],
    ['slli', [rv.addi(1, 0, 1), rv.slli(2, 1, 31)], 2, 0x80000000],
    ['srli', [...li(1, 0x80000000), rv.srli(2, 1, 31)], 2, 1],
    ['srai', [...li(1, 0x80000000), rv.srai(2, 1, 31)], 2, 0xffffffff],
    ['lui', [rv.lui(1, 0xabcde)], 1, 0xabcde000],
    ['auipc', [rv.addi(0, 0, 0), rv.auipc(1, 1)], 1, BASE + 4 + 0x1000],
    ['add', [...li(1, 0x7fffffff), rv.addi(2, 0, 1), rv.add(3, 1, 2)], 3, 0x80000000],
    ['sub', [rv.addi(1, 0, 3), rv.addi(2, 0, 5), rv.sub(3, 1, 2)], 3, u(-2)],
    ['sll uses 5 bits', [rv.addi(1, 0, 1), rv.addi(2, 0, 33), rv.sll(3, 1, 2)], 3, 2],
    ['slt', [rv.addi(1, 0, -1), rv.addi(2, 0, 1), rv.slt(3, 1, 2)], 3, 1],
    ['sltu', [rv.addi(1, 0, -1), rv.addi(2, 0, 1), rv.sltu(3, 1, 2)], 3, 0],
    ['xor', [rv.addi(1, 0, 6), rv.addi(2, 0, 3), rv.xor(3, 1, 2)], 3, 5],
    ['srl', [rv.addi(1, 0, -16), rv.addi(2, 0, 2), rv.srl(3, 1, 2)], 3, u(-16) >>> 2],
    ['sra', [rv.addi(1, 0, -16), rv.addi(2, 0, 2), rv.sra(3, 1, 2)], 3, u(-4)],
    ['or', [rv.addi(1, 0, 6), rv.addi(2, 0, 3), rv.or(3, 1, 2)], 3, 7],
    ['and', [rv.addi(1, 0, 6), rv.addi(2, 0, 3), rv.and(3, 1, 2)], 3, 2],
    ['x0 stays zero', [rv.addi(0, 0, 5), rv.add(1, 0, 0)], 1, 0],
  ]
  for (const [name, prog, reg, want] of cases) t.equal(u(exec(prog).hart.x[reg]), want, name)
})

t.test('M extension against BigInt arithmetic, edge cases and 2000 random pairs', async (t) => {
  const big = (v: number) => BigInt(v | 0)
  const ubig = (v: number) => BigInt(v >>> 0)
  const m32 = (v: bigint) => Number(BigInt.asUintN(32, v))
  const ref: Record<string, (a: number, b: number) => number> = {
    mul: (a, b) => m32(big(a) * big(b)),
    mulh: (a, b) => m32((big(a) * big(b)) >> 32n),
    mulhsu: (a, b) => m32((big(a) * ubig(b)) >> 32n),
    mulhu: (a, b) => m32((ubig(a) * ubig(b)) >> 32n),
    div: (a, b) => (b === 0 ? 0xffffffff : (a | 0) === -0x80000000 && (b | 0) === -1 ? u(a) : m32(big(a) / big(b))),
    divu: (a, b) => (b === 0 ? 0xffffffff : m32(ubig(a) / ubig(b))),
    rem: (a, b) => (b === 0 ? u(a) : (a | 0) === -0x80000000 && (b | 0) === -1 ? 0 : m32(big(a) % big(b))),
    remu: (a, b) => (b === 0 ? u(a) : m32(ubig(a) % ubig(b))),
  }
  const edges = [0, 1, -1, 2, -2, 7, -7, 0x7fffffff, -0x80000000, 0xffff, 0x10000, 12345678, -87654321]
  const r = rng(6)
  const pairs: [number, number][] = []
  for (const a of edges) for (const b of edges) pairs.push([a, b])
  for (let k = 0; k < 2000; k++) pairs.push([r() | 0, k % 7 === 0 ? (r() % 5) - 2 : r() | 0])
  let bad = 0
  for (const [name, f] of Object.entries(ref)) {
    const op = rv[name as 'mul']
    for (const [a, b] of pairs) {
      const got = u(exec([...li(1, a), ...li(2, b), op(3, 1, 2)]).hart.x[3])
      const want = f(a, b)
      if (got !== want) {
        if (bad++ < 10) t.fail(`${name}(${a | 0}, ${b | 0}) = ${got}, expected ${want}`)
      }
    }
  }
  t.equal(bad, 0, `all ${pairs.length} pairs for each of 8 instructions`)
})

t.test('loads and stores of each width, sign and zero extension', async (t) => {
  const data = Buffer.from([0x80, 0xff, 0x34, 0x12, 0x78, 0x56, 0x34, 0x12])
  const m = exec(
    [
      ...li(1, DATA),
      rv.lb(2, 1, 0),
      rv.lbu(3, 1, 0),
      rv.lh(4, 1, 0),
      rv.lhu(5, 1, 0),
      rv.lw(6, 1, 4),
      ...li(7, 0xdeadbeef),
      rv.sw(7, 1, 8),
      rv.sh(7, 1, 12),
      rv.sb(7, 1, 15),
      rv.lw(8, 1, 8),
      rv.lw(9, 1, 12),
    ],
    undefined,
    [{ at: DATA, bytes: Buffer.concat([data, Buffer.alloc(8)]) }],
  )
  const x = m.hart.x
  t.equal(x[2], -128, 'lb sign-extends')
  t.equal(x[3], 0x80, 'lbu zero-extends')
  t.equal(x[4], (0xff80 << 16) >> 16, 'lh sign-extends')
  t.equal(x[5], 0xff80, 'lhu')
  t.equal(u(x[6]), 0x12345678, 'lw little-endian')
  t.equal(u(x[8]), 0xdeadbeef, 'sw')
  t.equal(u(x[9]), 0xef00beef, 'sh writes the low half, sb the low byte')
})

t.test('branches, jumps and the link register', async (t) => {
  // each taken branch skips an addi that would set x5 to 1
  const br = (op: (a: number, c: number, off: number) => number, a: number, b: number) => exec([...li(1, a), ...li(2, b), op(1, 2, 8), rv.addi(5, 0, 1), rv.addi(6, 0, 2)]).hart.x[5]
  t.equal(br(rv.beq, 3, 3), 0, 'beq taken')
  t.equal(br(rv.beq, 3, 4), 1, 'beq not taken')
  t.equal(br(rv.bne, 3, 4), 0)
  t.equal(br(rv.blt, -1, 1), 0, 'blt signed')
  t.equal(br(rv.bltu, -1, 1), 1, 'bltu unsigned')
  t.equal(br(rv.bge, 1, -1), 0)
  t.equal(br(rv.bgeu, 1, -1), 1)
  const j = exec([rv.jal(1, 8), rv.addi(5, 0, 1), rv.addi(6, 0, 2)], 2)
  t.equal(u(j.hart.x[1]), BASE + 4, 'jal links pc+4')
  t.equal(j.hart.x[5], 0, 'jal skipped')
  t.equal(j.hart.x[6], 2)
  const jr = exec([...li(3, BASE + 17), rv.jalr(1, 3, -1), rv.addi(5, 0, 1), rv.addi(6, 0, 2)], 4)
  t.equal(u(jr.hart.pc), BASE + 20, 'jalr clears bit 0 of the target')
  t.equal(u(jr.hart.x[1]), BASE + 12)
})

t.test('CSRs, ECALL/MRET, interrupts, and the retired-instruction counter', async (t) => {
  // handler at BASE+0x100: x10 = mcause; mepc += 4; mret
  const handler = [rv.csrrs(10, 0x342, 0), rv.csrrs(11, 0x341, 0), rv.addi(11, 11, 4), rv.csrrw(0, 0x341, 11), rv.mret()]
  const prog = [...li(1, BASE + 0x100), rv.csrrw(0, 0x305, 1), rv.ecall(), rv.addi(12, 0, 7), rv.csrrs(13, 0xb02, 0)]
  const words = [...prog, ...Array((0x100 - prog.length * 4) / 4).fill(rv.addi(0, 0, 0)), ...handler]
  const m = new Machine({ image: elf(words), memory: 1 << 20 })
  m.hart.run(prog.length + handler.length)
  t.equal(m.hart.x[10], CAUSE.ECALL_M, 'mcause: environment call from M-mode')
  t.equal(m.hart.x[12], 7, 'returned after the ecall')
  t.equal(m.hart.x[13], prog.length + handler.length - 1, 'minstret counts every instruction before it')
  t.equal(m.hart.x[0], 0)
  // EBREAK traps with cause 3; FENCE is a no-op
  const eb = new Machine({ image: elf([...li(1, BASE + 0x20), rv.csrrw(0, 0x305, 1), rv.fence(), rv.ebreak(), 0, 0, 0, rv.csrrs(10, 0x342, 0), rv.jal(0, 0)]), memory: 1 << 20 })
  eb.hart.run(6)
  t.equal(eb.hart.x[10], CAUSE.BREAKPOINT, 'ebreak: breakpoint')
  t.equal(u(eb.hart.mepc), BASE + 16, 'mepc: the ebreak itself')
  // csrrs/csrrc/csrrwi on mscratch
  const c = exec([rv.csrrwi(0, 0x340, 0x15), rv.csrrsi(1, 0x340, 0x02), rv.csrrci(2, 0x340, 0x01), rv.csrrs(3, 0x340, 0)])
  t.same([c.hart.x[1], c.hart.x[2], c.hart.x[3]], [0x15, 0x17, 0x16])
  // a timer interrupt pending and enabled: taken before the next instruction, at an exact count
  const i = new Machine({ image: elf([...li(1, BASE + 0x40), rv.csrrw(0, 0x305, 1), rv.addi(1, 0, 0x80), rv.csrrs(0, 0x304, 1), rv.addi(5, 0, 1), rv.addi(5, 0, 2), rv.addi(5, 0, 3), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.addi(0, 0, 0), rv.csrrs(20, 0x342, 0), rv.jal(0, 0)]), memory: 1 << 20 })
  i.hart.run(6) // mtvec, mie.MTIE, one addi
  i.hart.setPending(IRQ.MTI, true)
  i.hart.run(7) // MIE is still off: not taken
  t.equal(i.hart.x[5], 2, 'no interrupt while mstatus.MIE is clear')
  i.hart.mstatus |= 8
  i.hart.run(9)
  t.equal(i.hart.x[5], 2, 'taken at the start of the run, before the next instruction')
  t.equal(u(i.hart.x[20]), 0x80000007, 'mcause: machine timer interrupt')
  t.equal(u(i.hart.mepc), BASE + 28, "mepc: the instruction not yet run")
})

t.test('traps: illegal, misaligned, access faults; with no handler the hart stops and says why', async (t) => {
  const stop = (words: number[]) => {
    const m = new Machine({ image: elf(words), memory: 1 << 20 })
    const r = m.hart.run(100)
    return { r, fault: m.hart.fault }
  }
  let s = stop([0xffffffff])
  t.equal(s.r, 'fault')
  t.equal(s.fault?.cause, CAUSE.ILLEGAL)
  t.match(s.fault?.message, /illegal instruction at pc 0x80000000 \(mtval 0xffffffff\) with no trap handler/)
  // misaligned accesses: performed in RAM (as qemu does), trapped at a device
  s = stop([...li(1, 0x10000001), rv.lw(2, 1, 0)])
  t.equal(s.fault?.cause, CAUSE.LOAD_MISALIGNED)
  t.equal(s.fault?.tval, 0x10000001)
  s = stop([...li(1, 0x10000002), rv.sw(2, 1, 0)])
  t.equal(s.fault?.cause, CAUSE.STORE_MISALIGNED)
  s = stop([...li(1, BASE + (1 << 20) - 2), rv.lw(2, 1, 0)])
  t.equal(s.fault?.cause, CAUSE.LOAD_ACCESS, 'a misaligned load running past the end of RAM')
  s = stop([...li(1, 0x40000000), rv.lw(2, 1, 0)])
  t.equal(s.fault?.cause, CAUSE.LOAD_ACCESS, 'a load from nowhere')
  s = stop([...li(1, 0x40000000), rv.sw(2, 1, 0)])
  t.equal(s.fault?.cause, CAUSE.STORE_ACCESS)
  s = stop([...li(1, 0x40000000), rv.jalr(0, 1, 0)])
  t.equal(s.fault?.cause, CAUSE.INSN_ACCESS, 'a jump to nowhere')
  s = stop([rv.jal(0, 6)])
  t.equal(s.fault?.cause, CAUSE.INSN_MISALIGNED)
  s = stop([rv.csrrw(1, 0x7c0, 0)])
  t.equal(s.fault?.cause, CAUSE.ILLEGAL, 'an unknown CSR')
  s = stop([rv.csrrw(1, 0xc00, 1)])
  t.equal(s.fault?.cause, CAUSE.ILLEGAL, 'a write to a read-only CSR')
  // with a handler, the same illegal instruction goes to it
  const words = [...li(1, BASE + 0x20), rv.csrrw(0, 0x305, 1), 0xffffffff, 0, 0, 0, 0, rv.csrrs(10, 0x343, 0), rv.jal(0, 0)]
  const m = new Machine({ image: elf(words), memory: 1 << 20 })
  m.hart.run(6)
  t.equal(u(m.hart.x[10]), 0xffffffff, 'mtval holds the instruction')
  t.equal(m.hart.fault, null)
})

t.test('WFI stops the run for the host unless an interrupt is pending', async (t) => {
  const m = new Machine({ image: elf([rv.wfi(), rv.addi(1, 0, 1), rv.jal(0, 0)]), memory: 1 << 20 })
  t.equal(m.hart.run(10), 'wfi')
  t.equal(m.hart.instret, 1, 'WFI retires')
  t.equal(m.hart.x[1], 0)
  t.equal(m.hart.run(3), 'limit')
  t.equal(m.hart.x[1], 1)
})

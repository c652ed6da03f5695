import { Hart, muldiv, mulhu, type Bus, type SliceDeadline, type StopReason } from './hart.js'
import { Memory, PAGE_SHIFT } from './memory.js'

/**
 * The block-translating engine (SPEC.md §Engines): the same hart as the interpreter, faster. Each
 * block — straight-line code up to a branch, JAL or JALR, at most MAX_BLOCK instructions, within
 * one page — becomes one JavaScript function with the guest registers as locals.
 *
 * Exactness, so that a log recorded under either engine replays under the other:
 * - a block runs only when its whole count fits before the slice's limit; otherwise the
 *   interpreter runs the rest of the slice (fewer than MAX_BLOCK instructions);
 * - what a block cannot do on its own — SYSTEM instructions, illegal encodings, device (MMIO)
 *   accesses, misaligned or out-of-RAM accesses, a JALR to a misaligned address — it leaves to
 *   the interpreter at that very instruction (a side exit), for exactly one instruction, without
 *   the interrupt check `Hart.run` makes on entry: interrupts are taken where the interpreter
 *   takes them;
 * - a store over compiled code, by the CPU or a device's DMA, invalidates every block holding
 *   that word (word granularity: `.text` and `.bss` may share a page), and a block whose store did
 *   so returns right after the store;
 * - only a pc reached by a control transfer (or after a side exit) starts a block: a slice ending
 *   mid-block does not make its successor an entry.
 */
export const MAX_BLOCK = 64

/**
 * A block's first COLD_CALLS runs are held to COLD_BUDGET instructions each (at least eight
 * passes of the longest block), so that V8 sees a looping block leave its loop and run the code
 * after it (the registers written back, the exit recorded) with feedback, before it compiles the
 * loop. A block's every exit goes through that code. Otherwise a first run that loops for most of
 * a slice gets its loop compiled on the stack (OSR; V8 allocates a function's feedback only after
 * it has run a while, so even one short first run is not enough) before the code after the loop
 * has ever run with feedback: the optimized loop leaves through a deoptimization, and V8 (Node 20)
 * keeps that code and enters it again on every later call, deoptimizing each time. That cost a
 * `cpu10` run ~1 700 deoptimizations and 3–7 % of its speed, in about two runs out of three
 * (whichever won the race between the compile and the loop's first exit).
 */
const COLD_CALLS = 4
const COLD_BUDGET = 8 * MAX_BLOCK

/**
 * A slice with a deadline looks at the clock every DEADLINE_INSTRUCTIONS instructions (~50 µs of
 * warm code; a block that loops is run that many at a time) or DEADLINE_RUNS block runs, whichever
 * comes first (a block compiled counts COMPILE_WEIGHT runs): cold code, translated as it goes,
 * runs few instructions per ms.
 */
const DEADLINE_INSTRUCTIONS = 50_000
const DEADLINE_RUNS = 2048
const COMPILE_WEIGHT = 32
/**
 * An untimed slice's block-run count between looks (which, untimed, do nothing): a small integer
 * like a timed one's, not Infinity. With Infinity in these counters, V8 kept them as doubles in the
 * optimized loop wherever its first calls were untimed (an FT backup's first slices end at the
 * log's horizon, not at their length), and the dispatch loop ran ~10 % slower for the whole run:
 * a backup's run took 1.10x its primary's CPU (median of 5 alternating pairs), 1.03x without.
 */
const UNTIMED_RUNS = 1 << 30

type BlockFn = (x: Int32Array, budget: number) => number

interface Block {
  pc: number
  /** instructions in one pass */
  n: number
  /** null: the instruction at `pc` is one for the interpreter (remembered, so as not to retry) */
  fn: BlockFn | null
  valid: boolean
  /** first and last word of the block within its page */
  page: number
  w0: number
  w1: number
  /** the last two successors (chaining) */
  s0pc: number
  s0: Block | null
  s1pc: number
  s1: Block | null
  /** runs left that are held to COLD_BUDGET */
  cold: number
}

/** What a block function reports besides its count: where to go on, and whether the interpreter must run that instruction. */
interface Exit {
  pc: number
  side: number
}

const reg = (i: number) => (i === 0 ? '0' : `r${i}`)

export class JitHart extends Hart {
  private readonly blocks = new Map<number, Block>()
  private readonly pageBlocks: (Block[] | undefined)[]
  /** per page with code: how many blocks hold each word */
  private readonly pageWords: (Uint8Array | undefined)[]
  private readonly exit: Exit = { pc: 0, side: 0 }
  /** binds a block's source to this memory (typed arrays as closure constants) */
  private readonly make: (body: string) => BlockFn
  /** blocks compiled and invalidated since the hart was made (tests, the bench) */
  readonly stats = { compiled: 0, invalidated: 0 }

  constructor(mem: Memory, bus: Bus, readTime: (high: boolean) => number) {
    super(mem, bus, readTime)
    this.pageBlocks = new Array(mem.pages)
    this.pageWords = new Array(mem.pages)
    mem.codeWatch = (offset, length) => this.invalidate(offset, length)
    const exit = this.exit
    this.make = (body) =>
      // eslint-disable-next-line @typescript-eslint/no-implied-eval
      new Function('i32', 'u8', 'i8', 'u16', 'i16', 'watch', 'size', 'mem', 'exit', 'muldiv', 'mulhu', `return function (x, budget) {\n${body}\n}`)(
        mem.i32,
        mem.bytes,
        mem.i8,
        mem.u16,
        mem.i16,
        mem.watch,
        mem.size,
        mem,
        exit,
        muldiv,
        mulhu,
      ) as BlockFn
  }

  override run(limit: number, soft = false, deadline?: SliceDeadline): StopReason {
    if (this.fault) return 'fault'
    this.stopRequested = false
    // a pc the slice starts at is an entry only when an interrupt put it there
    let entry = this.takeInterrupt()
    const exit = this.exit
    let prev: Block | null = null
    // the next look at the deadline: at this count, or after this many block runs (untimed: at the
    // limit, and every UNTIMED_RUNS runs, when it only resets them)
    const timed = soft && deadline !== undefined
    let lookAt = timed ? this.instret + DEADLINE_INSTRUCTIONS : limit
    let runs = timed ? DEADLINE_RUNS : UNTIMED_RUNS
    for (;;) {
      const budget = limit - this.instret
      if (budget <= 0) return 'limit'
      // past its deadline, a soft slice ends here, at a block boundary, as at its length
      if (this.instret >= lookAt || --runs <= 0) {
        if (timed && deadline!.now() >= deadline!.at) return 'limit'
        lookAt = timed ? this.instret + DEADLINE_INSTRUCTIONS : limit
        runs = timed ? DEADLINE_RUNS : UNTIMED_RUNS
      }
      const pc = this.pc
      let b: Block | null | undefined = null
      if (prev !== null) {
        b = prev.s0pc === pc ? prev.s0 : prev.s1pc === pc ? prev.s1 : null
        if (b !== null && !b.valid) b = null
      }
      if (b === null) {
        b = this.blocks.get(pc)
        if (b === undefined) {
          b = entry ? this.compile(pc) : null
          runs -= COMPILE_WEIGHT
        }
        if (b !== null && prev !== null) {
          prev.s1pc = prev.s0pc
          prev.s1 = prev.s0
          prev.s0pc = pc
          prev.s0 = b
        }
      }
      if (b === null || b.fn === null) {
        // not a block here: one instruction by the interpreter
        const r = this.interpret(this.instret + 1)
        if (r !== 'limit') return r
        entry = entry || this.pc !== ((pc + 4) | 0)
        prev = null
        continue
      }
      // the block does not fit: the rest of the slice by the interpreter, or (soft) the slice ends here
      if (b.n > budget) return soft ? 'limit' : this.interpret(limit)
      // a block that loops goes round only up to the next look at the deadline (at least one pass)
      const upTo = lookAt - this.instret
      const runBudget = upTo >= budget ? budget : upTo > b.n ? upTo : b.n
      if (b.cold === 0) this.instret += b.fn(this.x, runBudget)
      else {
        b.cold--
        this.instret += b.fn(this.x, Math.min(runBudget, COLD_BUDGET))
      }
      this.pc = exit.pc
      if (exit.side) {
        const r = this.interpret(this.instret + 1)
        if (r !== 'limit') return r
        entry = true
        prev = null
        continue
      }
      entry = true
      prev = b
    }
  }

  /** A store to RAM [offset, offset+length) within one page: drops the blocks holding those words. */
  private invalidate(offset: number, length: number): boolean {
    const page = offset >>> PAGE_SHIFT
    const words = this.pageWords[page]
    if (!words) return false
    const w0 = (offset & ((1 << PAGE_SHIFT) - 1)) >>> 2
    const w1 = ((offset + length - 1 - (page << PAGE_SHIFT)) >>> 2) | 0
    let hit = false
    for (let w = w0; w <= w1 && w < words.length; w++) if (words[w]) hit = true
    if (!hit) return false
    const keep: Block[] = []
    for (const b of this.pageBlocks[page]!) {
      if (b.w0 <= w1 && b.w1 >= w0) {
        b.valid = false
        this.blocks.delete(b.pc)
        for (let w = b.w0; w <= b.w1; w++) words[w]--
        this.stats.invalidated++
      } else keep.push(b)
    }
    if (keep.length === 0) {
      this.pageBlocks[page] = undefined
      this.pageWords[page] = undefined
      this.mem.setCode(page, false)
    } else this.pageBlocks[page] = keep
    return true
  }

  /**
   * The block starting at `pc` (one without a function when its first instruction is one for the
   * interpreter), or null outside RAM.
   */
  private compile(pc: number): Block | null {
    const mem = this.mem
    const off = (pc ^ 0x80000000) >>> 0
    if (off >= mem.size || pc & 3) return null
    const page = off >>> PAGE_SHIFT
    const used = new Set<number>()
    const written = new Set<number>()
    const code: string[] = []
    let n = 0
    let p = pc
    let ended = false
    let lo = off
    let hi = off
    const inPage = (q: number) => ((q ^ 0x80000000) >>> 0) >>> PAGE_SHIFT === page
    while (n < MAX_BLOCK && inPage(p)) {
      const o = (p ^ 0x80000000) >>> 0
      const s = this.translate(mem.i32[o >>> 2], p, n, pc, used, written)
      if (s === null) break
      lo = Math.min(lo, o)
      hi = Math.max(hi, o)
      code.push(`// ${n}: 0x${(p >>> 0).toString(16)}\n${s.code}`)
      n++
      // a direct jump within the page is followed (the block goes on at its target)
      p = s.goto !== undefined && inPage(s.goto) && s.goto !== pc ? s.goto : (p + 4) | 0
      if (s.ends && s.goto === undefined) {
        ended = true
        break
      }
      if (s.goto !== undefined && p !== s.goto) {
        code.push(`n += ${n}; e = ${s.goto}; ${s.goto === pc ? `if (budget - n >= ${'$'}{N}) continue; ` : ''}break body;`)
        ended = true
        break
      }
    }
    if (n === 0) return this.register({ pc, n: 0, fn: null, valid: true, page, w0: (off & 0xfff) >>> 2, w1: (off & 0xfff) >>> 2, s0pc: 0, s0: null, s1pc: 0, s1: null, cold: COLD_CALLS })
    if (!ended) code.push(`n += ${n}; e = ${p}; break body;`)
    const regs = [...used].sort((a, b) => a - b)
    const body = [
      regs.length ? `let ${regs.map((r) => `r${r} = x[${r}]`).join(', ')};` : '',
      'let n = 0, k = 0, e = 0, s = 0, a = 0, o = 0, t = 0;',
      'body: for (;;) {',
      ...code.map((c) => c.replaceAll('${N}', String(n))),
      '}',
      [...written].map((r) => `x[${r}] = r${r};`).join(' '),
      'exit.pc = e;',
      'exit.side = s;',
      'return n + k;',
    ].join('\n')
    this.stats.compiled++
    return this.register({ pc, n, fn: this.make(body), valid: true, page, w0: (lo & 0xfff) >>> 2, w1: (hi & 0xfff) >>> 2, s0pc: 0, s0: null, s1pc: 0, s1: null, cold: COLD_CALLS })
  }

  /** Files a block under its pc and the words it holds (a store to any of them invalidates it). */
  private register(b: Block): Block {
    const page = b.page
    const mem = this.mem
    let words = this.pageWords[page]
    if (!words) {
      words = this.pageWords[page] = new Uint8Array(1 << (PAGE_SHIFT - 2))
      this.pageBlocks[page] = []
      mem.setCode(page, true)
    }
    for (let w = b.w0; w <= b.w1; w++) words[w]++
    this.pageBlocks[page]!.push(b)
    this.blocks.set(b.pc, b)
    return b
  }

  /**
   * One instruction as JavaScript (`ends`: it transfers control and closes the block), or null
   * for one the block must leave to the interpreter (the block ends before it).
   */
  private translate(inst: number, pc: number, i: number, entry: number, used: Set<number>, written: Set<number>): { code: string; ends?: boolean; goto?: number } | null {
    const rd = (inst >>> 7) & 31
    const rs1 = (inst >>> 15) & 31
    const rs2 = (inst >>> 20) & 31
    const f3 = (inst >>> 12) & 7
    const f7 = inst >>> 25
    const next = (pc + 4) | 0
    const r = (x: number) => {
      if (x) used.add(x)
      return reg(x)
    }
    const set = (expr: string) => {
      if (!rd) return ''
      used.add(rd)
      written.add(rd)
      return `r${rd} = ${expr};`
    }
    // a side exit: the interpreter runs this instruction
    const side = `{ s = 1; e = ${pc}; k = ${i}; break body; }`
    switch (inst & 0x7f) {
      case 0x37:
        return { code: set(String(inst & 0xfffff000)) }
      case 0x17:
        return { code: set(String((pc + (inst & 0xfffff000)) | 0)) }
      case 0x13: {
        const imm = inst >> 20
        const a = r(rs1)
        const sh = imm & 31
        switch (f3) {
          case 0:
            return { code: set(`(${a} + ${imm}) | 0`) }
          case 1:
            return f7 === 0 ? { code: set(`${a} << ${sh}`) } : null
          case 2:
            return { code: set(`${a} < ${imm} ? 1 : 0`) }
          case 3:
            return { code: set(`${a} >>> 0 < ${imm >>> 0} ? 1 : 0`) }
          case 4:
            return { code: set(`${a} ^ ${imm}`) }
          case 5:
            return f7 === 0 ? { code: set(`(${a} >>> ${sh}) | 0`) } : f7 === 0x20 ? { code: set(`${a} >> ${sh}`) } : null
          case 6:
            return { code: set(`${a} | ${imm}`) }
          default:
            return { code: set(`${a} & ${imm}`) }
        }
      }
      case 0x33: {
        const a = r(rs1)
        const b = r(rs2)
        if (f7 === 0) {
          const ops = [`(${a} + ${b}) | 0`, `${a} << ${b}`, `${a} < ${b} ? 1 : 0`, `${a} >>> 0 < ${b} >>> 0 ? 1 : 0`, `${a} ^ ${b}`, `(${a} >>> ${b}) | 0`, `${a} | ${b}`, `${a} & ${b}`]
          return { code: set(ops[f3]) }
        }
        if (f7 === 0x20 && f3 === 0) return { code: set(`(${a} - ${b}) | 0`) }
        if (f7 === 0x20 && f3 === 5) return { code: set(`${a} >> ${b}`) }
        if (f7 === 1) {
          // as muldiv's cases, inline: the ISA's results for division by zero and overflow
          const m = [
            `Math.imul(${a}, ${b})`,
            `muldiv(1, ${a}, ${b})`,
            `muldiv(2, ${a}, ${b})`,
            `mulhu(${a} >>> 0, ${b} >>> 0)`,
            `${b} === 0 ? -1 : ${a} === -0x80000000 && ${b} === -1 ? ${a} : (${a} / ${b}) | 0`,
            `${b} === 0 ? -1 : ((${a} >>> 0) / (${b} >>> 0)) | 0`,
            `${b} === 0 ? ${a} : ${a} === -0x80000000 && ${b} === -1 ? 0 : ${a} % ${b} | 0`,
            `${b} === 0 ? ${a} : (${a} >>> 0) % (${b} >>> 0) | 0`,
          ]
          return { code: set(m[f3]) }
        }
        return null
      }
      case 0x03: {
        if (f3 === 3 || f3 > 5) return null
        const w = f3 & 3
        const view = ['i8[o]', 'i16[o >>> 1]', 'i32[o >>> 2]', '', 'u8[o]', 'u16[o >>> 1]'][f3]
        const check = w ? `(o & ${(1 << w) - 1}) !== 0 || o >= size` : 'o >= size'
        return { code: `a = (${r(rs1)} + ${inst >> 20}) | 0; o = (a ^ 0x80000000) >>> 0;\nif (${check}) ${side}\n${set(view)}` }
      }
      case 0x23: {
        if (f3 > 2) return null
        const imm = ((inst >> 25) << 5) | ((inst >>> 7) & 31)
        const v = r(rs2)
        const store = ['u8[o] = ', 'u16[o >>> 1] = ', 'i32[o >>> 2] = '][f3] + v + ';'
        const check = f3 ? `(o & ${(1 << f3) - 1}) !== 0 || o >= size` : 'o >= size'
        return {
          code:
            `a = (${r(rs1)} + ${imm}) | 0; o = (a ^ 0x80000000) >>> 0;\nif (${check}) ${side}\n` +
            // the slow path first (dirty map, first-write hook), then the bytes; over code: leave after the store
            `if (watch[o >>> ${PAGE_SHIFT}] !== 0 && mem.touch(o >>> ${PAGE_SHIFT}, o, ${1 << f3})) { ${store} n += ${i + 1}; e = ${next}; break body; }\n${store}`,
        }
      }
      case 0x63: {
        const ops = ['===', '!==', '', '', '<', '>=', '<', '>=']
        if (f3 === 2 || f3 === 3) return null
        const imm = ((inst >> 31) << 12) | (((inst >>> 7) & 1) << 11) | (((inst >>> 25) & 0x3f) << 5) | (((inst >>> 8) & 0xf) << 1)
        const target = (pc + imm) | 0
        if (target & 3) return null
        const a = f3 >= 6 ? `${r(rs1)} >>> 0` : r(rs1)
        const b = f3 >= 6 ? `${r(rs2)} >>> 0` : r(rs2)
        // both ways out share one path (no code that has run only one way, so none that a first run the
        // other way deoptimizes); a way back to the block's own start — the branch's target, or its
        // fall-through when the block followed a jump back to a loop's test — goes round while the
        // budget allows (${N}, the block's length, is filled in when it is known)
        const loop = target === entry || next === entry ? `if ((e === ${entry}) & (budget - n >= ${'$'}{N})) continue;` : ''
        return { code: `n += ${i + 1}; e = ${a} ${ops[f3]} ${b} ? ${target} : ${next}; ${loop} break body;`, ends: true }
      }
      case 0x6f: {
        const imm = ((inst >> 31) << 20) | (((inst >>> 12) & 0xff) << 12) | (((inst >>> 20) & 1) << 11) | (((inst >>> 21) & 0x3ff) << 1)
        const target = (pc + imm) | 0
        if (target & 3) return null
        return { code: set(String(next)), ends: true, goto: target }
      }
      case 0x67: {
        if (f3 !== 0) return null
        return { code: `t = (${r(rs1)} + ${inst >> 20}) & -2;\nif ((t & 3) !== 0) ${side}\n${set(String(next))}\nn += ${i + 1}; e = t; break body;`, ends: true }
      }
      case 0x0f:
        // FENCE, FENCE.I: no-ops (a store over code invalidates it at once)
        return f3 > 1 ? null : { code: '' }
      default:
        return null
    }
  }
}

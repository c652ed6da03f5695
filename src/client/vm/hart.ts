import { Memory, PAGE_SHIFT } from './memory.js'

/**
 * One machine-mode RV32IM + Zicsr hart (privileged spec 1.12, M-mode only).
 *
 * `run(limit)` executes instructions until `instret` reaches `limit` or something needs the host:
 * WFI with nothing pending, a device asking for attention (`requestStop`), or an exception
 * with no trap vector set. Interrupts are only taken at the start of `run` and after an
 * instruction that can enable one (CSR writes, MRET): between those points `mip` cannot
 * change, because the host changes it only between runs. That keeps the inner loop free of
 * per-instruction checks and makes every interrupt land at an exact retired-instruction count.
 */

export interface Bus {
  /** a load outside RAM; `undefined` is an access fault */
  load(addr: number, size: 1 | 2 | 4, hart: Hart): number | undefined
  /** a store outside RAM; `false` is an access fault */
  store(addr: number, size: 1 | 2 | 4, value: number, hart: Hart): boolean
}

/** When a live slice is to end at the latest, on the run's clock (Hart.run). */
export interface SliceDeadline {
  at: number
  now: () => number
}

export type StopReason = 'limit' | 'wfi' | 'device' | 'fault'

// mcause values
export const CAUSE = {
  INSN_MISALIGNED: 0,
  INSN_ACCESS: 1,
  ILLEGAL: 2,
  BREAKPOINT: 3,
  LOAD_MISALIGNED: 4,
  LOAD_ACCESS: 5,
  STORE_MISALIGNED: 6,
  STORE_ACCESS: 7,
  ECALL_M: 11,
} as const
export const IRQ = { MSI: 3, MTI: 7, MEI: 11 } as const
const INTERRUPT = 0x80000000 | 0
const MSTATUS_MIE = 1 << 3
const MSTATUS_MPIE = 1 << 7
const MSTATUS_MPP = 3 << 11
const MIP_WRITABLE = 0 // MTIP, MEIP and MSIP are set by devices (MSIP through the CLINT)
const MIE_MASK = (1 << IRQ.MSI) | (1 << IRQ.MTI) | (1 << IRQ.MEI)
/** misa: MXL=1 (32-bit), extensions I and M */
const MISA = (1 << 30) | (1 << 8) | (1 << 12)

const CAUSE_NAMES: Record<number, string> = {
  0: 'instruction address misaligned',
  1: 'instruction access fault',
  2: 'illegal instruction',
  3: 'breakpoint',
  4: 'load address misaligned',
  5: 'load access fault',
  6: 'store address misaligned',
  7: 'store access fault',
  11: 'environment call from M-mode',
}
export const causeName = (c: number) => CAUSE_NAMES[c] ?? `cause ${c}`

/** A trap the guest cannot handle (no trap vector): the machine stops with this description. */
export interface Fault {
  cause: number
  pc: number
  tval: number
  message: string
}

export function mulhu(a: number, b: number): number {
  const al = a & 0xffff
  const ah = a >>> 16
  const bl = b & 0xffff
  const bh = b >>> 16
  const ll = al * bl
  const lh = al * bh
  const hl = ah * bl
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff)
  return (ah * bh + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 65536)) | 0
}

/** ADD, SLL, SLT, SLTU, XOR, SRL, OR, AND by funct3 (register or immediate operand). */
function alu(f3: number, a: number, b: number): number {
  switch (f3) {
    case 0:
      return (a + b) | 0
    case 1:
      return a << (b & 31)
    case 2:
      return a < b ? 1 : 0
    case 3:
      return a >>> 0 < b >>> 0 ? 1 : 0
    case 4:
      return a ^ b
    case 5:
      return a >>> (b & 31)
    case 6:
      return a | b
    default:
      return a & b
  }
}

/** The M extension by funct3, with the ISA's results for division by zero and overflow. */
export function muldiv(f3: number, a: number, b: number): number {
  switch (f3) {
    case 0:
      return Math.imul(a, b)
    case 1: // MULH
      return (mulhu(a >>> 0, b >>> 0) - (a < 0 ? b : 0) - (b < 0 ? a : 0)) | 0
    case 2: // MULHSU
      return (mulhu(a >>> 0, b >>> 0) - (a < 0 ? b : 0)) | 0
    case 3:
      return mulhu(a >>> 0, b >>> 0)
    case 4: // DIV
      return b === 0 ? -1 : a === -0x80000000 && b === -1 ? a : (a / b) | 0
    case 5: // DIVU
      return b === 0 ? -1 : ((a >>> 0) / (b >>> 0)) | 0
    case 6: // REM
      return b === 0 ? a : a === -0x80000000 && b === -1 ? 0 : a % b | 0
    default: // REMU
      return b === 0 ? a : (a >>> 0) % (b >>> 0) | 0
  }
}

export class Hart {
  readonly x = new Int32Array(32)
  pc = 0
  /** retired instructions (minstret), exact; a JS number is exact up to 2^53 */
  instret = 0
  mstatus = 0
  mie = 0
  mip = 0
  mtvec = 0
  mepc = 0
  mcause = 0
  mtval = 0
  mscratch = 0
  /**
   * What a guest's write to `mcycle`/`minstret` adds to the deterministic count, modulo 2^64, as
   * unsigned low and high words (0 until the guest writes one: SPEC.md §Hart).
   */
  readonly counterOffset = { mcycle: [0, 0], minstret: [0, 0] }
  fault: Fault | null = null
  protected stopRequested = false

  constructor(
    readonly mem: Memory,
    readonly bus: Bus,
    /** reads of the `time`/`timeh` CSRs go to the timer device */
    readonly readTime: (high: boolean) => number,
  ) {}

  /** A device asks the run loop to return to the host after the current instruction. */
  requestStop(): void {
    this.stopRequested = true
  }

  /** Sets or clears an interrupt-pending bit (devices; the host calls this between runs). */
  setPending(irq: number, on: boolean): void {
    if (on) this.mip |= 1 << irq
    else this.mip &= ~(1 << irq)
  }

  /** Takes a pending, enabled interrupt now, if any (priority MEI > MSI > MTI). */
  protected takeInterrupt(): boolean {
    if (!(this.mstatus & MSTATUS_MIE)) return false
    const p = this.mip & this.mie
    if (!p) return false
    const irq = p & (1 << IRQ.MEI) ? IRQ.MEI : p & (1 << IRQ.MSI) ? IRQ.MSI : IRQ.MTI
    this.enterTrap(INTERRUPT | irq, this.pc, 0)
    return true
  }

  private enterTrap(cause: number, epc: number, tval: number): void {
    this.mepc = epc
    this.mcause = cause
    this.mtval = tval
    const mie = (this.mstatus & MSTATUS_MIE) !== 0
    this.mstatus = (this.mstatus & ~(MSTATUS_MIE | MSTATUS_MPIE)) | (mie ? MSTATUS_MPIE : 0) | MSTATUS_MPP
    const base = this.mtvec & ~3
    this.pc = (this.mtvec & 1 && cause < 0 ? base + 4 * (cause & 0x7fffffff) : base) | 0
  }

  /** An exception: into the guest's handler, or, with no handler set, a stop naming the fault. */
  private exception(cause: number, pc: number, tval: number): boolean {
    if ((this.mtvec & ~3) === 0 || this.mem.offsetOf(this.mtvec & ~3, 4) < 0) {
      this.pc = pc
      const hex = (n: number) => '0x' + (n >>> 0).toString(16).padStart(8, '0')
      this.fault = { cause, pc: pc >>> 0, tval: tval >>> 0, message: `${causeName(cause)} at pc ${hex(pc)} (mtval ${hex(tval)}) with no trap handler (mtvec ${hex(this.mtvec)})` }
      return false
    }
    this.enterTrap(cause, pc, tval)
    return true
  }

  private csrRead(csr: number): number | undefined {
    switch (csr) {
      case 0x300:
        return this.mstatus
      case 0x301:
        return MISA
      case 0x304:
        return this.mie
      case 0x305:
        return this.mtvec
      case 0x340:
        return this.mscratch
      case 0x341:
        return this.mepc
      case 0x342:
        return this.mcause
      case 0x343:
        return this.mtval
      case 0x344:
        return this.mip
      case 0xf11: // mvendorid, marchid, mimpid, mhartid
      case 0xf12:
      case 0xf13:
      case 0xf14:
        return 0
      case 0xb00: // mcycle and minstret: the count, plus what the guest wrote (one cycle per instruction)
      case 0xc00:
        return this.counter(this.counterOffset.mcycle, this.instret, false)
      case 0xb02:
      case 0xc02:
        return this.counter(this.counterOffset.minstret, this.instret, false)
      case 0xb80:
      case 0xc80:
        return this.counter(this.counterOffset.mcycle, this.instret, true)
      case 0xb82:
      case 0xc82:
        return this.counter(this.counterOffset.minstret, this.instret, true)
      case 0x7a0: // tselect, tdata1-3: no triggers (tdata1 type 0), writes ignored
      case 0x7a1:
      case 0x7a2:
      case 0x7a3:
        return 0
      case 0x7a4: // tinfo: only type 0 ("none") is supported
        return 1
      case 0xc01:
        return this.readTime(false)
      case 0xc81:
        return this.readTime(true)
      default:
        // pmpcfg0-3, pmpaddr0-15: no PMP entries implemented (WARL: read 0, writes ignored)
        return (csr >= 0x3a0 && csr <= 0x3a3) || (csr >= 0x3b0 && csr <= 0x3bf) ? 0 : undefined
    }
  }

  /** A counter's low or high word at count `at`: `at` plus the offset, modulo 2^64. */
  private counter(off: number[], at: number, high: boolean): number {
    const lo = (at % 4294967296) + off[0]
    if (!high) return lo | 0
    return (Math.floor(at / 4294967296) + off[1] + (lo >= 4294967296 ? 1 : 0)) | 0
  }

  /** A guest write of word `v` to a counter: the next instruction (count instret + 1) reads it. */
  private writeCounter(off: number[], high: boolean, v: number): void {
    const at = this.instret + 1
    const cur = (BigInt(this.counter(off, at, true) >>> 0) << 32n) | BigInt(this.counter(off, at, false) >>> 0)
    const want = high ? (BigInt(v >>> 0) << 32n) | (cur & 0xffffffffn) : (cur & ~0xffffffffn) | BigInt(v >>> 0)
    const d = BigInt.asUintN(64, want - BigInt(at))
    off[0] = Number(d & 0xffffffffn)
    off[1] = Number(d >> 32n)
  }

  /** false: not a writable CSR (illegal instruction) */
  private csrWrite(csr: number, v: number): boolean {
    switch (csr) {
      case 0x300:
        this.mstatus = (v & (MSTATUS_MIE | MSTATUS_MPIE)) | MSTATUS_MPP
        return true
      case 0x301:
        return true // misa: WARL, fixed
      case 0x304:
        this.mie = v & MIE_MASK
        return true
      case 0x305:
        this.mtvec = v & ~2
        return true
      case 0x340:
        this.mscratch = v
        return true
      case 0x341:
        this.mepc = v & ~3
        return true
      case 0x342:
        this.mcause = v
        return true
      case 0x343:
        this.mtval = v
        return true
      case 0x344:
        this.mip = (this.mip & ~MIP_WRITABLE) | (v & MIP_WRITABLE)
        return true
      case 0xb00:
      case 0xb80:
        this.writeCounter(this.counterOffset.mcycle, csr === 0xb80, v)
        return true
      case 0xb02:
      case 0xb82:
        this.writeCounter(this.counterOffset.minstret, csr === 0xb82, v)
        return true
      case 0x7a0: // tselect, tdata1-3: writes ignored (no triggers)
      case 0x7a1:
      case 0x7a2:
      case 0x7a3:
        return true
      default:
        return (csr >= 0x3a0 && csr <= 0x3a3) || (csr >= 0x3b0 && csr <= 0x3bf) // PMP: writes ignored
    }
  }

  /**
   * Runs until `instret` reaches `limit` or a stop (see the class comment). Returns why it stopped.
   * `soft`: the limit is only where the slice's length ends it, and an engine that runs code in
   * blocks may stop at the last block boundary before it ('limit' with `instret` below `limit`)
   * instead of stepping through the rest one instruction at a time. The interpreter stops at `limit`.
   * `deadline` (with `soft`): an engine that runs code in blocks may also stop at a block boundary
   * once `deadline.now()` reaches `deadline.at` (a slice whose code turned slower than its length
   * was sized for); the interpreter does not look.
   */
  // eslint-disable-next-line @typescript-eslint/no-unused-vars
  run(limit: number, soft = false, deadline?: SliceDeadline): StopReason {
    if (this.fault) return 'fault'
    this.stopRequested = false
    this.takeInterrupt()
    return this.interpret(limit)
  }

  /**
   * The interpreter's loop: `run` without its entry (no stop reset, no interrupt check), so that
   * another engine can step through it without taking an interrupt the interpreter would not take.
   */
  protected interpret(limit: number): StopReason {
    const x = this.x
    const mem = this.mem
    const i32 = mem.i32
    const u8 = mem.bytes
    const i8 = mem.i8
    const u16 = mem.u16
    const i16 = mem.i16
    const watch = mem.watch
    const size = mem.size
    const bus = this.bus
    let pc = this.pc | 0
    let n = 0
    let budget = limit - this.instret
    let reason: StopReason = 'limit'
    outer: while (n < budget) {
      const off = (pc ^ 0x80000000) >>> 0
      if (off >= size) {
        if (!this.exception(CAUSE.INSN_ACCESS, pc, pc)) {
          reason = 'fault'
          break
        }
        pc = this.pc
        continue
      }
      const inst = i32[off >>> 2]
      const rd = (inst >>> 7) & 31
      const rs1 = (inst >>> 15) & 31
      const f3 = (inst >>> 12) & 7
      let next = (pc + 4) | 0
      // An exception sets `cause` and `tval` and leaves `exec`; it is taken below.
      let cause = -1
      let tval = 0
      exec: switch (inst & 0x7f) {
        case 0x37: // LUI
          if (rd) x[rd] = inst & 0xfffff000
          break
        case 0x17: // AUIPC
          if (rd) x[rd] = (pc + (inst & 0xfffff000)) | 0
          break
        case 0x6f: {
          // JAL
          const imm = ((inst >> 31) << 20) | (((inst >>> 12) & 0xff) << 12) | (((inst >>> 20) & 1) << 11) | (((inst >>> 21) & 0x3ff) << 1)
          const target = (pc + imm) | 0
          if (target & 3) {
            cause = CAUSE.INSN_MISALIGNED
            tval = target
            break exec
          }
          if (rd) x[rd] = next
          next = target
          break
        }
        case 0x67: {
          // JALR
          if (f3 !== 0) {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          const target = ((x[rs1] + (inst >> 20)) & ~1) | 0
          if (target & 3) {
            cause = CAUSE.INSN_MISALIGNED
            tval = target
            break exec
          }
          if (rd) x[rd] = next
          next = target
          break
        }
        case 0x63: {
          // branches
          const a = x[rs1]
          const b = x[(inst >>> 20) & 31]
          let taken: boolean
          switch (f3) {
            case 0:
              taken = a === b
              break
            case 1:
              taken = a !== b
              break
            case 4:
              taken = a < b
              break
            case 5:
              taken = a >= b
              break
            case 6:
              taken = a >>> 0 < b >>> 0
              break
            case 7:
              taken = a >>> 0 >= b >>> 0
              break
            default:
              cause = CAUSE.ILLEGAL
              tval = inst
              break exec
          }
          if (taken) {
            const imm = ((inst >> 31) << 12) | (((inst >>> 7) & 1) << 11) | (((inst >>> 25) & 0x3f) << 5) | (((inst >>> 8) & 0xf) << 1)
            const target = (pc + imm) | 0
            if (target & 3) {
              cause = CAUSE.INSN_MISALIGNED
              tval = target
              break exec
            }
            next = target
          }
          break
        }
        case 0x03: {
          // loads
          const addr = (x[rs1] + (inst >> 20)) | 0
          const aoff = (addr ^ 0x80000000) >>> 0
          const width = f3 & 3
          let v: number
          if (width === 3 || f3 > 5 || (f3 > 3 && width === 2)) {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          if (addr & ((1 << width) - 1)) {
            // performed in RAM, byte by byte; devices take aligned accesses only
            if (aoff >= size) {
              cause = CAUSE.LOAD_MISALIGNED
              tval = addr
              break exec
            }
            if (aoff + (1 << width) > size) {
              cause = CAUSE.LOAD_ACCESS
              tval = addr
              break exec
            }
            v = u8[aoff] | (u8[aoff + 1] << 8)
            if (width === 2) v |= (u8[aoff + 2] << 16) | (u8[aoff + 3] << 24)
            else if (f3 === 1) v = (v << 16) >> 16
            if (rd) x[rd] = v
            break
          }
          if (aoff < size) {
            switch (f3) {
              case 0:
                v = i8[aoff]
                break
              case 1:
                v = i16[aoff >>> 1]
                break
              case 2:
                v = i32[aoff >>> 2]
                break
              case 4:
                v = u8[aoff]
                break
              default:
                v = u16[aoff >>> 1]
            }
          } else {
            this.pc = pc
            this.instret += n
            budget -= n
            n = 0
            const r = bus.load(addr, (1 << width) as 1 | 2 | 4, this)
            if (r === undefined) {
              cause = CAUSE.LOAD_ACCESS
              tval = addr
              break exec
            }
            v = f3 === 0 ? (r << 24) >> 24 : f3 === 1 ? (r << 16) >> 16 : f3 === 4 ? r & 0xff : f3 === 5 ? r & 0xffff : r | 0
            if (this.stopRequested) {
              // the read asked the host to look now (a replayed input with a delivery next)
              if (rd) x[rd] = v
              pc = next
              n++
              reason = 'device'
              break outer
            }
          }
          if (rd) x[rd] = v
          break
        }
        case 0x23: {
          // stores
          const addr = (x[rs1] + (((inst >> 25) << 5) | ((inst >>> 7) & 31))) | 0
          const aoff = (addr ^ 0x80000000) >>> 0
          const v = x[(inst >>> 20) & 31]
          if (f3 > 2) {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          if (addr & ((1 << f3) - 1)) {
            // performed in RAM, byte by byte (it may span two pages); devices take aligned accesses only
            if (aoff >= size) {
              cause = CAUSE.STORE_MISALIGNED
              tval = addr
              break exec
            }
            if (aoff + (1 << f3) > size) {
              cause = CAUSE.STORE_ACCESS
              tval = addr
              break exec
            }
            mem.touchRange(aoff, 1 << f3)
            for (let i = 0; i < 1 << f3; i++) u8[aoff + i] = v >>> (8 * i)
            break
          }
          if (aoff < size) {
            const page = aoff >>> PAGE_SHIFT
            if (watch[page]) mem.touch(page, aoff, 1 << f3)
            if (f3 === 2) i32[aoff >>> 2] = v
            else if (f3 === 0) u8[aoff] = v
            else u16[aoff >>> 1] = v
          } else {
            this.pc = pc
            this.instret += n
            budget -= n
            n = 0
            if (!bus.store(addr, (1 << f3) as 1 | 2 | 4, v, this)) {
              cause = CAUSE.STORE_ACCESS
              tval = addr
              break exec
            }
            if (this.stopRequested) {
              pc = next
              n++
              reason = 'device'
              break outer
            }
          }
          break
        }
        case 0x13: {
          // OP-IMM: the ALU with the immediate (ADDI, the commonest instruction, first); shifts
          // take 5 bits and a funct7 of their own
          const imm = inst >> 20
          let v: number
          if (f3 === 0) v = (x[rs1] + imm) | 0
          else {
            const f7 = inst >>> 25
            if ((f3 === 1 && f7 !== 0) || (f3 === 5 && f7 !== 0 && f7 !== 0x20)) {
              cause = CAUSE.ILLEGAL
              tval = inst
              break exec
            }
            v = f3 === 5 && f7 === 0x20 ? x[rs1] >> (imm & 31) : alu(f3, x[rs1], imm)
          }
          if (rd) x[rd] = v
          break
        }
        case 0x33: {
          // OP, and M
          const a = x[rs1]
          const b = x[(inst >>> 20) & 31]
          const f7 = inst >>> 25
          let v: number
          if (f7 === 0) v = alu(f3, a, b)
          else if (f7 === 0x20 && (f3 === 0 || f3 === 5)) v = f3 === 0 ? (a - b) | 0 : a >> (b & 31)
          else if (f7 === 1) v = muldiv(f3, a, b)
          else {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          if (rd) x[rd] = v
          break
        }
        case 0x0f: // FENCE, FENCE.I: one hart, no caches to sync
          if (f3 > 1) {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          break
        case 0x73: {
          // SYSTEM
          if (f3 === 0) {
            if (inst === 0x00000073 || inst === 0x00100073) {
              // ECALL, EBREAK: exceptions whose mepc is this instruction
              cause = inst === 0x73 ? CAUSE.ECALL_M : CAUSE.BREAKPOINT
              tval = 0
              break exec
            }
            if (inst === 0x30200073) {
              // MRET
              const mpie = (this.mstatus & MSTATUS_MPIE) !== 0
              this.mstatus = (this.mstatus & ~MSTATUS_MIE) | (mpie ? MSTATUS_MIE : 0) | MSTATUS_MPIE
              this.pc = this.mepc
              n++
              this.takeInterrupt()
              pc = this.pc
              continue
            }
            if (inst === 0x10500073) {
              // WFI: stop for the host unless an interrupt is already pending
              n++
              pc = next
              if (this.mip & this.mie) {
                this.pc = pc
                if (this.takeInterrupt()) pc = this.pc
                continue
              }
              reason = 'wfi'
              break outer
            }
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          if (f3 === 4) {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          const csr = inst >>> 20
          const src = f3 & 4 ? rs1 : x[rs1]
          const op = f3 & 3
          this.pc = pc
          this.instret += n
          budget -= n
          n = 0
          const old = op === 1 && rd === 0 ? 0 : this.csrRead(csr)
          const writes = op === 1 || rs1 !== 0
          if (old === undefined || (writes && (csr >>> 10) === 3)) {
            cause = CAUSE.ILLEGAL
            tval = inst
            break exec
          }
          if (writes) {
            const cur = op === 1 ? 0 : (this.csrRead(csr) ?? 0)
            const v = op === 1 ? src : op === 2 ? cur | src : cur & ~src
            if (!this.csrWrite(csr, v)) {
              cause = CAUSE.ILLEGAL
              tval = inst
              break exec
            }
          }
          if (rd) x[rd] = old
          n++
          pc = next
          if (writes) {
            this.pc = pc
            if (this.takeInterrupt()) pc = this.pc
          }
          if (this.stopRequested) {
            reason = 'device'
            break outer
          }
          continue
        }
        default:
          cause = CAUSE.ILLEGAL
          tval = inst
          break exec
      }
      if (cause >= 0) {
        // the trapping instruction counts as executed, so a trap loop still reaches the limit
        n++
        if (!this.exception(cause, pc, tval)) {
          n--
          reason = 'fault'
          break
        }
        pc = this.pc
        continue
      }
      pc = next
      n++
    }
    this.pc = pc
    this.instret += n
    return reason
  }
}

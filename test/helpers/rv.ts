/**
 * A tiny RV32IM assembler for tests: one function per instruction, returning the 32-bit word,
 * written from the ISA manual's encoding tables (independently of the interpreter's decoder).
 */
const r = (f7: number, rs2: number, rs1: number, f3: number, rd: number, op: number) => ((f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0
const i = (imm: number, rs1: number, f3: number, rd: number, op: number) => (((imm & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op) >>> 0
const s = (imm: number, rs2: number, rs1: number, f3: number, op: number) => ((((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 31) << 7) | op) >>> 0
const b = (imm: number, rs2: number, rs1: number, f3: number) =>
  ((((imm >> 12) & 1) << 31) | (((imm >> 5) & 0x3f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (((imm >> 1) & 0xf) << 8) | (((imm >> 11) & 1) << 7) | 0x63) >>> 0
const j = (imm: number, rd: number) => ((((imm >> 20) & 1) << 31) | (((imm >> 1) & 0x3ff) << 21) | (((imm >> 11) & 1) << 20) | (((imm >> 12) & 0xff) << 12) | (rd << 7) | 0x6f) >>> 0

export const rv = {
  lui: (rd: number, imm20: number) => (((imm20 & 0xfffff) << 12) | (rd << 7) | 0x37) >>> 0,
  auipc: (rd: number, imm20: number) => (((imm20 & 0xfffff) << 12) | (rd << 7) | 0x17) >>> 0,
  jal: (rd: number, off: number) => j(off, rd),
  jalr: (rd: number, rs1: number, off: number) => i(off, rs1, 0, rd, 0x67),
  beq: (a: number, c: number, off: number) => b(off, c, a, 0),
  bne: (a: number, c: number, off: number) => b(off, c, a, 1),
  blt: (a: number, c: number, off: number) => b(off, c, a, 4),
  bge: (a: number, c: number, off: number) => b(off, c, a, 5),
  bltu: (a: number, c: number, off: number) => b(off, c, a, 6),
  bgeu: (a: number, c: number, off: number) => b(off, c, a, 7),
  lb: (rd: number, rs1: number, off: number) => i(off, rs1, 0, rd, 0x03),
  lh: (rd: number, rs1: number, off: number) => i(off, rs1, 1, rd, 0x03),
  lw: (rd: number, rs1: number, off: number) => i(off, rs1, 2, rd, 0x03),
  lbu: (rd: number, rs1: number, off: number) => i(off, rs1, 4, rd, 0x03),
  lhu: (rd: number, rs1: number, off: number) => i(off, rs1, 5, rd, 0x03),
  sb: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 0, 0x23),
  sh: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 1, 0x23),
  sw: (rs2: number, rs1: number, off: number) => s(off, rs2, rs1, 2, 0x23),
  addi: (rd: number, rs1: number, imm: number) => i(imm, rs1, 0, rd, 0x13),
  slti: (rd: number, rs1: number, imm: number) => i(imm, rs1, 2, rd, 0x13),
  sltiu: (rd: number, rs1: number, imm: number) => i(imm, rs1, 3, rd, 0x13),
  xori: (rd: number, rs1: number, imm: number) => i(imm, rs1, 4, rd, 0x13),
  ori: (rd: number, rs1: number, imm: number) => i(imm, rs1, 6, rd, 0x13),
  andi: (rd: number, rs1: number, imm: number) => i(imm, rs1, 7, rd, 0x13),
  slli: (rd: number, rs1: number, sh: number) => i(sh, rs1, 1, rd, 0x13),
  srli: (rd: number, rs1: number, sh: number) => i(sh, rs1, 5, rd, 0x13),
  srai: (rd: number, rs1: number, sh: number) => i(0x400 | sh, rs1, 5, rd, 0x13),
  add: (rd: number, a: number, c: number) => r(0, c, a, 0, rd, 0x33),
  sub: (rd: number, a: number, c: number) => r(0x20, c, a, 0, rd, 0x33),
  sll: (rd: number, a: number, c: number) => r(0, c, a, 1, rd, 0x33),
  slt: (rd: number, a: number, c: number) => r(0, c, a, 2, rd, 0x33),
  sltu: (rd: number, a: number, c: number) => r(0, c, a, 3, rd, 0x33),
  xor: (rd: number, a: number, c: number) => r(0, c, a, 4, rd, 0x33),
  srl: (rd: number, a: number, c: number) => r(0, c, a, 5, rd, 0x33),
  sra: (rd: number, a: number, c: number) => r(0x20, c, a, 5, rd, 0x33),
  or: (rd: number, a: number, c: number) => r(0, c, a, 6, rd, 0x33),
  and: (rd: number, a: number, c: number) => r(0, c, a, 7, rd, 0x33),
  mul: (rd: number, a: number, c: number) => r(1, c, a, 0, rd, 0x33),
  mulh: (rd: number, a: number, c: number) => r(1, c, a, 1, rd, 0x33),
  mulhsu: (rd: number, a: number, c: number) => r(1, c, a, 2, rd, 0x33),
  mulhu: (rd: number, a: number, c: number) => r(1, c, a, 3, rd, 0x33),
  div: (rd: number, a: number, c: number) => r(1, c, a, 4, rd, 0x33),
  divu: (rd: number, a: number, c: number) => r(1, c, a, 5, rd, 0x33),
  rem: (rd: number, a: number, c: number) => r(1, c, a, 6, rd, 0x33),
  remu: (rd: number, a: number, c: number) => r(1, c, a, 7, rd, 0x33),
  fence: () => 0x0ff0000f,
  ecall: () => 0x00000073,
  ebreak: () => 0x00100073,
  mret: () => 0x30200073,
  wfi: () => 0x10500073,
  csrrw: (rd: number, csr: number, rs1: number) => i(csr, rs1, 1, rd, 0x73),
  csrrs: (rd: number, csr: number, rs1: number) => i(csr, rs1, 2, rd, 0x73),
  csrrc: (rd: number, csr: number, rs1: number) => i(csr, rs1, 3, rd, 0x73),
  csrrwi: (rd: number, csr: number, uimm: number) => i(csr, uimm, 5, rd, 0x73),
  csrrsi: (rd: number, csr: number, uimm: number) => i(csr, uimm, 6, rd, 0x73),
  csrrci: (rd: number, csr: number, uimm: number) => i(csr, uimm, 7, rd, 0x73),
}

/** A minimal ELF32 RISC-V executable: `words` loaded and entered at 0x80000000. */
export function elf(words: number[], extra: { at: number; bytes: Buffer }[] = []): Buffer {
  const code = Buffer.alloc(words.length * 4)
  words.forEach((w, k) => code.writeUInt32LE(w >>> 0, k * 4))
  const segs = [{ at: 0x80000000, bytes: code }, ...extra]
  const h = Buffer.alloc(52 + 32 * segs.length)
  h.writeUInt32BE(0x7f454c46, 0)
  h[4] = 1
  h[5] = 1
  h[6] = 1
  h.writeUInt16LE(2, 16)
  h.writeUInt16LE(0xf3, 18)
  h.writeUInt32LE(1, 20)
  h.writeUInt32LE(0x80000000, 24)
  h.writeUInt32LE(52, 28)
  h.writeUInt16LE(52, 40)
  h.writeUInt16LE(32, 42)
  h.writeUInt16LE(segs.length, 44)
  let off = h.length
  segs.forEach((sg, k) => {
    const p = 52 + 32 * k
    h.writeUInt32LE(1, p)
    h.writeUInt32LE(off, p + 4)
    h.writeUInt32LE(sg.at, p + 8)
    h.writeUInt32LE(sg.at, p + 12)
    h.writeUInt32LE(sg.bytes.length, p + 16)
    h.writeUInt32LE(sg.bytes.length, p + 20)
    h.writeUInt32LE(7, p + 24)
    off += sg.bytes.length
  })
  return Buffer.concat([h, ...segs.map((sg) => sg.bytes)])
}

/** li: rd = any 32-bit value (LUI + ADDI). */
export function li(rd: number, value: number): number[] {
  const v = value | 0
  const lo = (v << 20) >> 20
  const hi = ((v - lo) >>> 12) & 0xfffff
  return hi ? [rv.lui(rd, hi), rv.addi(rd, rd, lo)] : [rv.addi(rd, 0, lo)]
}

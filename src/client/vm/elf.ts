import { Memory } from './memory.js'

/** A guest image that cannot be loaded: not ELF, wrong machine, or segments outside RAM. */
export class ImageError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'ImageError'
  }
}

const EM_RISCV = 0xf3
const PT_LOAD = 1

/**
 * Loads a 32-bit little-endian RISC-V ELF executable into RAM (PT_LOAD segments at their
 * physical addresses, the rest of each segment zeroed) and returns its entry point.
 * Every size and offset is checked against the file and against RAM before it is used.
 */
export function loadElf(image: Buffer, mem: Memory, name = 'image'): number {
  if (image.length < 52 || image.readUInt32BE(0) !== 0x7f454c46) throw new ImageError(`${name}: not an ELF file`)
  if (image[4] !== 1 || image[5] !== 1) throw new ImageError(`${name}: not a 32-bit little-endian ELF (class ${image[4]}, data ${image[5]})`)
  if (image.readUInt16LE(18) !== EM_RISCV) throw new ImageError(`${name}: ELF machine ${image.readUInt16LE(18)}, expected RISC-V (${EM_RISCV})`)
  if (image.readUInt16LE(16) !== 2) throw new ImageError(`${name}: not an executable (ELF type ${image.readUInt16LE(16)})`)
  const entry = image.readUInt32LE(24)
  const phoff = image.readUInt32LE(28)
  const phentsize = image.readUInt16LE(42)
  const phnum = image.readUInt16LE(44)
  if (phentsize < 32 || phoff + phnum * phentsize > image.length) throw new ImageError(`${name}: program headers lie outside the file`)
  let loaded = 0
  for (let i = 0; i < phnum; i++) {
    const h = phoff + i * phentsize
    if (image.readUInt32LE(h) !== PT_LOAD) continue
    const offset = image.readUInt32LE(h + 4)
    const paddr = image.readUInt32LE(h + 12)
    const filesz = image.readUInt32LE(h + 16)
    const memsz = image.readUInt32LE(h + 20)
    if (filesz > memsz || offset + filesz > image.length) throw new ImageError(`${name}: segment ${i} lies outside the file`)
    const at = mem.offsetOf(paddr, memsz)
    if (at < 0) throw new ImageError(`${name}: segment ${i} (0x${paddr.toString(16)}, ${memsz} bytes) lies outside the guest's ${mem.size} bytes of RAM`)
    mem.bytes.set(image.subarray(offset, offset + filesz), at)
    mem.bytes.fill(0, at + filesz, at + memsz)
    loaded++
  }
  if (!loaded) throw new ImageError(`${name}: no loadable segment`)
  if (mem.offsetOf(entry, 4) < 0 || entry & 3) throw new ImageError(`${name}: entry point 0x${entry.toString(16)} is not in RAM`)
  return entry | 0
}

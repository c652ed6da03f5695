/**
 * The deterministic write plan of the crash test: write `i` of seed `s` covers sectors
 * [lba, lba+count), and every sector it writes says who wrote it, so a reader can tell which
 * write a sector came from and whether it is torn.
 */
export const DISK_BYTES = 8 << 20
export const SECTORS = DISK_BYTES / 512

export interface PlannedWrite {
  lba: number
  count: number
}

function mix(a: number, b: number): number {
  let x = (Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x632be5ab, 0xc2b2ae35)) >>> 0
  x ^= x >>> 16
  x = Math.imul(x, 0x7feb352d) >>> 0
  x ^= x >>> 15
  return x >>> 0
}

export function planned(seed: number, i: number): PlannedWrite {
  const r1 = mix(seed, i * 3)
  const r2 = mix(seed, i * 3 + 1)
  // Mostly small writes (partial grains, COW from the base), some spanning several grains.
  const count = r2 % 8 === 0 ? 1 + (r2 % 512) : 1 + (r2 % 24)
  const lba = r1 % (SECTORS - count)
  return { lba, count }
}

/** Flush after this write? (every few writes) */
export function flushAfter(seed: number, i: number): boolean {
  return mix(seed, i * 3 + 2) % 4 === 0
}

/** The bytes of sector `lba` as written by write `tag` (tag 0 = the base disk's content). */
export function sectorBytes(tag: number, lba: number, into?: Buffer, at = 0): Buffer {
  const b = into ?? Buffer.alloc(512)
  b.writeUInt32LE(tag, at)
  b.writeUInt32LE(lba, at + 4)
  // Cheap to make, so the writer spends its time in I/O where the kills should land.
  const salt = mix(tag, lba)
  for (let k = 8; k < 512; k += 4) b.writeUInt32LE((salt + k * 0x01000193) >>> 0, at + k)
  return b
}

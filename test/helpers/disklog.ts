import { closeSync, openSync, readSync } from 'node:fs'

/** Where the `disklog` guest's records begin (guests/src/disklog.c): one 512-byte record per block. */
export const DISKLOG = { firstLba: 2048, block: 512, magic: 0x474f4c44 } as const

/** disklog's record n: "DLOG", n, then a pattern of n. */
export function isRecord(b: Buffer, n: number): boolean {
  if (b.readUInt32LE(0) !== DISKLOG.magic || b.readUInt32LE(4) !== n) return false
  for (let i = 2; i < DISKLOG.block / 4; i++) if (b.readUInt32LE(i * 4) !== (Math.imul(n, 2654435761) ^ Math.imul(i, 40503) ^ 0x5a5a5a5a) >>> 0) return false
  return true
}

/** The records on a raw disk image from the first: how many there are before the first that is not record n. */
export function recordsOnDisk(file: string, capacity: number): number {
  const fd = openSync(file, 'r')
  const b = Buffer.alloc(DISKLOG.block)
  let n = 0
  try {
    while (DISKLOG.firstLba + n < capacity) {
      readSync(fd, b, 0, DISKLOG.block, (DISKLOG.firstLba + n) * DISKLOG.block)
      if (!isRecord(b, n + 1)) break
      n++
    }
  } finally {
    closeSync(fd)
  }
  return n
}

/** The highest record a disklog console says is on stable storage ("disklog: synced N"). */
export const syncedIn = (text: string) => Math.max(0, ...[...text.matchAll(/disklog: synced (\d+)/g)].map((m) => Number(m[1])))

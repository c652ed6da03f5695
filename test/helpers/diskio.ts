/** What the `diskio` guest writes (guests/src/diskio.c): 64 chunks of 16 blocks from LBA 2048. */
export const DISKIO = { firstLba: 2048, chunkBlocks: 16, chunks: 64 } as const

/** diskio's pattern for `blocks` blocks at `lba`, computed independently of the guest. */
export function diskioPattern(lba: number, blocks: number): Buffer {
  const b = Buffer.alloc(blocks * 512)
  for (let i = 0; i < b.length / 4; i++) {
    b.writeUInt32LE(((Math.imul(lba, 2654435761) ^ Math.imul(i, 40503)) ^ 0xa5a5a5a5) >>> 0, i * 4)
  }
  return b
}

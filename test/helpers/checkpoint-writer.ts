import { createInterface } from 'node:readline'
import { pathToFileURL } from 'node:url'
import { writeCheckpoint, type CheckpointSource } from '../../src/client/vm/checkpoint-file.js'

/**
 * The checkpoints of the crash test (checkpoint-crash.test.ts): generation `g` is a 16 MiB guest
 * memory and a state blob both derived from `g`, so a reader can tell which generation a file
 * holds and check every byte of it.
 *
 * Run as a program (`checkpoint-writer.ts PATH`), it prints `ready`, waits for `go G` on stdin,
 * then writes generations G, G+1, … onto PATH, printing `done G MS` after each (MS: how long the
 * write took), until killed.
 */
export const GEN_MEMORY = 16 << 20
const PAGE = 4096
const PAGES = GEN_MEMORY / PAGE

/** Three pages in four are zero (which ones depends on g); the others hold words made of g and the page. */
const zeroPage = (g: number, i: number) => ((Math.imul(i + 1, 0x9e3779b1) ^ Math.imul(g + 1, 0x85ebca6b)) >>> 0) % 4 !== 0

/** Fills `mem` with generation g's memory. */
export function fillGeneration(mem: Uint8Array, g: number): void {
  const words = new Uint32Array(mem.buffer, mem.byteOffset, mem.length / 4)
  for (let i = 0; i < PAGES; i++) {
    const w = i * (PAGE / 4)
    if (zeroPage(g, i)) words.fill(0, w, w + PAGE / 4)
    else {
      words.fill(Math.imul(g + 1, 0x01000193) ^ i, w, w + PAGE / 4)
      words[w + (g % (PAGE / 4))] = g // differs from the neighbouring generation's in every page
    }
  }
}

export function generationState(g: number): Buffer {
  const s = Buffer.alloc(1000, g & 0xff)
  s.writeUInt32LE(g, 0)
  return s
}

export function generationSource(mem: Uint8Array, g: number): CheckpointSource {
  return {
    memoryBytes: GEN_MEMORY,
    imageSha256: Buffer.alloc(32, 7),
    instret: g * 1000,
    name: `gen-${g}`,
    state: generationState(g),
    pages: PAGES,
    page: (i) => (zeroPage(g, i) ? null : mem.subarray(i * PAGE, (i + 1) * PAGE)),
  }
}

async function main(path: string): Promise<void> {
  const mem = new Uint8Array(GEN_MEMORY)
  fillGeneration(mem, 0) // the pages exist before the kill window opens
  process.stdout.write('ready\n')
  const lines = createInterface({ input: process.stdin })
  for await (const line of lines) {
    const m = /^go (\d+)$/.exec(line)
    if (!m) continue
    for (let g = Number(m[1]); ; g++) {
      fillGeneration(mem, g)
      const { ms } = await writeCheckpoint(path, generationSource(mem, g))
      process.stdout.write(`done ${g} ${Math.round(ms)}\n`)
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main(process.argv[2])

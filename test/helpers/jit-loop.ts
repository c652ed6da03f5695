/**
 * Run by jit-warm.test.ts under `node --trace-deopt`: a guest whose inner loop is one looping
 * block, called OUTER times, each call looping INNER times (most of a 1 M-instruction slice), run
 * by the block translator a slice at a time. Prints the guest's registers as JSON on its last line.
 */
import { fileURLToPath } from 'node:url'
import { Machine } from '../../src/client/vm/index.js'
import { rv, elf, li } from './rv.js'

export const OUTER = 150
export const INNER = 200_000
const words = [
  ...li(6, OUTER),
  // outer: (a branch target, so a block starts here)
  ...li(5, INNER),
  rv.jal(0, 4), // a jump: the inner loop's first instruction starts a block
  // inner: one block that goes round while its budget allows
  rv.addi(7, 7, 3),
  rv.xor(8, 8, 7),
  rv.addi(5, 5, -1),
  rv.bne(5, 0, -12),
  rv.addi(6, 6, -1),
  rv.bne(6, 0, -32),
  rv.jal(0, 0),
]

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const m = new Machine({ image: elf(words), memory: 1 << 16, engine: 'jit' })
  const end = 1 + OUTER * (3 + INNER * 4 + 2)
  while (m.hart.instret < end) m.hart.run(Math.min(end, m.hart.instret + 1_000_000))
  console.log(JSON.stringify({ instret: m.hart.instret, x5: m.hart.x[5], x6: m.hart.x[6], x7: m.hart.x[7], x8: m.hart.x[8] }))
}

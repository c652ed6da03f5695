/**
 * Crash-test writer: opens a VMDK chain read-write and performs the plan of `seed` forever,
 * printing `W i` after write i completes and `F n` after a flush that covered writes 0..n-1.
 * The test kills it with SIGKILL at a random point. Usage: writer.js PATH SEED
 */
import { openVmdk } from '../../src/disk-formats/chain/index.js'
import { flushAfter, planned, sectorBytes } from './plan.js'

const [path, seedText] = process.argv.slice(2)
const seed = Number(seedText)
const img = await openVmdk(path)
const out = (s: string) => process.stdout.write(s + '\n')
out('READY')
for (let i = 0; ; i++) {
  const w = planned(seed, i)
  const buf = Buffer.alloc(w.count * 512)
  for (let k = 0; k < w.count; k++) sectorBytes(i + 1, w.lba + k, buf, k * 512)
  await img.write(w.lba * 512, buf)
  out(`W ${i}`)
  if (flushAfter(seed, i)) {
    await img.flush()
    out(`F ${i + 1}`)
  }
}

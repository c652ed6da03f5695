import t from 'tap'
import { copyFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, pattern, shmTmp, shStatus } from '../../helpers/peers.js'
import { fsFaults } from '../../helpers/fs-faults.js'

// Every write through a FileHandle, so that fsFaults sees (and can stop) each one. Read when
// file-io.ts loads: set first.
process.env.TANDEM_SYNC_IO = '0'
const { checkImage, createVmdk, growVmdk, VmdkImage } = await import('../../../src/disk-formats/vmdk/index.js')

const faults = await fsFaults()
const MiB = 2 ** 20

/**
 * A grow stopped after each of its file changes in turn (as a kill there): the file opens, at
 * the old size or the new, its bytes intact, the new range zeros, and check finds no corruption
 * (leaked sectors at most: the tables and directories written before the header named them).
 */
for (const [what, to] of [['in place', 64 * MiB], ['directories moved', 10 * 2 ** 30]] as const) {
  t.test(`grow stopped at every step (${what})`, needs('qemu-img'), async (t) => {
    const d = shmTmp(t, 'tandem-grow-crash-')
    const pristine = join(d, 'pristine.vmdk')
    await createVmdk(pristine, { size: 3 * MiB })
    const w = await VmdkImage.open(pristine)
    await w.write(0, pattern(MiB, 9))
    await w.close()
    let finished = false
    let stops = 0
    for (let k = 0; !finished && k < 100; k++) {
      const f = join(d, `g${k}.vmdk`)
      copyFileSync(pristine, f)
      faults.arm(k, 'kill')
      try {
        await growVmdk(f, to)
        finished = faults.refused === 0
      } catch {
        /* stopped */
      } finally {
        faults.disarm()
      }
      if (!finished) stops++
      const img = await VmdkImage.open(f, { readOnly: true })
      const size = img.size
      const head = await img.read(0, MiB)
      const tail = await img.read(size - MiB, MiB)
      await img.close()
      const ok = (size === 3 * MiB || size === to) && head.equals(pattern(MiB, 9)) && (size === 3 * MiB || tail.equals(Buffer.alloc(MiB)))
      const c = await checkImage(f)
      const q = shStatus('qemu-img', ['check', f])
      if (!ok || c.corruptions !== 0 || q.status !== 0) {
        t.fail(`stopped after ${k} changes: size ${size}, head ${head.equals(pattern(MiB, 9))}, check ${c.messages.slice(0, 3).join('; ')}, qemu-img check ${q.status} ${q.stdout}`)
        return
      }
    }
    t.ok(finished, 'the grow finishes when nothing stops it')
    t.ok(stops >= 4, `${stops} stopping points, each left a readable, uncorrupted file`)
  })
}

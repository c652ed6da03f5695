import t from 'tap'
import { spawn } from 'node:child_process'
import { copyFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { join } from 'node:path'
import { ROOT, shmTmp, rng, pattern } from '../../helpers/peers.js'
import { createVmdk, openVmdk, checkImage, isStorageError, rebase } from '../../../src/disk-formats/index.js'

const COMMITTER = join(ROOT, 'dist', 'scripts', 'crash', 'committer.js')
const KILLS = Number(process.env.TANDEM_COMMIT_CRASH_KILLS ?? 40)
const SIZE = 8 << 20

/** Starts a commit of `delta`, SIGKILLs it `delayMs` after it is ready; true if it finished first. */
function commitAndKill(delta: string, delayMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [COMMITTER, delta], { stdio: ['ignore', 'pipe', 'pipe'] })
    let done = false
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (line === 'READY') setTimeout(() => child.kill('SIGKILL'), delayMs)
      if (line === 'DONE') done = true
    })
    child.on('exit', (code, signal) => {
      if (signal === 'SIGKILL' || (code === 0 && done)) resolve(done)
      else reject(new Error(`committer exited ${code}: ${stderr}`))
    })
  })
}

t.test(`a commit killed with SIGKILL at ${KILLS} random points never leaves wrong content, and a refused chain relinks`, async (t) => {
  const d = shmTmp(t, 'tandem-commit-crash-')
  // a base with data in its first half and a delta of 32 scattered 64 KiB grains and a few
  // partial ones (merged with the base's bytes); copied as templates for every run
  const base = join(d, 'base.vmdk')
  const delta = join(d, 'delta.vmdk')
  await createVmdk(base, { size: SIZE })
  const b = await openVmdk(base)
  await b.write(0, pattern(SIZE / 2, 1))
  const cid = b.cid
  await b.close()
  await createVmdk(delta, { size: SIZE, parent: { path: base, cid } })
  const r = rng(7)
  const w = await openVmdk(delta)
  for (let i = 0; i < 32; i++) await w.write((r() % (SIZE / 65536)) * 65536, pattern(65536, 100 + i))
  for (let i = 0; i < 4; i++) await w.write((r() % (SIZE / 512)) * 512, pattern(512, 200 + i))
  await w.close()
  const base0 = join(d, 'base.template')
  const delta0 = join(d, 'delta.template')
  copyFileSync(base, base0)
  copyFileSync(delta, delta0)
  const before = await openVmdk(delta, { readOnly: true })
  const expected = await before.read(0, SIZE)
  await before.close()

  const outcomes = { finished: 0, valid: 0, refused: 0 }
  for (let k = 0; k < KILLS; k++) {
    copyFileSync(base0, base)
    copyFileSync(delta0, delta)
    const finished = await commitAndKill(delta, r() % 24) // a commit here takes ~15–20 ms
    if (finished) outcomes.finished++
    let refused = false
    try {
      const img = await openVmdk(delta, { readOnly: true })
      const got = await img.read(0, SIZE)
      await img.close()
      if (!got.equals(expected)) t.fail(`kill ${k}: the chain opens but reads other bytes`)
      outcomes.valid++
    } catch (e) {
      if (finished || !isStorageError(e, 'ChainMismatch')) t.fail(`kill ${k}: the chain does not open: ${(e as Error).message}`)
      refused = true
      outcomes.refused++
    }
    // check finds nothing wrong in either file but, for a refused chain, that very CID mismatch
    const cb = await checkImage(base)
    if (cb.corruptions !== 0) t.fail(`kill ${k}: the parent is corrupt: ${cb.messages.join('; ')}`)
    const cd = await checkImage(delta)
    const other = cd.messages.filter((m) => m.startsWith('ERROR') && !(refused && /parentCID .* does not match CID/.test(m)))
    if (other.length) t.fail(`kill ${k}: the delta is corrupt: ${other.join('; ')}`)
    if (refused) {
      // The delta is still whole (it is emptied only after its new parentCID is written), and
      // the parent holds a copy of some of it: relinking it, as `tandem disk rebase -u` does,
      // gives back the chain's content.
      await rebase(delta, base, { unsafe: true })
      const img = await openVmdk(delta, { readOnly: true })
      if (!(await img.read(0, SIZE)).equals(expected)) t.fail(`kill ${k}: relinked, the chain reads other bytes`)
      await img.close()
    }
  }
  t.pass(`${KILLS} kills: ${outcomes.finished} after the commit returned, ${outcomes.valid} chains read the same bytes, ${outcomes.refused} refused to open (CID mismatch)`)
  t.ok(outcomes.finished < KILLS, 'some kills landed inside the commit')
  t.ok(outcomes.valid > 0, 'some chains were valid after the kill')
})

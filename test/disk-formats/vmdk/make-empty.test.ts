import t from 'tap'
import { copyFileSync } from 'node:fs'
import { open, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { tmp, pattern } from '../../helpers/peers.js'

// Every write through the FileHandle, so a proxy sees (and can stop) each one: the synchronous
// fast path for small writes (file-io.ts) writes by fd. Read when file-io.ts loads: set first.
process.env.TANDEM_SYNC_IO = '0'
const { createVmdk, openVmdk, checkImage, SparseExtent } = await import('../../../src/disk-formats/index.js')

/** `fh`, failing every write, datasync and truncate after the first `allow` (a process killed there). */
function stopAfter(fh: FileHandle, allow: number): { fh: FileHandle; steps: () => number } {
  let steps = 0
  const proxy = new Proxy(fh, {
    get(target, key) {
      const v = Reflect.get(target, key) as unknown
      if (typeof v !== 'function') return v
      if (key === 'write' || key === 'datasync' || key === 'truncate') {
        return (...args: unknown[]) => {
          if (++steps > allow) return Promise.reject(new Error('killed'))
          return (v as (...a: unknown[]) => unknown).apply(target, args)
        }
      }
      return (v as (...a: unknown[]) => unknown).bind(target)
    },
  })
  return { fh: proxy, steps: () => steps }
}

t.test('emptying an extent (commit) stopped after any write leaves nothing check calls corrupt', async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  const delta = join(d, 'delta.vmdk')
  const size = 128 << 20 // four grain tables
  await createVmdk(base, { size })
  const b = await openVmdk(base)
  const cid = b.cid
  await b.close()
  await createVmdk(delta, { size, parent: { path: base, cid } })
  const w = await openVmdk(delta)
  for (let i = 0; i < 16; i++) await w.write(i * 8 * 1048576 + 65536 * (i % 7), pattern(65536, i + 1))
  await w.close()
  const template = join(d, 'delta.template')
  copyFileSync(delta, template)

  /** Empties a fresh copy of the delta, stopping it after `allow` steps of makeEmpty. */
  const run = async (allow: number) => {
    copyFileSync(template, delta)
    const raw = await open(delta, 'r+')
    const ext = await SparseExtent.open(delta, raw, false)
    const stopped = stopAfter(raw, allow)
    ;(ext as unknown as { fh: FileHandle }).fh = stopped.fh // from here on, makeEmpty's steps only
    let killed = false
    await ext.makeEmpty().catch(() => (killed = true))
    await raw.close()
    return { killed, steps: stopped.steps() }
  }
  const all = (await run(Infinity)).steps
  t.equal(all, 2 * 4 + 2, 'a whole makeEmpty: four tables in each directory, a sync, a truncate')
  for (let allow = 0; allow < all; allow++) {
    const { killed } = await run(allow)
    if (!killed) t.fail(`stopped after ${allow} steps, makeEmpty did not notice`)
    const r = await checkImage(delta)
    if (r.corruptions !== 0) t.fail(`stopped after ${allow} of ${all} steps: ${r.messages.filter((m) => m.startsWith('ERROR')).join('; ')}`)
  }
  t.pass(`stopped after each of 0..${all - 1} steps: no corruption`)
})

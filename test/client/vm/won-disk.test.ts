import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { openVmDisk, openWonVmDisk } from '../../../src/client/vm/vm-disk.js'
import { probeImageLocks } from '../../../src/disk-formats/image-lock.js'
import { needs, tmp } from '../../helpers/peers.js'

/** Resolves once some process holds `file`'s write lock; throws if `alive()` turns false first, or after 15 s. */
async function lockSeen(file: string, alive: () => boolean): Promise<void> {
  for (const until = performance.now() + 15_000; performance.now() < until; await new Promise((r) => setTimeout(r, 10))) {
    if (probeImageLocks(file).used.includes('write')) return
    if (!alive()) throw new Error('qemu-io exited before its write lock was seen')
  }
  throw new Error('qemu-io took no write lock in 15 s')
}

/**
 * An FT backup going live opens its local disk file for writing (openWonVmDisk): the primary it
 * took the VM from may still hold the file's image lock while it exits. Here qemu-io holds the
 * write lock for 1 s: openVmDisk is refused at once (Busy), openWonVmDisk waits for the lock
 * and opens the disk; a lock held past its wait is refused.
 */
t.test('a disk whose image lock the lost side still holds a moment is opened once the lock goes', needs('qemu-io'), async (t) => {
  const file = join(tmp(t), 'disk.raw')
  writeFileSync(file, Buffer.alloc(1 << 20))
  const holder = spawn('qemu-io', ['-f', 'raw', '-c', 'sleep 1000', file], { stdio: ['ignore', 'ignore', 'pipe'] })
  let held = true
  const holderExit = once(holder, 'exit').finally(() => (held = false))
  t.teardown(() => holder.kill('SIGKILL'))
  // qemu-io takes its locks as it opens the file. Watched from outside (F_OFD_GETLK takes no lock):
  // polling with opens took the lock now and then, and a qemu-io starting just then failed to get
  // it and exited, so the lock was never seen (CI, 2026-12-03)
  await lockSeen(file, () => held)
  const refused = await openVmDisk(file, 'iqn.x:vm').then(async (d) => void (await d.close()), (e: unknown) => e)
  t.match(refused, { code: 'Busy', message: /lock/ }, 'openVmDisk: Busy while qemu-io holds the write lock')
  const t0 = performance.now()
  const d = await openWonVmDisk(file, 'iqn.x:vm')
  t.ok(performance.now() - t0 > 50, `openWonVmDisk waited for the lock (${Math.round(performance.now() - t0)} ms)`)
  await d.disk!.write(0, Buffer.alloc(512, 9))
  t.same(await d.disk!.read(0, 512), Buffer.alloc(512, 9), 'and the disk is the VM\'s to write')
  await d.close()
  await holderExit
  const again = spawn('qemu-io', ['-f', 'raw', '-c', 'sleep 3000', file], { stdio: ['ignore', 'ignore', 'pipe'] })
  t.teardown(() => again.kill('SIGKILL'))
  let againHeld = true
  void once(again, 'exit').finally(() => (againHeld = false)).catch(() => undefined)
  await lockSeen(file, () => againHeld)
  await t.rejects(openWonVmDisk(file, 'iqn.x:vm', {}, { forMs: 200, everyMs: 20 }), { code: 'Busy' }, 'a lock held past the wait is refused, Busy')
})

import t from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { openVmDisk, openWonVmDisk } from '../../../src/client/vm/vm-disk.js'
import { needs, tmp } from '../../helpers/peers.js'

/**
 * An FT backup going live opens its local disk file for writing (openWonVmDisk): the primary it
 * took the VM from may still hold the file's image lock while it exits. Here qemu-io holds the
 * write lock for 400 ms: openVmDisk is refused at once (Busy), openWonVmDisk waits for the lock
 * and opens the disk; a lock held past its wait is refused.
 */
t.test('a disk whose image lock the lost side still holds a moment is opened once the lock goes', needs('qemu-io'), async (t) => {
  const file = join(tmp(t), 'disk.raw')
  writeFileSync(file, Buffer.alloc(1 << 20))
  const holder = spawn('qemu-io', ['-f', 'raw', '-c', 'sleep 400', file], { stdio: ['ignore', 'ignore', 'pipe'] })
  const holderExit = once(holder, 'exit')
  t.teardown(() => holder.kill('SIGKILL'))
  // qemu-io takes its locks as it opens the file: wait until a plain open is refused
  let refused: unknown
  for (let i = 0; i < 100 && !refused; i++) {
    refused = await openVmDisk(file, 'iqn.x:vm').then(async (d) => void (await d.close()), (e: unknown) => e)
    if (!refused) await new Promise((r) => setTimeout(r, 10))
  }
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
  for (let i = 0; i < 100 && (await openVmDisk(file, 'iqn.x:vm').then(async (x) => (await x.close(), true), () => false)); i++) await new Promise((r) => setTimeout(r, 10))
  await t.rejects(openWonVmDisk(file, 'iqn.x:vm', {}, { forMs: 200, everyMs: 20 }), { code: 'Busy' }, 'a lock held past the wait is refused, Busy')
})

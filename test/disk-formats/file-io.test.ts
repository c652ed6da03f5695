import t from 'tap'
import { join } from 'node:path'
import { datasync, duringSync, openFile, preadFull, pwriteFull } from '../../src/disk-formats/file-io.js'
import { tmp } from '../helpers/peers.js'

/**
 * Adaptive I/O: a small write is done synchronously (it completes before the next turn of the
 * event loop), except while a sync runs — then it goes to the thread pool, so that a write held
 * up by the sync's journal commit holds up one request, not the event loop.
 */
async function settledThisTurn(p: Promise<unknown>): Promise<boolean> {
  let done = false
  void p.then(() => (done = true))
  for (let i = 0; i < 10; i++) await Promise.resolve() // microtasks only: no I/O callback runs
  return done
}

t.test('a small write completes in the same turn, except while a sync of the process runs', { skip: process.env.TANDEM_SYNC_IO === '0' ? 'TANDEM_SYNC_IO=0' : undefined }, async (t) => {
  const path = join(tmp(t), 'f')
  const fh = await openFile(path, 'w+')
  t.teardown(() => fh.close())
  const data = Buffer.alloc(4096, 7)
  await pwriteFull(fh, path, 0, data)
  t.ok(await settledThisTurn(pwriteFull(fh, path, 4096, data)), 'no sync: done synchronously')
  const sync = datasync(fh, path)
  // the writes that go to the pool are awaited before the read-back (CI once read the file before
  // the last of them had landed: a write not yet acknowledged)
  const pooled: Promise<unknown>[] = [pwriteFull(fh, path, 8192, data)]
  t.notOk(await settledThisTurn(pooled[0]), 'during a datasync: through the thread pool')
  t.notOk(await settledThisTurn(preadFull(fh, path, 0, 4096)), 'reads too')
  await sync
  t.ok(await settledThisTurn(pwriteFull(fh, path, 12288, data)), 'the sync over: synchronous again')
  let release!: () => void
  const held = duringSync(() => new Promise<void>((r) => (release = r)))
  pooled.push(pwriteFull(fh, path, 16384, data))
  t.notOk(await settledThisTurn(pooled[1]), 'during any sync duringSync wraps (a folder\'s, an fsync)')
  release()
  await held
  await Promise.all(pooled)
  t.same(await preadFull(fh, path, 0, 20480), Buffer.alloc(20480, 7), 'every write landed')
})

import t from 'tap'
import { closeSync, mkdirSync, openSync, readFileSync, truncateSync, writeFileSync, writeSync } from 'node:fs'
import type { FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { datasync, duringSync, openFile, preadFull, pwriteData, pwriteFull, unmapFile } from '../../src/disk-formats/file-io.js'
import { loadNative, type FileMapping } from '../../src/disk-formats/native.js'
import { StorageError } from '../../src/disk-formats/errors.js'
import { sh, shStatus, tmp } from '../helpers/peers.js'

/**
 * Adaptive I/O: a small write is done synchronously (it completes before the next turn of the
 * event loop), except while a sync runs — then it goes to the thread pool, so that a write held
 * up by the sync's journal commit holds up one request, not the event loop.
 */
/** Resolves in the event loop's next turn (after its check phase). */
const nextTurn = () => new Promise<void>((r) => setImmediate(() => setImmediate(r)))

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

t.test('small data writes (pwriteData) of one turn after the first go to one batch, in order; the first stays synchronous', { skip: process.env.TANDEM_SYNC_IO === '0' || process.env.TANDEM_WRITE_BATCH === '0' ? 'sync I/O or batching off' : undefined }, async (t) => {
  const path = join(tmp(t), 'f')
  const fh = await openFile(path, 'w+')
  t.teardown(() => fh.close())
  await nextTurn()
  const first = pwriteData(fh, path, 0, Buffer.alloc(4096, 1))
  const rest = [1, 2, 3, 4].map((i) => pwriteData(fh, path, i * 4096, Buffer.alloc(4096, i + 1)))
  // two writes of the same turn to one place: the later one's bytes remain
  rest.push(pwriteData(fh, path, 8192, Buffer.alloc(4096, 9)))
  t.ok(await settledThisTurn(first), 'the first write of the turn: synchronous')
  t.notOk(await settledThisTurn(rest[0]), 'the next ones: batched, done on the thread pool')
  // while a batch is under way, even a turn's first write joins the next batch
  const during = pwriteData(fh, path, 5 * 4096, Buffer.alloc(4096, 6))
  t.notOk(await settledThisTurn(during), 'a write while a batch runs: queued behind it')
  await Promise.all([...rest, during])
  const got = await preadFull(fh, path, 0, 6 * 4096)
  const want = Buffer.concat([1, 2, 9, 4, 5, 6].map((v) => Buffer.alloc(4096, v)))
  t.ok(got.equals(want), 'every write landed, the later of two to one place last')
})

t.test('a batched write that fails rejects with a StorageError naming the file; the others of its batch land', { skip: process.env.TANDEM_SYNC_IO === '0' || process.env.TANDEM_WRITE_BATCH === '0' ? 'sync I/O or batching off' : undefined }, async (t) => {
  const dir = tmp(t)
  const good = join(dir, 'good')
  const bad = join(dir, 'bad')
  const fh = await openFile(good, 'w+')
  t.teardown(() => fh.close())
  await (await openFile(bad, 'w')).close()
  const ro = await openFile(bad, 'r') // pwrite on it: EBADF
  t.teardown(() => ro.close())
  await nextTurn()
  const results = await Promise.allSettled([
    pwriteData(fh, good, 0, Buffer.alloc(512, 1)),
    pwriteData(fh, good, 512, Buffer.alloc(512, 2)),
    pwriteData(ro, bad, 0, Buffer.alloc(512, 3)),
    pwriteData(fh, good, 1024, Buffer.alloc(512, 4)),
  ])
  t.same(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'rejected', 'fulfilled'])
  const e = (results[2] as PromiseRejectedResult).reason as StorageError
  t.ok(e instanceof StorageError, 'a StorageError')
  t.equal(e.code, 'IoError')
  t.match(e.message, /Could not write '.*bad': EBADF/)
  t.same(await preadFull(fh, good, 0, 1536), Buffer.concat([1, 2, 4].map((v) => Buffer.alloc(512, v))))
})

t.test('a write queued for a batch goes to its own file though its fd is closed and the number reused before the batch runs', { skip: process.env.TANDEM_SYNC_IO === '0' || process.env.TANDEM_WRITE_BATCH === '0' ? 'sync I/O or batching off' : undefined }, async (t) => {
  const dir = tmp(t)
  const a = join(dir, 'a')
  const b = join(dir, 'b')
  // raw fds, so that the close and the reopen happen within the turn, before the batch can run
  const fdA = openSync(a, 'w+')
  const ha = { fd: fdA } as FileHandle
  await nextTurn()
  await pwriteData(ha, a, 0, Buffer.alloc(512, 1)) // the turn's synchronous write
  const queued = pwriteData(ha, a, 512, Buffer.alloc(512, 2)) // the same turn: queued
  closeSync(fdA)
  const fdB = openSync(b, 'w+')
  t.teardown(() => closeSync(fdB))
  t.equal(fdB, fdA, 'the closed number went to the next open (the case guarded against)')
  await queued
  t.equal(readFileSync(b).length, 0, 'nothing written to the other file')
  t.same(readFileSync(a), Buffer.concat([Buffer.alloc(512, 1), Buffer.alloc(512, 2)]), 'the write landed in its own file')
  await nextTurn()
  const closed = await openFile(b, 'r+')
  await closed.close()
  await pwriteData({ fd: fdB } as FileHandle, b, 0, Buffer.alloc(1)) // this turn's synchronous one
  await t.rejects(pwriteData(closed, b, 0, Buffer.alloc(512)), { code: 'IoError', message: /EBADF/ }, 'a handle closed before queueing: EBADF, typed')
})

t.test('pwriteFull never batches: a lockspace\'s POSIX locks would drop when the batch closed its duplicate fd', async (t) => {
  const path = join(tmp(t), 'f')
  const fh = await openFile(path, 'w+')
  t.teardown(() => fh.close())
  await nextTurn()
  await pwriteFull(fh, path, 0, Buffer.alloc(512, 1))
  t.ok(await settledThisTurn(pwriteFull(fh, path, 512, Buffer.alloc(512, 2))), 'a second write in the turn: still synchronous')
})

const mappedOff = process.env.TANDEM_SYNC_IO === '0' || process.env.TANDEM_MAPPED_WRITES === '0' ? 'sync I/O or mapped writes off' : undefined
const MiB = 1 << 20

/** A 2 MiB file of `fill` bytes (read in: its pages are in the page cache), opened read-write. */
async function cachedFile(t: { teardown(fn: () => void): void }, fill: number) {
  const path = join(tmp(t), 'f')
  writeFileSync(path, Buffer.alloc(2 * MiB, fill))
  readFileSync(path)
  const fh = await openFile(path, 'r+')
  t.teardown(() => (unmapFile(fh), fh.close()))
  return { path, fh }
}

t.test('small data writes to cached bytes of a mapped file: copied into the mapping, every one of a turn synchronously; pread and another open see them', { skip: mappedOff }, async (t) => {
  const { path, fh } = await cachedFile(t, 0)
  await nextTurn()
  const writes = [0, 1, 2, 3, 4].map((i) => pwriteData(fh, path, i * 300_000, Buffer.alloc(4096, i + 1)))
  // the batch path would do the first synchronously and queue the others (the test above)
  for (const [i, w] of writes.entries()) t.ok(await settledThisTurn(w), `write ${i} of the turn: done synchronously`)
  const seen = readFileSync(path)
  for (let i = 0; i < 5; i++) {
    t.ok(seen.subarray(i * 300_000, i * 300_000 + 4096).equals(Buffer.alloc(4096, i + 1)), `write ${i} read back by another open`)
    t.ok((await preadFull(fh, path, i * 300_000, 4096)).equals(Buffer.alloc(4096, i + 1)), `write ${i} read back by pread`)
  }
  t.equal(seen.subarray(4096, 300_000).indexOf(1), -1, 'nothing else changed')
  await datasync(fh, path)
})

t.test('a page not in the page cache is not written through the mapping (a fault would read the disk): the batch path takes it, and the mapping waits for the batch', { skip: mappedOff || (process.env.TANDEM_WRITE_BATCH === '0' ? 'batching off' : undefined) }, async (t) => {
  const path = join(tmp(t), 'f')
  writeFileSync(path, '')
  truncateSync(path, 2 * MiB) // all a hole, never read: no page of it cached
  const fh = await openFile(path, 'r+')
  t.teardown(() => (unmapFile(fh), fh.close()))
  await pwriteFull(fh, path, 0, Buffer.alloc(4096, 9)) // page 0 cached now
  await nextTurn()
  const first = pwriteData(fh, path, MiB, Buffer.alloc(4096, 1))
  const second = pwriteData(fh, path, MiB + 4096, Buffer.alloc(4096, 2))
  t.ok(await settledThisTurn(first), 'the turn\'s first, not cached: a synchronous pwrite')
  t.notOk(await settledThisTurn(second), 'its second, not cached: batched')
  // page 0 is cached, but a copy now would overtake the batch's writes: it queues behind them
  const third = pwriteData(fh, path, MiB + 4096, Buffer.alloc(4096, 3))
  const fourth = pwriteData(fh, path, 0, Buffer.alloc(4096, 4))
  t.notOk(await settledThisTurn(fourth), 'a cached page while the file has writes in a batch: queued too')
  await Promise.all([second, third, fourth])
  const got = readFileSync(path)
  t.ok(got.subarray(0, 4096).equals(Buffer.alloc(4096, 4)), 'page 0 as last written')
  t.ok(got.subarray(MiB, MiB + 8192).equals(Buffer.concat([Buffer.alloc(4096, 1), Buffer.alloc(4096, 3)])), 'the later of two writes to one place last')
  await nextTurn()
  const after = [0, 1].map((i) => pwriteData(fh, path, i * 4096, Buffer.alloc(4096, 5)))
  for (const w of after) t.ok(await settledThisTurn(w), 'the batch done: cached pages through the mapping again')
})

t.test('a file cut short under its mapping: the copy\'s fault (SIGBUS) is caught, never a crash, and the write still lands', { skip: mappedOff }, async (t) => {
  const { path, fh } = await cachedFile(t, 7)
  const n = loadNative()
  const map = n.mapFile(fh.fd, 2 * MiB)
  t.type(map, 'object', 'mapped')
  t.teardown(() => n.unmapFile(map as FileMapping))
  await nextTurn()
  await pwriteData(fh, path, 0, Buffer.alloc(4096, 1)) // maps it for pwriteData too
  truncateSync(path, 4096) // by another open: the mapping's pages past it are gone
  // the check may pass: a large folio cut through keeps its pages past the end cached
  t.ok([1, -14].includes(n.mappedWrite(map as FileMapping, MiB, Buffer.alloc(4096, 2))), 'past the end, checked: not tried (not cached), or the fault caught')
  t.equal(n.mappedWrite(map as FileMapping, MiB, Buffer.alloc(4096, 2), false), -14, 'past the end, unchecked: the fault is caught (-EFAULT)')
  await pwriteData(fh, path, MiB, Buffer.alloc(4096, 3))
  const got = readFileSync(path)
  t.equal(got.length, MiB + 4096, 'the write past the end extended the file, as a pwrite does')
  t.ok(got.subarray(MiB).equals(Buffer.alloc(4096, 3)), 'its bytes there')
  t.ok(got.subarray(0, 4096).equals(Buffer.alloc(4096, 1)), 'the first write kept')
  n.unmapFile(map as FileMapping)
  t.equal(n.mappedWrite(map as FileMapping, 0, Buffer.alloc(1)), -9, 'an unmapped mapping: -EBADF, no access')
  t.throws(() => n.mappedWrite({} as FileMapping, 0, Buffer.alloc(1)), TypeError, 'not a mapping: a TypeError')
})

t.test('a hole written through the mapping on a full filesystem: the fault (SIGBUS, ENOSPC) is caught and the write fails NoSpace, typed', { skip: mappedOff ?? (process.getuid?.() !== 0 ? 'not root: mounting a small ext4 (mount -o loop) needs root' : undefined) }, async (t) => {
  const dir = tmp(t)
  const img = join(dir, 'fs.img')
  const mnt = join(dir, 'mnt')
  mkdirSync(mnt)
  writeFileSync(img, '')
  truncateSync(img, 16 * MiB)
  sh('mkfs.ext4', ['-q', img])
  const m = shStatus('mount', ['-o', 'loop', img, mnt])
  if (m.status !== 0) {
    t.comment(`SKIP mount -o loop failed here: ${m.stderr}`)
    return
  }
  t.teardown(() => void shStatus('umount', [mnt]))
  const path = join(mnt, 'disk.raw')
  writeFileSync(path, '')
  truncateSync(path, 2 * MiB)
  readFileSync(path) // ext4 caches a hole it reads as zero pages: they pass the cache check
  const fh = await openFile(path, 'r+')
  t.teardown(() => (unmapFile(fh), fh.close()))
  const filler = openSync(join(mnt, 'fill'), 'w')
  for (const size of [MiB, 4096]) {
    try {
      for (;;) writeSync(filler, Buffer.alloc(size, 1))
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e
    }
  }
  closeSync(filler)
  const n = loadNative()
  const map = n.mapFile(fh.fd, 2 * MiB) as FileMapping
  t.teardown(() => n.unmapFile(map))
  t.equal(n.mappedWrite(map, 4096, Buffer.alloc(4096, 1)), -14, 'a cached hole, no block to give it: the fault is caught')
  await nextTurn()
  await t.rejects(pwriteData(fh, path, 8192, Buffer.alloc(4096, 2)), { code: 'NoSpace', message: /ENOSPC/ }, 'through pwriteData: NoSpace, naming the error')
  t.equal(readFileSync(path).subarray(0, 3 * 4096).indexOf(2), -1, 'nothing of it landed')
})

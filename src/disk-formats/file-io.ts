import { readSync, writeSync } from 'node:fs'
import { getSystemErrorMap } from 'node:util'
import { open, type FileHandle } from 'node:fs/promises'
import { fromSystemError, StorageError } from './errors.js'
import { loadNative } from './native.js'

/**
 * Adaptive I/O. A small pread/pwrite served from the page cache takes a few microseconds, but
 * going through libuv's thread pool costs ~40 µs of hand-off — most of a QD1 request's latency.
 * So requests up to SYNC_MAX bytes are done synchronously while they stay fast. When SLOW_STRIKES
 * of them within STRIKE_WINDOW_MS take longer than SLOW_NS (cache misses, write throttling), all
 * I/O goes to the thread pool for ASYNC_HOLD_MS, so a slow disk cannot stall the event loop again
 * and again. One slow call alone is not enough: on a busy machine the process is sometimes
 * preempted in the middle of a fast call, which is no reason to give up the fast path for a second.
 * While a sync runs (duringSync: fdatasync, fsync, a folder's sync) all I/O goes to the thread
 * pool too: a write that needs the filesystem's journal (one that allocates, or extends a file)
 * waits for the sync's commit, ~10 ms on ext4, and done synchronously that wait would stall every
 * client of the process instead of one request (a snapshot's syncs stalled a QD1 writer ~9 ms).
 * TANDEM_SYNC_IO=0 turns the fast path off.
 */
const SYNC_MAX = 64 * 1024
const SLOW_NS = 300_000n
const SLOW_STRIKES = 3
const STRIKE_WINDOW_MS = 100
const ASYNC_HOLD_MS = 1000
const syncEnabled = process.env.TANDEM_SYNC_IO !== '0'
let asyncUntil = 0
let strikes = 0
let firstStrikeAt = 0
/** syncs of this process under way */
let syncing = 0

function trySync(length: number): boolean {
  return syncEnabled && syncing === 0 && length <= SYNC_MAX && (asyncUntil === 0 || performance.now() >= asyncUntil)
}

/** Runs `sync` (an fsync, fdatasync or a folder's sync); meanwhile small I/O takes the thread pool. */
export async function duringSync<T>(sync: () => Promise<T>): Promise<T> {
  syncing++
  try {
    return await sync()
  } finally {
    syncing--
  }
}

function timed<T>(fn: () => T): T {
  const t0 = process.hrtime.bigint()
  const r = fn()
  if (process.hrtime.bigint() - t0 > SLOW_NS) {
    const now = performance.now()
    if (now - firstStrikeAt > STRIKE_WINDOW_MS) {
      firstStrikeAt = now
      strikes = 0
    }
    if (++strikes >= SLOW_STRIKES) {
      asyncUntil = now + ASYNC_HOLD_MS
      strikes = 0
    }
  }
  return r
}

/** Opens a file, turning OS errors into StorageErrors that name the file. */
export async function openFile(path: string, flags: string, mode?: number): Promise<FileHandle> {
  try {
    return await open(path, flags, mode)
  } catch (e) {
    throw fromSystemError(e, path, 'Could not open')
  }
}

/** pread that fills `length` bytes, zero-filling past end of file. */
export async function preadFull(fh: FileHandle, file: string, position: number, length: number, into?: Buffer, at = 0): Promise<Buffer> {
  const buf = into ?? Buffer.alloc(length)
  let done = 0
  if (trySync(length)) {
    try {
      return timed(() => {
        while (done < length) {
          const n = readSync(fh.fd, buf, at + done, length - done, position + done)
          if (n === 0) {
            buf.fill(0, at + done, at + length)
            break
          }
          done += n
        }
        return buf
      })
    } catch (e) {
      throw fromSystemError(e, file, 'Could not read')
    }
  }
  try {
    while (done < length) {
      const { bytesRead } = await fh.read(buf, at + done, length - done, position + done)
      if (bytesRead === 0) {
        buf.fill(0, at + done, at + length)
        break
      }
      done += bytesRead
    }
  } catch (e) {
    throw fromSystemError(e, file, 'Could not read')
  }
  return buf
}

/**
 * Write batching. Under a queue of small writes (an iSCSI or NBD client at QD32), doing each
 * synchronously keeps the event loop in pwrite ~half its time while the other core idles, and
 * the thread pool per write costs a hand-off each. So the first small write of an event-loop turn
 * is done synchronously (a QD1 client sees the fast path), and the others of the turn, and every
 * one while a batch is under way, are queued and written by one thread-pool job per batch
 * (native writeBatch, in order). One batch runs at a time; the next starts when it ends. Measured
 * (iSCSI 4 KiB random writes at QD32, libiscsi load): the event loop's share of the run ~100 % ->
 * ~55 %, ~5 % more IOPS, less CPU per write.
 *
 * A batch takes half the writes waiting (at least BATCH_MIN): while it runs, the writes of the
 * batch before it are answered and the client's next requests arrive, so the event loop and the
 * pool work at once instead of taking turns (a whole queue per batch left each idle while the
 * other ran). Measured the same way: 13–14k IOPS -> 16–21k, against tgtd's 12–15k.
 * TANDEM_WRITE_BATCH=0 turns batching off.
 */
interface QueuedWrite {
  /** the batch's duplicate of the file's fd */
  fd: number
  position: number
  data: Buffer
  file: string
  resolve: () => void
  reject: (e: unknown) => void
}
const batchEnabled = syncEnabled && process.env.TANDEM_WRITE_BATCH !== '0'
/** writes waiting for the next batch */
let queued: QueuedWrite[] = []
/** the queued writes' duplicates of their files' fds (closed by the batch) */
let queuedFds = new Map<FileHandle, number>()
let batchRunning = false
/** the fewest writes a batch takes of those waiting (it takes half of them, or all when fewer) */
const BATCH_MIN = 8
/** small writes seen this event-loop turn (reset by a setImmediate the first one schedules) */
let turnWrites = 0

function newTurn(): void {
  turnWrites = 0
}

function runBatch(): void {
  if (batchRunning || queued.length === 0) return
  const take = Math.max(BATCH_MIN, Math.ceil(queued.length / 2))
  const batch = queued.length > take ? queued.splice(0, take) : queued
  if (batch === queued) {
    queued = []
    queuedFds = new Map()
  } else {
    // the batch closes its fds: the writes left behind get duplicates of their own
    const again = new Map<number, number>()
    const left: QueuedWrite[] = []
    for (const w of queued) {
      let fd = again.get(w.fd)
      if (fd === undefined) again.set(w.fd, (fd = loadNative().dupFd(w.fd)))
      if (fd < 0) {
        w.reject(fromSystemError(errnoError(-fd), w.file, 'Could not write'))
        continue
      }
      w.fd = fd
      left.push(w)
    }
    queued = left
    for (const [fh, fd] of queuedFds) {
      const kept = again.get(fd)
      if (kept === undefined || kept < 0) queuedFds.delete(fh)
      else queuedFds.set(fh, kept)
    }
  }
  batchRunning = true
  const n = batch.length
  const fds = new Int32Array(n)
  const offsets = new Float64Array(n)
  const errs = new Int32Array(n)
  const bufs: Buffer[] = []
  for (let i = 0; i < n; i++) {
    fds[i] = batch[i].fd
    offsets[i] = batch[i].position
    bufs.push(batch[i].data)
  }
  const settle = (failed: unknown) => {
    batchRunning = false
    for (let i = 0; i < n; i++) {
      const w = batch[i]
      if (failed !== undefined) w.reject(fromSystemError(failed, w.file, 'Could not write'))
      else if (errs[i] !== 0) w.reject(fromSystemError(errnoError(errs[i]), w.file, 'Could not write'))
      else w.resolve()
    }
    runBatch()
  }
  let job: Promise<void>
  try {
    job = loadNative().writeBatch(fds, offsets, bufs, errs)
  } catch (e) {
    settle(e)
    return
  }
  job.then(() => settle(undefined), settle)
}

/** A Node-style system error for errno `errno` (what fs calls reject with). */
function errnoError(errno: number): NodeJS.ErrnoException {
  const [code, message] = getSystemErrorMap().get(-errno) ?? ['EIO', 'i/o error']
  const e: NodeJS.ErrnoException = new Error(`${code}: ${message}, write`)
  e.code = code
  e.errno = -errno
  e.syscall = 'write'
  return e
}

/** Queues a small write for the next batch (batching, above). */
function queueWrite(fh: FileHandle, file: string, position: number, data: Buffer): Promise<void> {
  // The batch writes through its own duplicate of the fd, made now: closing `fh` before the batch
  // runs, and the number's reuse by another open, cannot send these bytes elsewhere.
  let fd = queuedFds.get(fh)
  if (fd === undefined) {
    fd = loadNative().dupFd(fh.fd)
    if (fd < 0) return Promise.reject(fromSystemError(errnoError(-fd), file, 'Could not write'))
    queuedFds.set(fh, fd)
  }
  return new Promise<void>((resolve, reject) => {
    queued.push({ fd: fd!, position, data, file, resolve, reject })
    if (!batchRunning && queued.length === 1) setImmediate(runBatch)
  })
}

/**
 * pwriteFull for a disk's data: a small one may join a batch (above). Not for a file this process
 * holds POSIX (fcntl F_SETLK) locks on, such as a lockspace: the batch's duplicate fd is closed when
 * it ends, and closing any fd of a file drops the process's POSIX locks on it (OFD locks, which the
 * image locks are, belong to the open file and stay).
 */
export function pwriteData(fh: FileHandle, file: string, position: number, data: Buffer): Promise<void> {
  // the native batch refuses all its writes for one bad offset, and a pwrite at -1 writes at the
  // file's current position: such a write fails alone, here
  if (!Number.isSafeInteger(position) || position < 0) return Promise.reject(new StorageError('InvalidArgument', `Could not write '${file}': offset ${position} is not a byte offset`, file))
  if (batchEnabled && data.length <= SYNC_MAX) {
    if (turnWrites++ === 0) setImmediate(newTurn)
    if (turnWrites > 1 || batchRunning || queued.length > 0 || !trySync(data.length)) return queueWrite(fh, file, position, data)
  }
  return pwriteFull(fh, file, position, data)
}

/** pwrite that writes every byte or throws. */
export async function pwriteFull(fh: FileHandle, file: string, position: number, data: Buffer): Promise<void> {
  let done = 0
  if (trySync(data.length)) {
    try {
      timed(() => {
        while (done < data.length) done += writeSync(fh.fd, data, done, data.length - done, position + done)
      })
      return
    } catch (e) {
      throw fromSystemError(e, file, 'Could not write')
    }
  }
  try {
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done)
      done += bytesWritten
    }
  } catch (e) {
    throw fromSystemError(e, file, 'Could not write')
  }
}

/**
 * Copies `length` bytes at `position` of the open file `fd` into `out` at `outPosition`, in the
 * kernel (native.ts copyRange); errors name the file written.
 */
export async function copyRange(fd: number, position: number, out: FileHandle, file: string, outPosition: number, length: number): Promise<void> {
  try {
    await loadNative().copyRange(fd, position, out.fd, outPosition, length)
  } catch (e) {
    throw fromSystemError(e, file, 'Could not write')
  }
}

export async function fileSize(fh: FileHandle, file: string): Promise<number> {
  try {
    return (await fh.stat()).size
  } catch (e) {
    throw fromSystemError(e, file, 'Could not stat')
  }
}

export async function datasync(fh: FileHandle, file: string): Promise<void> {
  try {
    await duringSync(() => fh.datasync())
  } catch (e) {
    throw fromSystemError(e, file, 'Could not flush')
  }
}

const ZEROS = Buffer.alloc(1 << 16)

/** True when every byte of buf[start, end) is zero (memcmp against a zero page, 64 KiB at a time). */
export function isZero(buf: Buffer, start = 0, end = buf.length): boolean {
  for (let i = start; i < end; i += ZEROS.length) {
    const n = Math.min(ZEROS.length, end - i)
    if (buf.compare(ZEROS, 0, n, i, i + n) !== 0) return false
  }
  return true
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

/** Little-endian uint32 entries of a buffer, copied into an aligned array. */
export function toU32(buf: Buffer): Uint32Array {
  const out = new Uint32Array(buf.length >> 2)
  if (LITTLE_ENDIAN) new Uint8Array(out.buffer).set(buf.subarray(0, out.length * 4))
  else for (let i = 0; i < out.length; i++) out[i] = buf.readUInt32LE(i * 4)
  return out
}

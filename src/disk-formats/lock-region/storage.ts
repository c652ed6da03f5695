import { realpath } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { Mutex } from 'async-mutex'
import { fromSystemError, StorageError } from '../errors.js'
import { datasync, fileSize, openFile, preadFull, pwriteFull } from '../file-io.js'
import type { FileHandle } from 'node:fs/promises'

const require = createRequire(import.meta.url)
const fsExt = require('fs-ext') as {
  fcntl(fd: number, cmd: string, arg: number, cb: (err: Error | null) => void): void
  constants: { F_RDLCK: number; F_WRLCK: number; F_UNLCK: number }
}

/**
 * Shared storage for a lockspace (DESIGN §6). `compareAndWrite` is atomic against every other
 * operation on the storage from every host; `write` is used only for a host's own heartbeat slot
 * (and by the owner of a managed lock). Writes are durable when they resolve.
 */
export interface LockStorage {
  readonly size: number
  readonly name: string
  read(offset: number, length: number): Promise<Buffer>
  /**
   * `durable: false` (heartbeats): visible to every other host when it resolves, not necessarily
   * on stable storage — a liveness signal needs no fsync, and must not wait behind one.
   */
  write(offset: number, data: Buffer, opts?: { durable?: boolean }): Promise<void>
  compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean>
  close(): Promise<void>
}

interface SharedFile {
  fh: FileHandle
  mutex: Mutex
  refs: number
  /** fdatasyncs under way (they run outside the mutex): the last close waits for them */
  syncs: Set<Promise<void>>
}

/**
 * fcntl locks belong to the process, and closing any descriptor of the file drops them; so each
 * file is opened once per process and every LockStorage on it shares that descriptor and an
 * in-process mutex (two async callers would otherwise both "hold" the fcntl lock).
 */
const files = new Map<string, Promise<SharedFile>>()

function fcntl(fd: number, cmd: string, type: number): Promise<void> {
  return new Promise((res, rej) => fsExt.fcntl(fd, cmd, type, (e) => (e ? rej(e) : res())))
}

export interface FileLockStorageOptions {
  /**
   * How long an operation waits, ms, for the file's fcntl lock while another process holds it
   * (default 1000: half the default lease, so a renewal fails — and is tried again at the next
   * heartbeat — well before the lease runs out). Past it the operation fails with Busy.
   */
  lockWaitMs?: number
}

/** Polling interval bounds while another process holds the file's lock (it holds it for microseconds, unless stopped). */
const LOCK_POLL_MIN_MS = 1
const LOCK_POLL_MAX_MS = 16

/** A lockspace in a file on a local or POSIX shared filesystem: read-compare-write under an fcntl lock, then fdatasync. */
export class FileLockStorage implements LockStorage {
  private constructor(
    readonly name: string,
    private readonly key: string,
    private readonly shared: SharedFile,
    readonly size: number,
    private readonly lockWaitMs: number,
  ) {}

  static async open(path: string, o: FileLockStorageOptions = {}): Promise<FileLockStorage> {
    let key: string
    try {
      key = await realpath(path)
    } catch {
      throw new StorageError('NotFound', `lockspace '${path}' does not exist (create it with 'tandem lock init --lockspace ${path}')`, path)
    }
    let p = files.get(key)
    if (!p) {
      p = openFile(key, 'r+').then((fh) => ({ fh, mutex: new Mutex(), refs: 0, syncs: new Set<Promise<void>>() }))
      files.set(key, p)
      p.catch(() => files.delete(key))
    }
    const shared = await p
    shared.refs++
    return new FileLockStorage(path, key, shared, await fileSize(shared.fh, path), o.lockWaitMs ?? 1000)
  }

  /**
   * Takes the file's fcntl lock by polling F_SETLK, never by F_SETLKW: a process stopped (SIGSTOP)
   * or hung while it holds the lock would otherwise stall every host of the file for as long, each
   * with a thread of libuv's pool blocked in the kernel. Past `lockWaitMs` this fails with Busy,
   * which the lock manager treats as storage it cannot reach (a failed renewal; an attempt that
   * fails and may be tried again).
   */
  private async lockFile(fd: number, type: number): Promise<void> {
    const start = performance.now()
    for (let pause = LOCK_POLL_MIN_MS; ; pause = Math.min(2 * pause, LOCK_POLL_MAX_MS)) {
      try {
        return await fcntl(fd, 'setlk', type)
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code
        if (code !== 'EAGAIN' && code !== 'EACCES') throw fromSystemError(e, this.name, 'lock')
      }
      const waited = performance.now() - start
      if (waited >= this.lockWaitMs) {
        throw new StorageError('Busy', `lockspace '${this.name}': another process has held its file lock for ${Math.round(waited)} ms (stopped or hung while writing it?); try again`, this.name)
      }
      await new Promise((r) => setTimeout(r, Math.min(pause, this.lockWaitMs - waited)))
    }
  }

  private async locked<T>(type: number, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    return this.shared.mutex.runExclusive(async () => {
      const fd = this.shared.fh.fd
      await this.lockFile(fd, type)
      try {
        return await fn(this.shared.fh)
      } finally {
        await fcntl(fd, 'setlk', fsExt.constants.F_UNLCK)
      }
    })
  }

  /**
   * A read past the end of a file that shrank since it was opened fails (Corrupt): a lockspace
   * truncated under its hosts is never read as free records. (A file too small from the start
   * reads as zeros past its end, and its header decoder says what is wrong with it.)
   */
  read(offset: number, length: number): Promise<Buffer> {
    return this.locked(fsExt.constants.F_RDLCK, async (fh) => {
      const size = await fileSize(fh, this.name)
      if (size < this.size && offset + length > size) {
        throw new StorageError('Corrupt', `lockspace '${this.name}' is truncated: ${size} bytes, ${this.size} expected`, this.name)
      }
      return preadFull(fh, this.name, offset, length)
    })
  }

  /**
   * The write happens under the lock; the fdatasync after it is released, so that no host's
   * heartbeat or read ever waits behind another host's sync (a stalled fsync would otherwise
   * stall the whole lockspace — sanlock's "storage latency kills workloads").
   */
  async write(offset: number, data: Buffer, opts: { durable?: boolean } = {}): Promise<void> {
    const after = await this.locked(fsExt.constants.F_WRLCK, async (fh) => {
      await pwriteFull(fh, this.name, offset, data)
      return { synced: opts.durable !== false ? this.startSync() : undefined }
    })
    await after.synced
  }

  /**
   * The sync of a write just done, started before the lock and the queue are let go and awaited
   * after: a close that takes the queue next finds it among the syncs it waits for. (Started after,
   * it could begin once the close had the queue and had closed the file: "file closed".)
   */
  private startSync(): Promise<void> {
    const p = this.sync()
    p.catch(() => undefined) // awaited by the caller once the lock is released; not unhandled meanwhile
    return p
  }

  /** fdatasync of the shared descriptor, which the last close waits for. */
  private sync(): Promise<void> {
    const { syncs } = this.shared
    const p = datasync(this.shared.fh, this.name)
    const tracked = p.then(
      () => undefined,
      () => undefined,
    )
    syncs.add(tracked)
    void tracked.then(() => syncs.delete(tracked))
    return p
  }

  async compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    const after = await this.locked(fsExt.constants.F_WRLCK, async (fh) => {
      const now = await preadFull(fh, this.name, offset, expected.length)
      if (!now.equals(expected)) return { ok: false }
      await pwriteFull(fh, this.name, offset, data)
      return { ok: true, synced: this.startSync() }
    })
    await after.synced
    return after.ok
  }

  /** Makes every write so far durable (the `durable: false` ones included). */
  flush(): Promise<void> {
    return this.sync()
  }

  /** The last handle of a file closes it once the operations queued on it, and their syncs, have ended. */
  async close(): Promise<void> {
    if (--this.shared.refs === 0) {
      files.delete(this.key)
      await this.shared.mutex.runExclusive(async () => {
        await Promise.all(this.shared.syncs)
        await this.shared.fh.close()
      })
    }
  }
}

/** A filter adding delay to every operation (slow-storage fault injection), DESIGN §11. */
export function delayedStorage(next: LockStorage, delayMs: () => number): LockStorage {
  const wait = () => new Promise((r) => setTimeout(r, delayMs()))
  return {
    size: next.size,
    name: next.name,
    read: async (o, l) => (await wait(), next.read(o, l)),
    write: async (o, d, w) => (await wait(), next.write(o, d, w)),
    compareAndWrite: async (o, e, d) => (await wait(), next.compareAndWrite(o, e, d)),
    close: () => next.close(),
  }
}

/** A filter counting operations (tests: a managed handover issues no compare-and-write). */
export function countingStorage(next: LockStorage): LockStorage & { counts: { read: number; write: number; cas: number } } {
  const counts = { read: 0, write: 0, cas: 0 }
  return {
    counts,
    size: next.size,
    name: next.name,
    read: (o, l) => (counts.read++, next.read(o, l)),
    write: (o, d, w) => (counts.write++, next.write(o, d, w)),
    compareAndWrite: (o, e, d) => (counts.cas++, next.compareAndWrite(o, e, d)),
    close: () => next.close(),
  }
}

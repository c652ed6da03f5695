import { statSync } from 'node:fs'
import type { BlockDevice, ComparesAndWrites, Extent, WriteOptions } from '../disk-formats/block-device.js'
import { StorageError } from '../disk-formats/errors.js'
import type { LockStorage } from '../disk-formats/lock-region/index.js'

/** The lockspace file's storage, as the server's LockspaceView has it open (FileLockStorage). */
export type LockspaceFile = LockStorage & { flush(): Promise<void> }

/**
 * The lockspace file as a BlockDevice, exported as the LUN `iqn.2026-11.local.tandem:lockspace`.
 * Every operation goes through the file's LockStorage — the one the server's LockspaceView has
 * open now (`current`) — so the LU's COMPARE AND WRITE is the same fcntl-locked compare-and-write
 * that hosts using the file directly take: one atomicity domain. WRITE with FUA is durable when
 * it completes; without, after SYNCHRONIZE CACHE. While the view has no storage open (between
 * losing the lockspace and rejoining it, a few seconds) every operation fails with Busy: NOT READY
 * to an initiator, which a host's lock manager takes as storage it cannot reach for now, as it
 * takes a file lock held too long.
 */
export class LockspaceDevice implements BlockDevice, ComparesAndWrites {
  readonly readOnly = false

  /**
   * `path` is the lockspace's file: its size is the LU's capacity while no storage is open, so that
   * READ CAPACITY answers and the initiator's first read gets the NOT READY that says why.
   */
  constructor(
    private readonly current: () => LockspaceFile | null,
    private readonly path: string,
  ) {}

  private get storage(): LockspaceFile {
    const s = this.current()
    if (!s) throw new StorageError('Busy', 'the server has the lockspace closed while it rejoins it; try again')
    return s
  }

  /** the capacity last seen open, or from one stat of the file: not a stat per command while closed */
  private known = -1

  get size(): number {
    const s = this.current()
    if (s) return (this.known = s.size)
    if (this.known < 0) {
      try {
        this.known = statSync(this.path).size
      } catch {
        return 0
      }
    }
    return this.known
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return this.storage.read(offset, length)
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.storage.write(offset, data, { durable: opts?.fua === true })
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    return this.storage.write(offset, Buffer.alloc(length), { durable: false })
  }

  /** Advisory, and the file is small: nothing is deallocated. */
  async discard(): Promise<void> {}

  async flush(): Promise<void> {
    return this.storage.flush()
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return length ? [{ offset, length, data: true, zero: false, depth: 0, present: true }] : []
  }

  async compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    return this.storage.compareAndWrite(offset, expected, data)
  }

  /** The storage belongs to the LockspaceView, which closes it. */
  async close(): Promise<void> {}
}

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
 * it completes; without, after SYNCHRONIZE CACHE. While the view has no storage open, every
 * operation fails (IoError).
 */
export class LockspaceDevice implements BlockDevice, ComparesAndWrites {
  readonly readOnly = false

  constructor(private readonly current: () => LockspaceFile | null) {}

  private get storage(): LockspaceFile {
    const s = this.current()
    if (!s) throw new StorageError('IoError', 'the lockspace is not open')
    return s
  }

  get size(): number {
    return this.current()?.size ?? 0
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

import { open, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import type { BlockDevice, ComparesAndWrites, Extent, WriteOptions } from '../disk-formats/block-device.js'
import { regionSize } from '../disk-formats/lock-region/index.js'
import { FileLockStorage, initLockspace, LockManager, type HostView, type LockView } from '../client/locks/index.js'

export interface LockspaceView {
  readonly path: string
  /** the lockspace file as a device (the iSCSI LUN of the lockspace) */
  readonly device: LockspaceDevice
  view(): Promise<{ hosts: HostView[]; locks: LockView[] }>
  close(): Promise<void>
}

const DEFAULTS = { maxHosts: 64, maxLocks: 256 }

/**
 * The datastore's lockspace, `.tandem/lockspace`, created and initialised at first start. The
 * server does not join it; it watches it (a read every heartbeat) so that heartbeat ages and
 * liveness in the REST API are judged on the server's own monotonic clock.
 */
export async function openLockspaceView(datastore: string, log: Logger): Promise<LockspaceView> {
  const path = join(datastore, '.tandem', 'lockspace')
  const exists = await stat(path).then(() => true, () => false)
  if (!exists) {
    const fh = await open(path, 'wx')
    await fh.truncate(regionSize(DEFAULTS))
    await fh.close()
    const s = await FileLockStorage.open(path)
    try {
      await initLockspace(s, DEFAULTS)
    } finally {
      await s.close()
    }
    log.info({ path }, 'lockspace created')
  }
  const storage = await FileLockStorage.open(path)
  const watcher = new LockManager(storage, 'tandem-serve')
  await watcher.view() // validates the header: a foreign or damaged lockspace is refused at start
  const timer = setInterval(() => void watcher.view().catch((e) => log.warn({ err: e }, 'lockspace read failed')), watcher.header.heartbeatMs)
  timer.unref()
  return {
    path,
    device: new LockspaceDevice(storage),
    view: () => watcher.view(),
    close: async () => {
      clearInterval(timer)
      await storage.close()
    },
  }
}

/**
 * The lockspace file as a BlockDevice, exported as the LUN `iqn.2026-11.local.tandem:lockspace`.
 * Every operation goes through the file's LockStorage, so the LU's COMPARE AND WRITE is the same
 * fcntl-locked compare-and-write that hosts using the file directly take: one atomicity domain.
 * WRITE with FUA is durable when it completes; without, after SYNCHRONIZE CACHE.
 */
export class LockspaceDevice implements BlockDevice, ComparesAndWrites {
  readonly readOnly = false

  constructor(private readonly storage: FileLockStorage) {}

  get size(): number {
    return this.storage.size
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.storage.read(offset, length)
  }

  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.storage.write(offset, data, { durable: opts?.fua === true })
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.storage.write(offset, Buffer.alloc(length), { durable: false })
  }

  /** Advisory, and the file is small: nothing is deallocated. */
  async discard(): Promise<void> {}

  flush(): Promise<void> {
    return this.storage.flush()
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return length ? [{ offset, length, data: true, zero: false, depth: 0, present: true }] : []
  }

  compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    return this.storage.compareAndWrite(offset, expected, data)
  }

  /** The storage belongs to the LockspaceView, which closes it. */
  async close(): Promise<void> {}
}

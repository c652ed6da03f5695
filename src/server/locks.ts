import { open, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { regionSize } from '../disk-formats/lock-region/index.js'
import { FileLockStorage, initLockspace, LockManager, type HostView, type LockView } from '../client/locks/index.js'
import { LockspaceDevice } from './lockspace-device.js'

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
    device: new LockspaceDevice(() => storage),
    view: () => watcher.view(),
    close: async () => {
      clearInterval(timer)
      await storage.close()
    },
  }
}

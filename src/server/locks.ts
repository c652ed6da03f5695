import { open, stat } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import type { Logger } from 'pino'
import { isStorageError, StorageError } from '../disk-formats/errors.js'
import { FileLockStorage, initLockspace, LockManager, NAME_BYTES, backgroundClock, regionSize, type HostView, type LockView } from '../disk-formats/lock-region/index.js'
import { LockspaceDevice } from './lockspace-device.js'

/** Thrown by `view` while the lockspace cannot be used; the REST API answers 503 with its message. */
export class LockspaceUnavailable extends StorageError {
  readonly unavailable = true
}
/** StorageError's instanceof is a brand check that every StorageError passes: test the mark instead. */
export const isLockspaceUnavailable = (e: unknown): e is LockspaceUnavailable => isStorageError(e) && (e as { unavailable?: unknown }).unavailable === true

export interface LockspaceView {
  readonly path: string
  /** the lockspace file as a device (the iSCSI LUN of the lockspace) */
  readonly device: LockspaceDevice
  /** This server's host name in the lockspace. */
  readonly hostName: string
  /** Hosts and locks; throws LockspaceUnavailable (with the reason) while the lockspace is damaged or not joined. */
  view(): Promise<{ hosts: HostView[]; locks: LockView[] }>
  /**
   * Takes the exclusive lock `disk/<disk>` for a disk opened for writing and resolves to its
   * release. Refused (Busy) while another live host holds it. While the lockspace is unusable the
   * disk is served without the lock (logged), and the lock is taken once the lockspace is back.
   */
  holdDisk(disk: string): Promise<() => Promise<void>>
  /** Releases every lock and leaves the lockspace. */
  close(): Promise<void>
}

const DEFAULTS = { maxHosts: 64, maxLocks: 256 }
/** How often an unusable lockspace is tried again. */
const RETRY_MS = 2000

export const diskLockName = (disk: string) => `disk/${disk}`

/** The default host name of a server: `serve@<machine>`, cut to the slot's 64 bytes. */
export function defaultLockHost(): string {
  return Buffer.from(`serve@${hostname()}`).subarray(0, NAME_BYTES).toString('utf8').replace(/\uFFFD$/, '')
}

/**
 * A file that was never initialised (missing, empty, or all zero: a first start that crashed
 * before the header was written) is initialised; a damaged one (anything else that does not
 * decode) is left alone for the operator. Returns what was done, for the log.
 */
async function initialiseIfBlank(path: string): Promise<'created' | 'initialised' | null> {
  const st = await stat(path).catch(() => null)
  if (st && st.size > 0) {
    const fh = await open(path, 'r')
    try {
      const chunk = Buffer.alloc(1 << 20)
      for (let at = 0; at < st.size; at += chunk.length) {
        const { bytesRead } = await fh.read(chunk, 0, chunk.length, at)
        if (!chunk.subarray(0, bytesRead).every((b) => b === 0)) return null
      }
    } finally {
      await fh.close()
    }
  }
  const fh = await open(path, 'a+')
  try {
    await fh.truncate(regionSize(DEFAULTS))
  } finally {
    await fh.close()
  }
  const s = await FileLockStorage.open(path)
  try {
    await initLockspace(s, DEFAULTS)
  } catch (e) {
    if (!(isStorageError(e) && e.code === 'Exists')) throw e // Exists: a concurrent first start won
  } finally {
    await s.close()
  }
  return st ? 'initialised' : 'created'
}

/**
 * The datastore's lockspace, `.tandem/lockspace`. The server joins it as a host (its heartbeat
 * also watches the others, so liveness is judged on the server's own clock) and holds `disk/<name>`
 * for each disk open for writing. A damaged lockspace never stops the server: disks are served,
 * the lock routes report the reason, and the lockspace is tried again every few seconds.
 */
export async function openLockspaceView(datastore: string, log: Logger, hostName = defaultLockHost()): Promise<LockspaceView> {
  const path = join(datastore, '.tandem', 'lockspace')
  let storage: FileLockStorage | null = null
  let mgr: LockManager | null = null
  let joined: Promise<void> | null = null
  /** m.join() has not returned yet */
  let joining = false
  let problem: string | null = 'not opened yet'
  let retry: NodeJS.Timeout | null = null
  let closed = false
  /** disks open for writing, and whether their lock is held */
  const wanted = new Map<string, { holders: number; held: boolean }>()

  const take = async (m: LockManager, disk: string) => {
    await m.acquire(diskLockName(disk))
    const w = wanted.get(disk)
    if (w) w.held = true
    else await m.release(diskLockName(disk)) // closed meanwhile
  }

  const drop = async (reason: string) => {
    problem = reason
    const s = storage
    mgr?.halt()
    mgr = null
    joined = null
    storage = null
    for (const w of wanted.values()) w.held = false
    await s?.close().catch(() => undefined)
    if (!closed && !retry) {
      retry = setTimeout(() => {
        retry = null
        void start()
      }, RETRY_MS)
      retry.unref()
    }
  }

  const start = async (): Promise<void> => {
    if (closed) return
    try {
      const done = await initialiseIfBlank(path)
      // a new datastore's lockspace is routine; one found empty is a repair worth a warning
      if (done === 'created') log.info({ path }, 'lockspace created')
      else if (done) log.warn({ path }, 'lockspace was never initialised (empty or all zero): initialised')
      storage = await FileLockStorage.open(path)
      const m = new LockManager(storage, hostName, backgroundClock)
      await m.view() // the header and the region's size: a damaged lockspace is reported, not joined
      mgr = m
      problem = null
      m.onFence = (reason) => {
        log.error({ reason }, 'lockspace: this server lost its lease; disk locks are taken again when it rejoins')
        if (mgr === m) void drop(`this server lost its lease (${reason}); rejoining`)
      }
      joined = (async () => {
        // a live process under our name is another server on this datastore: report it, try again later
        joining = true
        await m.join({ waitMs: 2 * m.header.leaseMs }).finally(() => (joining = false))
        log.info({ path, host: hostName, slot: m.slot }, 'lockspace joined')
        for (const [d, w] of wanted) {
          if (!w.held) await take(m, d).catch((e: Error) => log.error({ disk: d, err: e.message }, 'lockspace: could not take the lock of an open disk'))
        }
      })()
      // joining waits out a crashed earlier incarnation (a lease): in the background, not at start
      joined.catch(async (e: Error) => {
        if (mgr !== m) return
        log.error({ path, reason: e.message }, 'lockspace: could not join; disks are served without their locks')
        await drop(e.message)
      })
    } catch (e) {
      const reason = (e as Error).message
      if (problem !== reason) log.error({ path, reason }, 'lockspace unusable: disks are served without their locks until it is repaired')
      await drop(reason)
    }
  }

  await start()
  // Damage that appears while joined (a truncated or overwritten file) is noticed here, and the
  // lockspace is then tried afresh like one damaged at start (so moving the file aside repairs it).
  const health = setInterval(() => {
    const m = mgr
    if (!m || problem) return
    m.view().catch((e: unknown) => {
      if (mgr !== m || !isStorageError(e) || !['Corrupt', 'BadMagic', 'Unsupported'].includes(e.code)) return
      log.error({ path, reason: e.message }, 'lockspace damaged: disks are served without their locks until it is repaired')
      void drop(e.message)
    })
  }, RETRY_MS)
  health.unref()

  return {
    path,
    hostName,
    device: new LockspaceDevice(() => storage, path),
    async view() {
      const m = mgr
      if (!m || problem) throw new LockspaceUnavailable('IoError', `the lockspace '${path}' is unusable: ${problem}`)
      try {
        return await m.view()
      } catch (e) {
        throw new LockspaceUnavailable('IoError', `the lockspace '${path}' is unusable: ${(e as Error).message}`)
      }
    },
    async holdDisk(disk) {
      // one lock per disk, however many handles (an evicted handle may still be closing)
      const w = wanted.get(disk)
      if (w) w.holders++
      else {
        wanted.set(disk, { holders: 1, held: false })
        const j = joined
        const m = mgr
        if (j && m) {
          await j.catch(() => undefined)
          // joining takes the locks of the disks already wanted, this one included
          if (mgr === m && !problem && !wanted.get(disk)?.held) {
            try {
              await take(m, disk)
            } catch (e) {
              if (isStorageError(e) && e.code === 'Busy' && mgr === m) {
                wanted.delete(disk)
                throw new StorageError('Busy', `disk '${disk}' is in use by another host: ${e.message}`)
              }
              log.warn({ disk, err: (e as Error).message }, 'lockspace: disk served without its lock')
            }
          }
        }
        if (!wanted.get(disk)?.held) log.warn({ disk, problem }, 'lockspace unusable: disk opened for writing without its lock')
      }
      let released = false
      return async () => {
        const x = wanted.get(disk)
        if (released || !x) return
        released = true
        if (--x.holders > 0) return
        wanted.delete(disk)
        if (x.held && mgr && mgr.heldLocks().some((h) => h.name === diskLockName(disk))) {
          await mgr.release(diskLockName(disk)).catch((e: Error) => log.error({ disk, err: e.message }, 'lockspace: could not release a disk lock'))
        }
      }
    },
    async close() {
      closed = true
      clearInterval(health)
      if (retry) clearTimeout(retry)
      // a join still waiting (out a crashed incarnation's lease) stops; its waits keep the process alive
      if (joining) mgr?.halt()
      await joined?.catch(() => undefined)
      if (mgr) await mgr.leave().catch((e: Error) => log.error({ err: e.message }, 'lockspace: leaving failed'))
      mgr = null
      await storage?.close()
      storage = null
    },
  }
}

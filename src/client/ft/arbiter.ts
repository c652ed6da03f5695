import { StorageError } from '../../disk-formats/errors.js'
import { LockManager, type LockStorage } from '../../disk-formats/lock-region/index.js'
import { openLockStorage } from '../locks/open-storage.js'
import type { ScsiPath } from '../vm/scsi-path.js'
import { preemptAndAbort, register, takeOver, unregister } from './fence.js'
import type { Arbiter } from './run-ft.js'

/** The lock record of a VM: `vm/<name>` (DESIGN §8). */
export const vmLockName = (vm: string) => `vm/${vm}`

/**
 * The persistent-reservation key of a pair's side at a lock generation (ft/SPEC.md "Storage
 * fence"): distinct for the two sides, and new at every generation.
 */
export function fenceKey(generation: number, role: 'primary' | 'backup'): bigint {
  return (BigInt(generation) << 2n) | (role === 'primary' ? 1n : 2n)
}

export interface LockArbiterOptions {
  /** the lockspace (a file or iscsi:// LU) holding `vm/<name>` */
  lockspace: string
  /** this side's host name in the lockspace */
  host: string
  vm: string
  role: 'primary' | 'backup'
  /** the VM's disk as a SCSI path to the real LU: the winner fences the other side there */
  fenceDisk?: ScsiPath
  log?: (msg: string) => void
}

/**
 * An arbiter on the on-disk lock manager: the primary holds `vm/<name>` (exclusive) and tells the
 * backup its generation; on losing each other both `claim` it from that generation by one
 * compare-and-write, and exactly one wins. With a disk reached over iSCSI, the primary registers
 * and reserves it (WRITE EXCLUSIVE – REGISTRANTS ONLY), the backup registers, and the winner
 * preempts and aborts the loser's key: a deposed primary's late writes are refused.
 */
export async function lockArbiter(o: LockArbiterOptions): Promise<Arbiter & { close(): Promise<void>; manager: LockManager }> {
  let storage: LockStorage
  try {
    storage = await openLockStorage(o.lockspace)
  } catch (e) {
    throw new StorageError('IoError', `the FT lockspace ${o.lockspace}: ${(e as Error).message}`)
  }
  const mgr = new LockManager(storage, o.host)
  const name = vmLockName(o.vm)
  let generation = -1
  try {
    await mgr.join({ waitMs: 10_000 })
    if (o.role === 'primary') {
      generation = (await mgr.acquire(name, { waitMs: 0 })).generation
      // a reservation left by an earlier generation (crashed, or stopped without giving it back) is taken over
      if (o.fenceDisk) await takeOver(o.fenceDisk, fenceKey(generation, 'primary'))
    }
  } catch (e) {
    await mgr.leave().catch(() => undefined)
    await storage.close().catch(() => undefined)
    throw e
  }
  let started = generation
  let keep = false
  /** the claim's outcome (undefined: no claim made) */
  let won: boolean | undefined
  return {
    keep: () => void (keep = true),
    // a lockspace busy now (a file lock held by a stopped process) may answer later; a lapsed lease will not
    retryable: (e) => e instanceof StorageError && e.code === 'Busy',
    manager: mgr,
    get generation() {
      return generation
    },
    async claim(g: number): Promise<boolean> {
      started = g
      if (o.role === 'backup' && o.fenceDisk) await register(o.fenceDisk, fenceKey(g, 'backup')).catch(() => undefined)
      const held = await mgr.claim(name, g)
      won = held !== null
      if (held) generation = held.generation
      o.log?.(held ? `claimed ${name}: generation ${held.generation}` : `${name} has moved on from generation ${g}: the other side has it`)
      return held !== null
    },
    async fence(): Promise<void> {
      if (!o.fenceDisk) return
      const me = fenceKey(started, o.role)
      const victim = fenceKey(started, o.role === 'primary' ? 'backup' : 'primary')
      await preemptAndAbort(o.fenceDisk, me, victim)
      o.log?.(`fenced the other side's key on the disk (PREEMPT AND ABORT)`)
    },
    async close(): Promise<void> {
      // the VM ends here (not handed over, not lost): its disk is given back for the next start
      const holds = won === true || (o.role === 'primary' && won === undefined)
      if (!keep && o.fenceDisk && holds) await unregister(o.fenceDisk, fenceKey(started, o.role)).catch(() => undefined)
      if (!keep) await mgr.release(name).catch(() => undefined)
      await mgr.leave().catch(() => undefined)
      await storage.close().catch(() => undefined)
    },
  }
}

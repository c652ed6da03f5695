import { closeSync, fstatSync, openSync } from 'node:fs'
import { fromSystemError, StorageError } from './errors.js'
import { F_RDLCK, F_UNLCK, F_WRLCK, loadNative, type Native } from './native.js'

/**
 * qemu's image locking, both ways: the byte-range locks qemu (block/file-posix.c) takes on every
 * image file it opens, taken by Tandem too, so that qemu-img/qemu-io refuse to write a file Tandem
 * has open for writing and Tandem refuses a file qemu holds.
 *
 * The locks are open-file-description fcntl locks (F_OFD_SETLK) of one byte each:
 *   100 + i  held (shared) while the opener USES permission i
 *   200 + i  held (shared) while the opener does NOT SHARE permission i with others
 * with i: 0 consistent read, 1 write, 2 write-unchanged, 3 resize (qemu's BLK_PERM_* bit order).
 * An opener first takes its own bytes, then tests the others' (as qemu does, so that of two
 * openers racing at least one sees the other): for each permission it uses, byte 200+i must be
 * free of other holders; for each it does not share, byte 100+i.
 *
 * Tandem's openers: 'write' uses read, write, write-unchanged and resize and shares neither write
 * nor resize (qemu-io's default for a writable image); 'read' uses consistent read and does not
 * share write or resize (qemu-img info/check without -U, and every backing file of a chain).
 * `forceShare` (-U) takes no locks, as qemu's force-share does.
 *
 * Within one process every opener of a file (by device and inode) shares one lock descriptor
 * holding the union of their bytes: the datastore coordinates its own users, and OFD locks of one
 * open file description never conflict with each other.
 */
export type ImageLockMode = 'read' | 'write'

export interface ImageLock {
  /** Gives this opener's locks back (idempotent); the last one closes the lock descriptor. */
  release(): void
}

/**
 * qemu's `-U`/`--force-share` for this whole process: images are opened without taking or testing
 * locks (read-only inspection of an image another process has open). Set by the CLI's -U.
 */
export const imageLocking = { forceShare: false }

const PERM_BASE = 100
const SHARED_BASE = 200
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'] as const
const READ = 1
const WRITE = 2
const WRITE_UNCHANGED = 4
const RESIZE = 8

const MODES: Record<ImageLockMode, { perm: number; unshared: number }> = {
  write: { perm: READ | WRITE | WRITE_UNCHANGED | RESIZE, unshared: WRITE | RESIZE },
  read: { perm: READ, unshared: WRITE | RESIZE },
}

interface Entry {
  fd: number
  path: string
  /** one mode per live opener */
  holders: Map<number, ImageLockMode>
}

const entries = new Map<string, Entry>()
let nextId = 1

function union(e: Entry): { perm: number; unshared: number } {
  let perm = 0
  let unshared = 0
  for (const m of e.holders.values()) {
    perm |= MODES[m].perm
    unshared |= MODES[m].unshared
  }
  return { perm, unshared }
}

/** Sets this descriptor's 8 lock bytes to exactly `perm` and `unshared`. */
function apply(n: Native, e: Entry, perm: number, unshared: number): void {
  for (let i = 0; i < PERM_NAMES.length; i++) {
    for (const [base, bits] of [
      [PERM_BASE, perm],
      [SHARED_BASE, unshared],
    ] as const) {
      const want = bits & (1 << i) ? F_RDLCK : F_UNLCK
      const err = n.setlk(e.fd, base + i, 1, want)
      if (err !== 0) {
        if (want === F_RDLCK) throw conflict(e.path, i, base === SHARED_BASE)
        throw new StorageError('IoError', `Could not unlock byte ${base + i} of '${e.path}': errno ${err}`, e.path)
      }
    }
  }
}

/** A lock held by another open file description that conflicts with `perm`/`unshared`. */
function check(n: Native, e: Entry, perm: number, unshared: number): void {
  for (let i = 0; i < PERM_NAMES.length; i++) {
    // someone who does not share a permission we use
    if (perm & (1 << i) && n.getlk(e.fd, SHARED_BASE + i, 1, F_WRLCK) !== F_UNLCK) throw conflict(e.path, i, false)
    // someone who uses a permission we do not share
    if (unshared & (1 << i) && n.getlk(e.fd, PERM_BASE + i, 1, F_WRLCK) !== F_UNLCK) throw conflict(e.path, i, true)
  }
}

function conflict(path: string, i: number, shared: boolean): StorageError {
  return new StorageError(
    'Busy',
    `Failed to get ${shared ? 'shared ' : ''}"${PERM_NAMES[i]}" lock on '${path}': is another process using the image? ` +
      `(qemu-style image lock; -U/--force-share opens it read-only without locks)`,
    path,
  )
}

/**
 * Takes `mode`'s image locks on `path` for one opener. Throws StorageError 'Busy' naming the file
 * and the permission when another process holds a conflicting lock (nothing is left locked).
 */
export function lockImage(path: string, mode: ImageLockMode): ImageLock {
  if (imageLocking.forceShare) return { release() {} }
  const n = loadNative()
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (e) {
    throw fromSystemError(e, path, 'Could not open')
  }
  const st = fstatSync(fd)
  const key = `${st.dev}:${st.ino}`
  let e = entries.get(key)
  if (e) closeSync(fd)
  else {
    e = { fd, path, holders: new Map() }
    entries.set(key, e)
  }
  const before = union(e)
  const id = nextId++
  e.holders.set(id, mode)
  const after = union(e)
  try {
    if (after.perm !== before.perm || after.unshared !== before.unshared) {
      apply(n, e, after.perm, after.unshared)
      check(n, e, after.perm, after.unshared)
    }
  } catch (err) {
    e.holders.delete(id)
    settle(n, key, e)
    throw err
  }
  let released = false
  const entry = e
  return {
    release() {
      if (released) return
      released = true
      entry.holders.delete(id)
      settle(n, key, entry)
    },
  }
}

/** After a holder left: back to the remaining union, or close the descriptor (dropping every lock). */
function settle(n: Native, key: string, e: Entry): void {
  if (e.holders.size === 0) {
    entries.delete(key)
    closeSync(e.fd)
    return
  }
  const u = union(e)
  try {
    apply(n, e, u.perm, u.unshared)
  } catch {
    // taking fewer locks than before cannot conflict; an unlock error leaves a stricter lock
  }
}

/** The locks of one image's files (a descriptor and its extents), taken and given back together. */
export function lockImageFiles(): ImageLock & { add(path: string, mode: ImageLockMode): void } {
  const held: ImageLock[] = []
  return {
    add(path, mode) {
      held.push(lockImage(path, mode))
    },
    release() {
      for (const l of held.splice(0)) l.release()
    },
  }
}

/**
 * What another process holds on `path`, from outside (for messages and tests): the permissions
 * some other opener uses and the ones some other opener does not share.
 */
export function probeImageLocks(path: string): { used: string[]; unshared: string[] } {
  const n = loadNative()
  const fd = openSync(path, 'r')
  try {
    const used: string[] = []
    const unshared: string[] = []
    for (let i = 0; i < PERM_NAMES.length; i++) {
      if (n.getlk(fd, PERM_BASE + i, 1, F_WRLCK) !== F_UNLCK) used.push(PERM_NAMES[i])
      if (n.getlk(fd, SHARED_BASE + i, 1, F_WRLCK) !== F_UNLCK) unshared.push(PERM_NAMES[i])
    }
    return { used, unshared }
  } finally {
    closeSync(fd)
  }
}


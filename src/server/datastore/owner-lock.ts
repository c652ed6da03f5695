import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { StorageError } from '../../disk-formats/errors.js'
import { F_UNLCK, F_WRLCK, loadNative } from '../../disk-formats/native.js'

/** Who serves a datastore: written into its owner-lock file while the lock is held. */
export interface DatastoreOwner {
  pid: number
  host: string
  since: string
}

export interface OwnerLock {
  release(): void
}

const LOCK_FILE = 'serve.lock'

/**
 * One `tandem serve` per datastore: an exclusive open-file-description lock on
 * `.tandem/serve.lock`, held for the server's life (the kernel drops it when the process dies, so
 * a killed server leaves nothing to clean up). A second server — in this process or another, on
 * this host or another sharing the folder over a filesystem with POSIX locks — fails at start,
 * naming the holder recorded in the file.
 */
export function holdDatastore(dir: string): OwnerLock {
  const n = loadNative()
  const meta = join(dir, '.tandem')
  mkdirSync(meta, { recursive: true })
  const path = join(meta, LOCK_FILE)
  const fd = openSync(path, 'a+')
  const err = n.setlk(fd, 0, 1, F_WRLCK)
  if (err !== 0) {
    closeSync(fd)
    throw new StorageError('Busy', `datastore '${dir}' is in use by ${describe(path)}; one tandem serve per datastore`, path)
  }
  const owner: DatastoreOwner = { pid: process.pid, host: hostname(), since: new Date().toISOString() }
  ftruncateSync(fd, 0)
  writeSync(fd, JSON.stringify(owner) + '\n', 0)
  let released = false
  return {
    release() {
      if (released) return
      released = true
      n.setlk(fd, 0, 1, F_UNLCK)
      closeSync(fd)
    },
  }
}

function describe(path: string): string {
  try {
    const o = JSON.parse(readFileSync(path, 'utf8')) as Partial<DatastoreOwner>
    return `tandem serve (pid ${o.pid} on host ${o.host}, since ${o.since})`
  } catch {
    return 'another tandem serve (its record is not readable yet)'
  }
}

import { open, type FileHandle } from 'node:fs/promises'
import { createRequire, syncBuiltinESMExports } from 'node:module'

/**
 * Stops every change this process makes to files after a given number of them, as a SIGKILL (or a
 * full disk) there would. A change is a FileHandle write, datasync, truncate; an open that creates
 * or truncates; mkdir, rename, unlink, rm, writeFile. Set TANDEM_SYNC_IO=0 before the code under
 * test loads, so that its writes go through FileHandles (file-io.ts) and are seen here.
 *
 * - `arm(allow, 'kill')`: after `allow` changes, every change fails (the process is dead; the
 *   test then drops its objects and opens the files afresh, as a restarted server would);
 * - `arm(allow, 'ENOSPC')`: after `allow` changes, every change that needs space fails with
 *   ENOSPC, as on a full file system: writes and truncates past the end of a file, creating
 *   files and folders, renames. Overwrites in place, datasync, unlink and rm still work.
 */
export interface FsFaults {
  arm(allow: number, mode: 'kill' | 'ENOSPC'): void
  /** makes every stat and readdir take `ms` longer (0: off), to widen a race's window */
  slow(ms: number): void
  disarm(): void
  /** changes seen since arm */
  readonly steps: number
  /** changes refused since arm */
  readonly refused: number
}

type Fn = (...a: unknown[]) => unknown
const needsSpace = new Set(['write', 'writev', 'writeFile', 'appendFile', 'truncate', 'open', 'mkdir', 'rename'])

export async function fsFaults(): Promise<FsFaults> {
  let allow = Infinity
  let mode: 'kill' | 'ENOSPC' = 'kill'
  let steps = 0
  let refused = 0
  let armed = false
  /** true when this change may go ahead */
  const step = (kind: string): boolean => {
    if (!armed) return true
    if (++steps <= allow) return true
    if (mode === 'ENOSPC' && !needsSpace.has(kind)) return true
    refused++
    return false
  }
  const fail = (kind: string) =>
    Promise.reject(Object.assign(new Error(mode === 'kill' ? `${kind}: the process was killed (test)` : `ENOSPC: no space left on device, ${kind} (test)`), { code: mode === 'kill' ? 'EIO' : 'ENOSPC' }))
  const wrap = (obj: Record<string, unknown>, key: string, counts: (args: unknown[]) => boolean = () => true) => {
    const orig = obj[key] as Fn
    obj[key] = function (this: unknown, ...args: unknown[]) {
      if (counts(args) && !step(key)) return fail(key)
      return orig.apply(this, args)
    }
  }
  /** FileHandle writes and truncates: in ENOSPC mode, refused only when they need new space. */
  const wrapSized = (obj: Record<string, unknown>, key: string, end: (args: unknown[]) => number | undefined) => {
    const orig = obj[key] as Fn
    obj[key] = async function (this: FileHandle, ...args: unknown[]) {
      if (!step(key)) {
        const e = end(args)
        if (mode === 'kill' || e === undefined || e > (await this.stat()).size) return fail(key)
        refused-- // in place: no space needed after all
      }
      return orig.apply(this, args)
    }
  }
  const probe = await open(process.execPath, 'r')
  const proto = Object.getPrototypeOf(probe) as Record<string, unknown>
  await probe.close()
  wrapSized(proto, 'write', (a) => (Buffer.isBuffer(a[0]) && typeof a[2] === 'number' && typeof a[3] === 'number' ? a[3] + a[2] : undefined))
  wrapSized(proto, 'truncate', (a) => (typeof a[0] === 'number' ? a[0] : 0))
  for (const k of ['writev', 'writeFile', 'appendFile', 'datasync', 'sync']) wrap(proto, k)
  const fsp = createRequire(import.meta.url)('node:fs/promises') as Record<string, unknown>
  const creates = (args: unknown[]) => typeof args[1] === 'string' && /[wax]/.test(args[1])
  wrap(fsp, 'open', creates)
  for (const k of ['mkdir', 'rename', 'unlink', 'rm', 'writeFile', 'appendFile', 'truncate']) wrap(fsp, k)
  let lag = 0
  for (const k of ['stat', 'readdir']) {
    const orig = fsp[k] as Fn
    fsp[k] = async function (this: unknown, ...args: unknown[]) {
      if (lag > 0) await new Promise((r) => setTimeout(r, lag))
      return orig.apply(this, args)
    }
  }
  syncBuiltinESMExports()
  return {
    arm(n, m) {
      allow = n
      mode = m
      steps = 0
      refused = 0
      armed = true
    },
    slow(ms) {
      lag = ms
    },
    disarm() {
      armed = false
    },
    get steps() {
      return steps
    },
    get refused() {
      return refused
    },
  }
}

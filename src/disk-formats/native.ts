import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** fcntl lock types (Linux values; native/ofd-lock.c refuses to build where they differ). */
export const F_RDLCK = 0
export const F_WRLCK = 1
export const F_UNLCK = 2

/** Tandem's native addon (native/*.c, built by `npm install` through binding.gyp). */
export interface Native {
  /** F_OFD_SETLK: 0, or the errno (EAGAIN/EACCES when a conflicting lock is held) */
  setlk(fd: number, start: number, len: number, type: number): number
  /** F_OFD_GETLK: the type of a conflicting lock, F_UNLCK when none, or -errno */
  getlk(fd: number, start: number, len: number, type: number): number
  /**
   * Copies `length` bytes at `inOffset` of file `inFd` to `outOffset` of `outFd` on the thread
   * pool: copy_file_range(2) (the kernel copies once), else pread/pwrite. Bytes past the end of
   * the input are written as zeros. Rejects with an Error carrying `code` (ENOSPC, EIO...).
   */
  copyRange(inFd: number, inOffset: number, outFd: number, outOffset: number, length: number): Promise<void>
  /**
   * flags[i] = 1 when block i of [offset, offset+length) of file `fd` reads as all zeros: block 0
   * is `first` bytes, the others `block` (the last may be shorter). Reads a block's first 4 KiB
   * first, so data that does not start with zeros is hardly read.
   */
  zeroBlocks(fd: number, offset: number, length: number, first: number, block: number, flags: Uint8Array): Promise<void>
  /**
   * zeroBlocks, then every run of blocks that are not all zero copied (as copyRange) to the same
   * place relative to `outOffset` of `outFd`; the all-zero blocks are not written. One job.
   */
  copyData(fd: number, offset: number, length: number, first: number, block: number, flags: Uint8Array, outFd: number, outOffset: number): Promise<void>
  /**
   * Attaches a classic BPF program (struct sock_filter, 8 bytes each, this machine's byte order)
   * to socket `fd` (SO_ATTACH_FILTER), or detaches its filter when `program` is empty: 0 or the errno.
   */
  setSocketFilter(fd: number, program: Buffer): number
  /**
   * Writes bufs[i] whole at offsets[i] of fds[i], in order, in one thread-pool job; errs[i] = 0 or
   * the errno of write i. The fds are the batch's own (from dupFd): it closes each distinct one
   * when it ends, or at once when the call is refused (native/write-batch.c).
   */
  writeBatch(fds: Int32Array, offsets: Float64Array, bufs: Buffer[], errs: Int32Array): Promise<void>
  /** A duplicate of `fd` (close-on-exec), or -errno (-EBADF for -1 or a closed fd). */
  dupFd(fd: number): number
}

let native: Native | null = null

/**
 * Loads the addon on first use, found from this module's folder upwards (the same search works
 * from dist/src/disk-formats and from the bundled CLI in dist/src/client/cli).
 */
export function loadNative(): Native {
  if (native) return native
  let dir = dirname(fileURLToPath(import.meta.url))
  for (;;) {
    const p = join(dir, 'build', 'Release', 'tandem_native.node')
    if (existsSync(p)) return (native = createRequire(import.meta.url)(p) as Native)
    const up = dirname(dir)
    if (up === dir) throw new Error('tandem_native.node not found: run `npm install` (it builds the native addon with node-gyp)')
    dir = up
  }
}

import { closeSync, openSync, readSync } from 'node:fs'
import { UNCLEAN_SHUTDOWN_OFFSET } from '../../src/disk-formats/vmdk/sparse-header.js'

/** The uncleanShutdown byte of a hosted sparse file, read from the file as it is on disk now. */
export function uncleanByte(path: string): number {
  const fd = openSync(path, 'r')
  try {
    const b = Buffer.alloc(1)
    readSync(fd, b, 0, 1, UNCLEAN_SHUTDOWN_OFFSET)
    return b[0]
  } finally {
    closeSync(fd)
  }
}

import { createRequire } from 'node:module'

/** lseek(2) whence values for sparse files; Linux's (macOS swaps them, so other systems get no holes). */
const SEEK_DATA = 3
const SEEK_HOLE = 4
const SUPPORTED = process.platform === 'linux'

type SeekSync = (fd: number, position: number, whence: number) => number
let seekLoaded: SeekSync | undefined
/** fs-ext's seekSync calls lseek(fd, position, whence) with whence unchanged; loaded on first use. */
const seek: SeekSync = (fd, position, whence) =>
  (seekLoaded ??= (createRequire(import.meta.url)('fs-ext') as { seekSync: SeekSync }).seekSync)(fd, position, whence)

/** A run of a file's bytes: stored (`data`), or a hole that reads as zeros. */
export interface DataRun {
  offset: number
  length: number
  data: boolean
}

/**
 * The data and hole runs of bytes [start, end) of an open file, from SEEK_DATA / SEEK_HOLE: one
 * lseek pair per data run, no reads. Bytes past the end of the file are a hole (they read as
 * zeros). Where the file system or the platform cannot tell, the whole range is data.
 * Synchronous: lseek answers from the file system's extent map, not from the data.
 */
export function dataRuns(fd: number, start: number, end: number): DataRun[] {
  if (end <= start) return []
  if (!SUPPORTED) return [{ offset: start, length: end - start, data: true }]
  const out: DataRun[] = []
  let pos = start
  try {
    while (pos < end) {
      let data: number
      try {
        data = seek(fd, pos, SEEK_DATA)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENXIO') throw e
        data = end // no data at or after pos: a hole to the end of the file and past it
      }
      data = Math.min(data, end)
      if (data > pos) out.push({ offset: pos, length: data - pos, data: false })
      if (data >= end) break
      const hole = Math.min(seek(fd, data, SEEK_HOLE), end)
      out.push({ offset: data, length: hole - data, data: true })
      pos = hole
    }
  } catch {
    // EINVAL/EOPNOTSUPP (no sparse-file support): report what is left as data.
    out.push({ offset: pos, length: end - pos, data: true })
  }
  return out
}

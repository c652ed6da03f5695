import { open, unlink, type FileHandle } from 'node:fs/promises'
import { readInto, type BlockDevice, type Extent, type WritesFromFile } from '../block-device.js'
import { fromSystemError, StorageError } from '../errors.js'
import { isZero } from '../file-io.js'
import { loadNative } from '../native.js'
import { RawFile } from '../raw/index.js'
import { createVmdk } from '../vmdk/create.js'
import type { AdapterType, Subformat } from '../vmdk/new-descriptor.js'
import { StreamWriter } from '../vmdk/stream-writer.js'
import { VmdkImage } from '../vmdk/vmdk-image.js'

export interface ConvertOptions {
  to: 'raw' | 'vmdk'
  subformat?: Subformat
  adapterType?: AdapterType
  zeroedGrain?: boolean
  /** called after each chunk with bytes processed so far */
  onProgress?: (done: number, total: number) => void
  /** bytes per chunk (default 4 MiB) */
  chunk?: number
  /**
   * chunks in flight (default 2: one is read while another is written). 4 bought nothing on a
   * 2-core machine: concurrent pwrites to one file queue on its inode lock (perf shows waiters
   * spinning in rwsem_spin_on_owner) and twice the buffers pass through the cache; in 3 batches
   * of 5–6 alternating runs (machine shared, noisy) 2 used as much CPU as 4 or less.
   */
  parallel?: number
  /**
   * fdatasync the output before returning (default false: like qemu-img convert, whose output
   * cache mode defaults to 'unsafe'; the data is in the page cache when convert returns)
   */
  sync?: boolean
}

export interface Target {
  /** writes a chunk's bytes at `offset`; all-zero grains have already been cut out */
  write(offset: number, data: Buffer): Promise<void>
  /** takes bytes straight from a file (the output file or device: a local raw or VMDK image) */
  fromFile?: WritesFromFile
  /** true when the target must receive chunks strictly in order (streamOptimized) */
  ordered: boolean
  finish(): Promise<void>
  abort(): Promise<void>
}

const GRAIN = 65536

/**
 * Copies the content of `src` into a new image at `dst`, or into an existing device (an NBD
 * export, an iSCSI LU: qemu-img convert -n). Ranges the source reports as zero or unallocated are
 * not read; all-zero 64 KiB blocks of data are not written, so the output is sparse. Memory stays
 * bounded by chunk × parallel whatever the disk size.
 */
export async function convert(src: BlockDevice, dst: string | BlockDevice, opts: ConvertOptions): Promise<void> {
  const chunk = opts.chunk ?? 4 << 20
  const parallel = opts.parallel ?? 2
  const target = typeof dst === 'string' ? await openTarget(src.size, dst, opts) : await deviceTarget(src.size, dst)
  // Where the target takes bytes from a file, data stored in files is copied by the kernel (by an
  // addon built with these copies: one built before they were added copies through the process).
  const files = target.fromFile && typeof loadNative().copyData === 'function' ? new SourceFiles() : null
  try {
    let done = 0
    // For ordered targets each chunk's write waits for the previous chunk's; the slot in this
    // chain is taken when the chunk is taken (synchronously, in address order), not after its read.
    let lastWrite: Promise<void> = Promise.resolve()
    // Chunks are taken one after the other, in address order: a worker resumes with its chunk
    // (and takes its slot in the chain) before the next next() starts.
    const chunks = dataChunks(src, chunk, (skipped) => {
      done += skipped
      opts.onProgress?.(done, src.size)
    })
    let taking = Promise.resolve<IteratorResult<[number, number]> | null>(null)
    let failed = false
    const worker = async () => {
      // One buffer per worker, reused: fresh multi-MiB buffers per chunk cost more in page
      // faults than the copy itself.
      const buf = Buffer.allocUnsafe(Math.min(chunk, src.size))
      for (;;) {
        if (failed) break
        const took = (taking = taking.then(() => chunks.next()))
        const r = await took
        if (r!.done) break
        const [offset, length] = r!.value
        const after = lastWrite
        let release!: () => void
        let fail!: (e: unknown) => void
        const mine = new Promise<void>((res, rej) => {
          release = res
          fail = rej
        })
        mine.catch(() => undefined)
        lastWrite = mine
        try {
          const status = await src.blockStatus(offset, length)
          const data = status.filter((e) => e.data && !e.zero)
          const copy = async (o: number, n: number, at: number) => {
            await readInto(src, o, n, buf, at)
            for (const [ro, b] of nonZeroRuns(o, buf.subarray(at, at + n))) await target.write(ro, b)
          }
          if (files && data.every(inLocalFile)) {
            for (const e of data) await copyInKernel(e, files, target.fromFile!, (o, n) => copy(o, n, o - offset))
          } else {
            await Promise.all(data.map((e) => readInto(src, e.offset, e.length, buf, e.offset - offset)))
            if (target.ordered) await after
            for (const e of data) {
              for (const [o, b] of nonZeroRuns(e.offset, buf.subarray(e.offset - offset, e.offset - offset + e.length))) await target.write(o, b)
            }
          }
          release()
        } catch (e) {
          failed = true
          fail(e)
          throw e
        }
        done += length
        opts.onProgress?.(done, src.size)
      }
    }
    // Every worker ends before the files close or the output goes: a copy still on the thread
    // pool must not find its descriptor closed, or reused by another file.
    const ends = await Promise.allSettled(Array.from({ length: parallel }, worker))
    const bad = ends.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (bad) throw bad.reason
    await files?.close()
    await target.finish()
  } catch (e) {
    await files?.close()
    await target.abort()
    throw e
  }
}

/** A URI (nbd://…): a network disk names itself as the extents' file, as qemu-img map shows it. */
const URI = /^[a-z][a-z0-9+.-]*:\/\//i

/** The extent's bytes lie at a known offset of a local file (not compressed, not on a server). */
export const inLocalFile = (e: Extent) => e.file !== undefined && e.hostOffset !== undefined && !URI.test(e.file)

/** The source's files, opened read-only by name when an extent first names one (copyInKernel, commit). */
export class SourceFiles {
  private readonly open = new Map<string, Promise<FileHandle>>()

  fd(path: string): Promise<number> {
    let fh = this.open.get(path)
    if (!fh) {
      fh = open(path, 'r').catch((e) => {
        throw fromSystemError(e, path, 'Could not open')
      })
      this.open.set(path, fh)
    }
    return fh.then((h) => h.fd)
  }

  async close(): Promise<void> {
    await Promise.all([...this.open.values()].map((p) => p.then((h) => h.close()).catch(() => undefined)))
  }
}

/**
 * Copies a data extent that lies in one file (`file` at `hostOffset`) into the target in the
 * kernel: its all-zero 64 KiB blocks found (zeroBlocks, which reads little of other data) and
 * left out, every run of other blocks copied file to file: in one step into a raw file
 * (writeDataFromFile). A piece an image cannot take (a partial grain at a run's end, grains
 * already allocated) goes through `copy`, which reads and writes it.
 */
async function copyInKernel(e: Extent, files: SourceFiles, to: WritesFromFile, copy: (offset: number, length: number) => Promise<void>): Promise<void> {
  const fd = await files.fd(e.file!)
  const first = Math.min(e.length, GRAIN - (e.offset % GRAIN))
  const zero = new Uint8Array(1 + Math.ceil((e.length - first) / GRAIN))
  if (to.writeDataFromFile) return to.writeDataFromFile(e.offset, e.length, fd, e.hostOffset!, first, GRAIN, zero)
  await loadNative().zeroBlocks(fd, e.hostOffset!, e.length, first, GRAIN, zero)
  const blockStart = (i: number) => (i === 0 ? e.offset : e.offset + first + (i - 1) * GRAIN)
  for (let i = 0; i < zero.length; ) {
    if (zero[i]) {
      i++
      continue
    }
    let j = i
    while (j < zero.length && !zero[j]) j++
    const start = blockStart(i)
    const end = Math.min(e.offset + e.length, blockStart(j))
    // whole 64 KiB blocks apart from the partial ones at the ends: an image takes only whole grains
    const a = Math.ceil(start / GRAIN) * GRAIN
    const b = Math.floor(end / GRAIN) * GRAIN
    for (const [o, p] of a < b ? [[start, a], [a, b], [b, end]] : [[start, end]]) {
      if (p > o && !(await to.writeFromFile(o, p - o, fd, e.hostOffset! + (o - e.offset)))) await copy(o, p - o)
    }
    i = j
  }
}

/** Bytes of block status asked at once when looking for the next data; doubled while none is found. */
const SCAN_WINDOW = 1 << 30
const MAX_SCAN_WINDOW = 64 * SCAN_WINDOW

/**
 * The chunk-aligned [offset, length] pieces of `src` that hold data to copy (data and not known
 * zero), in address order. Everything else is skipped a window at a time, without reading, and
 * reported to `skipped` (bytes), so a sparse 4 TiB source costs a few thousand status queries.
 */
export async function* dataChunks(src: BlockDevice, chunk: number, skipped: (bytes: number) => void): AsyncGenerator<[number, number]> {
  let pos = 0
  let window = SCAN_WINDOW
  while (pos < src.size) {
    const end = Math.min(src.size, pos + Math.max(window, chunk))
    const wanted = (await src.blockStatus(pos, end - pos)).filter((e) => e.data && !e.zero)
    if (wanted.length === 0) window = Math.min(window * 2, MAX_SCAN_WINDOW)
    else window = SCAN_WINDOW
    for (const e of wanted) {
      let c = Math.max(pos, Math.floor(e.offset / chunk) * chunk)
      if (c > pos) skipped(c - pos)
      for (; c < e.offset + e.length; c = Math.min(src.size, c + chunk)) {
        const len = Math.min(chunk, src.size - c)
        pos = c + len
        yield [c, len]
      }
    }
    if (end > pos) skipped(end - pos)
    pos = Math.max(pos, end)
  }
}

/** Splits a buffer at disk offset `off` into runs of whole 64 KiB-aligned blocks that are not all zero. */
export function* nonZeroRuns(off: number, buf: Buffer): Generator<[number, Buffer]> {
  let runStart = -1
  let pos = 0
  while (pos < buf.length) {
    const blockEnd = Math.min(buf.length, (Math.floor((off + pos) / GRAIN) + 1) * GRAIN - off)
    const zero = isZero(buf, pos, blockEnd)
    if (!zero && runStart < 0) runStart = pos
    if (zero && runStart >= 0) {
      yield [off + runStart, buf.subarray(runStart, pos)]
      runStart = -1
    }
    pos = blockEnd
  }
  if (runStart >= 0) yield [off + runStart, buf.subarray(runStart)]
}

/**
 * An existing device as the output: its first `size` bytes are zeroed first (what it held before
 * must not show through the source's holes), then the data is written; flushed at the end.
 */
async function deviceTarget(size: number, dev: BlockDevice): Promise<Target> {
  if (dev.readOnly) throw new StorageError('ReadOnly', 'the output device is read-only')
  if (dev.size < size) throw new StorageError('NoSpace', `the output device is too small: ${dev.size} bytes for a ${size}-byte source`)
  await dev.writeZeroes(0, size, { mayUnmap: true })
  return {
    ordered: false,
    write: (o, b) => dev.write(o, b),
    finish: () => dev.flush(),
    abort: async () => undefined,
  }
}

async function openTarget(size: number, dst: string, opts: ConvertOptions): Promise<Target> {
  if (opts.to === 'raw') {
    const raw = await RawFile.create(dst, size)
    return {
      ordered: false,
      write: (o, b) => raw.write(o, b),
      fromFile: raw,
      finish: async () => {
        if (opts.sync) await raw.flush()
        await raw.close()
      },
      abort: async () => {
        await raw.close().catch(() => undefined)
        await unlink(dst).catch(() => undefined)
      },
    }
  }
  const sub = opts.subformat ?? 'monolithicSparse'
  const roundSize = Math.ceil(size / 512) * 512
  if (sub === 'streamOptimized') {
    const w = await StreamWriter.create(dst, { size: roundSize, adapterType: opts.adapterType })
    const gb = w.grainBytes
    let pending: Buffer | null = null
    let pendingGrain = -1
    return {
      ordered: true,
      // Runs arrive in order; gather them into whole grains before compressing.
      write: async (o, b) => {
        let pos = 0
        while (pos < b.length) {
          const g = Math.floor((o + pos) / gb)
          if (g !== pendingGrain) {
            if (pending) await w.addGrain(pendingGrain, pending)
            pending = Buffer.alloc(Math.min(gb, roundSize - g * gb))
            pendingGrain = g
          }
          const inGrain = o + pos - g * gb
          const n = Math.min(b.length - pos, pending!.length - inGrain)
          b.copy(pending!, inGrain, pos, pos + n)
          pos += n
        }
      },
      finish: async () => {
        if (pending) await w.addGrain(pendingGrain, pending)
        await w.finish(opts.sync ?? false)
      },
      abort: async () => {
        await w.abort()
        await unlink(dst).catch(() => undefined)
      },
    }
  }
  const files = await createVmdk(dst, { size: roundSize, subformat: sub, adapterType: opts.adapterType, zeroedGrain: opts.zeroedGrain })
  const img = await VmdkImage.open(dst)
  img.keepCid() // made just now: no layer names its CID, and its first write needs no descriptor sync
  return {
    ordered: false,
    write: (o, b) => img.write(o, b),
    fromFile: img,
    finish: async () => {
      if (opts.sync) await img.flush()
      await img.close({ sync: opts.sync ?? false })
    },
    abort: async () => {
      await img.close().catch(() => undefined)
      await Promise.all(files.map((f) => unlink(f).catch(() => undefined)))
    },
  }
}

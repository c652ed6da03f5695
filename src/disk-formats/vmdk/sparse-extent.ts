import type { FileHandle } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { promisify } from 'node:util'
import type { ZlibOptions } from 'node:zlib'
import { Mutex } from 'async-mutex'
import type { LRUCache } from 'lru-cache'
import { StorageError } from '../errors.js'
import { copyRange, datasync, fileSize, preadFull, pwriteData, pwriteFull, toU32 } from '../file-io.js'
import {
  COMPRESSION_DEFLATE,
  decodeSparseHeader,
  FLAG_MARKERS,
  FLAG_RGD,
  FLAG_ZEROED_GRAIN,
  GD_AT_END,
  geometry,
  SparseHeaderStruct,
  UNCLEAN_SHUTDOWN_OFFSET,
  type HeaderGeometry,
  type SparseHeader,
} from './sparse-header.js'

/**
 * zlib (with the streams it loads) and lru-cache are loaded when first needed, by stream files
 * and extents over 128 GiB: loading them cost every one-shot command (a cold process) ~2 ms.
 */
const load = createRequire(import.meta.url)
let inflateLoaded: ((buf: Buffer, opts: ZlibOptions) => Promise<Buffer>) | undefined
const inflate = (buf: Buffer, opts: ZlibOptions) => (inflateLoaded ??= promisify((load('node:zlib') as typeof import('node:zlib')).inflate))(buf, opts)
const lruCache = <K extends {}, V extends {}>(max: number): LRUCache<K, V> => new (load('lru-cache') as typeof import('lru-cache')).LRUCache<K, V>({ max })

export type GrainKind = 'data' | 'zero' | 'unallocated'

/** A run of an extent's own address space (bytes, extent-relative) with one state. */
export interface Mapping {
  offset: number
  length: number
  kind: GrainKind
  /** byte offset in the extent file of the first byte (data, uncompressed) or of the grain marker */
  host?: number
  compressed?: boolean
}

/** Writes `n` bytes, `at` bytes into a request, at the extent file's offset `host` (an allocated grain's). */
type PutInPlace = (host: number, at: number, n: number) => Promise<void>

/** Fills out[at, at+length) with the bytes of the layer below for extent-relative `offset`. */
export type FillFn = (offset: number, length: number, out: Buffer, at: number) => Promise<void>

/** GTs cached per extent: 4096 tables of 512 entries is 8 MiB, enough for 128 GiB of hot data. */
const GT_CACHE_TABLES = 4096
/** Decompressed stream grains kept: sequential readers touch each grain several times. */
const GRAIN_CACHE = 16
/** A compressed grain is at most a little larger than the grain (zlib's worst case is +0.1% +12 B). */
const compressedBound = (grainBytes: number) => grainBytes + (grainBytes >> 8) + 1024

/**
 * One hosted sparse extent file (KDMV): monolithicSparse, a twoGbMaxExtentSparse part,
 * or a streamOptimized file (read-only). SPEC.md describes the bytes.
 *
 * Crash-safety contract (SPEC.md §5): a new grain's data is written before its grain-table
 * entry, and a new grain table before its directory entry, so a process killed at any point
 * leaves at worst a leaked grain, never an entry pointing at unwritten data.
 */
export class SparseExtent {
  readonly geo: HeaderGeometry
  readonly capacityBytes: number
  readonly compressed: boolean
  private gd!: Uint32Array
  private rgd: Uint32Array | null = null
  private readonly gts: { get(i: number): Uint32Array | undefined; set(i: number, gt: Uint32Array): unknown; clear(): void }
  private readonly gtLoads = new Map<number, Promise<Uint32Array | null>>()
  private readonly grains: LRUCache<number, Buffer> | null
  private readonly allocLock = new Mutex()
  /** grains being allocated now, each with the promise its allocation resolves */
  private readonly claims = new Map<number, Promise<void>>()
  private nextSector = 0
  private fileSectors: number
  private marked = false
  /** a write failed (ENOSPC, EIO): the file may hold a grain no table names, so the flag stays set */
  private failed = false

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    readonly header: SparseHeader,
    private ro: boolean,
    fileBytes: number,
  ) {
    this.geo = geometry(header)
    this.capacityBytes = header.capacity * 512
    this.compressed = header.compressAlgorithm === COMPRESSION_DEFLATE
    this.fileSectors = Math.ceil(fileBytes / 512)
    // When every table of the extent fits the cache (up to 128 GiB with 64 KiB grains), a Map
    // holds them: lru-cache's bookkeeping cost a one-shot command (a cold process) ~3 ms more.
    this.gts = this.geo.gdEntries <= GT_CACHE_TABLES ? new Map() : lruCache<number, Uint32Array>(GT_CACHE_TABLES)
    this.grains = this.compressed ? lruCache<number, Buffer>(GRAIN_CACHE) : null
  }

  /** Opened read-only, or frozen since. */
  get readOnly(): boolean {
    return this.ro
  }

  get zeroedGrains(): boolean {
    return (this.header.flags & FLAG_ZEROED_GRAIN) !== 0
  }

  /** Reads and validates the header (and the footer of a stream file) and the grain directory. */
  static async open(path: string, fh: FileHandle, readOnly: boolean): Promise<SparseExtent> {
    const size = await fileSize(fh, path)
    const head = await preadFull(fh, path, 0, Math.min(512, size))
    let header = decodeSparseHeader(head, path, Math.ceil(size / 512))
    if (header.gdOffset === GD_AT_END) header = await readFooter(fh, path, size, header)
    if (header.compressAlgorithm === COMPRESSION_DEFLATE && !readOnly) {
      throw new StorageError('ReadOnly', `'${path}': streamOptimized extents are read-only (convert them to write)`, path)
    }
    if (header.version === 3 && header.compressAlgorithm !== COMPRESSION_DEFLATE && !readOnly) {
      throw new StorageError('ReadOnly', `'${path}': VMDK version 3 must be read only`, path)
    }
    const ext = new SparseExtent(path, fh, header, readOnly, size)
    ext.gd = await ext.readDirectory(header.gdOffset, 'grain directory')
    if (header.flags & FLAG_RGD && !ext.compressed) ext.rgd = await ext.readDirectory(header.rgdOffset, 'redundant grain directory')
    ext.nextSector = Math.ceil(ext.fileSectors / header.grainSize) * header.grainSize
    // Marked from the moment it is open for write (also clearing a flag left by a crash at the
    // next clean close).
    if (!readOnly) await ext.markDirty()
    return ext
  }

  private async readDirectory(sector: number, what: string): Promise<Uint32Array> {
    const bytes = this.geo.gdEntries * 4
    if (sector + this.geo.gdSectors > this.fileSectors) {
      throw new StorageError('Corrupt', `'${this.path}': file truncated: ${what} at sector ${sector} (${this.geo.gdSectors} sectors) extends past the end of the file (${this.fileSectors} sectors)`, this.path)
    }
    const buf = await preadFull(this.fh, this.path, sector * 512, bytes)
    return toU32(buf)
  }

  /** The primary GD (copy). */
  directory(): Uint32Array {
    return this.gd.slice()
  }

  redundantDirectory(): Uint32Array | null {
    return this.rgd ? this.rgd.slice() : null
  }

  /** Grain table `i` of the primary directory, or null where the GD entry is 0. */
  async table(i: number): Promise<Uint32Array | null> {
    const hit = this.gts.get(i)
    if (hit) return hit
    const pending = this.gtLoads.get(i)
    if (pending) return pending
    const p = this.loadTable(i).finally(() => this.gtLoads.delete(i))
    this.gtLoads.set(i, p)
    return p
  }

  private async loadTable(i: number): Promise<Uint32Array | null> {
    const sector = this.gd[i]
    if (sector === 0) {
      // A table only ever goes from absent to present in both directories together; one without
      // the other is a damaged directory, not an unallocated range (qemu reads it as zeros).
      if (this.rgd && this.rgd[i] !== 0) {
        throw new StorageError('Corrupt', `'${this.path}': grain directory entry ${i} is 0 but the redundant directory has a table (run check --repair)`, this.path)
      }
      return null
    }
    if (sector + this.geo.gtSectors > this.fileSectors) {
      throw new StorageError('Corrupt', `'${this.path}': grain directory entry ${i} points past the end of the file (sector ${sector}, file has ${this.fileSectors} sectors)`, this.path)
    }
    const gt = toU32(await preadFull(this.fh, this.path, sector * 512, this.header.numGTEsPerGT * 4))
    this.gts.set(i, gt)
    return gt
  }

  /** Interprets a GTE, refusing entries that point into metadata or past the end of the file. */
  private kindOf(gte: number, grain: number): GrainKind {
    if (gte === 0) return 'unallocated'
    if (gte === 1 && this.zeroedGrains) return 'zero'
    if (gte < this.header.overHead) {
      throw new StorageError('Corrupt', `'${this.path}': grain ${grain} points into the metadata (sector ${gte}, data starts at ${this.header.overHead})`, this.path)
    }
    if (gte >= this.fileSectors) {
      throw new StorageError('Corrupt', `'${this.path}': cluster offset for grain ${grain} (sector ${gte}) points after EOF (${this.fileSectors} sectors)`, this.path)
    }
    return 'data'
  }

  /** The extent's own allocation of [offset, offset+length), in runs (block status of this layer). */
  async map(offset: number, length: number): Promise<Mapping[]> {
    const out: Mapping[] = []
    const gb = this.geo.grainBytes
    const per = this.header.numGTEsPerGT
    let pos = offset
    const end = offset + length
    while (pos < end) {
      const grain = Math.floor(pos / gb)
      const gdIdx = Math.floor(grain / per)
      const gt = await this.table(gdIdx)
      // walk all grains of this table synchronously
      const tableEnd = Math.min(end, (gdIdx + 1) * per * gb)
      while (pos < tableEnd) {
        const g = Math.floor(pos / gb)
        const gte = gt ? gt[g % per] : 0
        const kind = this.kindOf(gte, g)
        const inGrain = pos - g * gb
        const len = Math.min(gb - inGrain, tableEnd - pos)
        const last = out[out.length - 1]
        if (kind === 'data' && this.compressed) {
          out.push({ offset: pos, length: len, kind, host: gte * 512, compressed: true })
        } else if (kind === 'data') {
          const host = gte * 512 + inGrain
          if (last && last.kind === 'data' && !last.compressed && last.host! + last.length === host && last.offset + last.length === pos) {
            last.length += len
          } else out.push({ offset: pos, length: len, kind, host })
        } else if (last && last.kind === kind && last.offset + last.length === pos) {
          last.length += len
        } else out.push({ offset: pos, length: len, kind })
        pos += len
      }
    }
    return out
  }

  /** Reads [offset, offset+length) into out[at…]; unallocated runs are filled by `fill`. */
  async readInto(offset: number, length: number, out: Buffer, at: number, fill: FillFn): Promise<void> {
    const maps = await this.map(offset, length)
    await Promise.all(
      maps.map(async (m) => {
        const dst = at + (m.offset - offset)
        switch (m.kind) {
          case 'zero':
            out.fill(0, dst, dst + m.length)
            return
          case 'unallocated':
            return fill(m.offset, m.length, out, dst)
          case 'data':
            if (m.compressed) {
              const g = await this.compressedGrain(m.host! / 512, Math.floor(m.offset / this.geo.grainBytes))
              const inGrain = m.offset % this.geo.grainBytes
              g.copy(out, dst, inGrain, inGrain + m.length)
              return
            }
            await preadFull(this.fh, this.path, m.host!, m.length, out, dst)
        }
      }),
    )
  }

  /** Decompresses the grain whose marker is at `sector` (streamOptimized, SPEC.md §4). */
  async compressedGrain(sector: number, grain: number): Promise<Buffer> {
    const hit = this.grains?.get(sector)
    if (hit) return hit
    const gb = this.geo.grainBytes
    const head = await preadFull(this.fh, this.path, sector * 512, 512)
    const hasMarker = (this.header.flags & FLAG_MARKERS) !== 0
    const lba = hasMarker ? Number(head.readBigUInt64LE(0)) : grain * this.header.grainSize
    const size = hasMarker ? head.readUInt32LE(8) : 0
    const bad = (what: string) => new StorageError('Corrupt', `'${this.path}': compressed grain ${grain} at sector ${sector}: ${what}`, this.path)
    if (!hasMarker) throw bad('compressed extents without grain markers are not supported')
    if (lba !== grain * this.header.grainSize) throw bad(`marker names sector ${lba}, expected ${grain * this.header.grainSize}`)
    if (size === 0 || size > compressedBound(gb)) throw bad(`compressed size ${size} is out of range (1 to ${compressedBound(gb)})`)
    if (sector * 512 + 12 + size > this.fileSectors * 512) throw bad('data extends past the end of the file')
    const comp = await preadFull(this.fh, this.path, sector * 512 + 12, size)
    let data: Buffer
    try {
      data = await inflate(comp, { maxOutputLength: gb })
    } catch (e) {
      throw bad(`zlib data is invalid (${(e as Error).message})`)
    }
    const grainOut = data.length === gb ? data : Buffer.concat([data, Buffer.alloc(Math.max(0, gb - data.length))]).subarray(0, gb)
    this.grains?.set(sector, grainOut)
    return grainOut
  }

  /** Sets uncleanShutdown while the extent is open for write (SPEC.md §5). */
  private async markDirty(): Promise<void> {
    if (this.ro) throw new StorageError('ReadOnly', `'${this.path}' is open read-only`, this.path)
    if (this.marked) return
    this.marked = true
    await pwriteFull(this.fh, this.path, UNCLEAN_SHUTDOWN_OFFSET, Buffer.from([1]))
  }

  /**
   * Writes `data` at extent-relative `offset`. A write into an unallocated grain allocates a
   * whole new grain at the end of the file; the parts of it the write does not cover are
   * filled from the layer below (`fill`), or with zeros for a zeroed grain.
   *
   * Concurrency: a writer claims the grains it allocates (synchronously, after checking they
   * are still unallocated), so two writers never allocate the same grain; a writer that finds
   * a grain claimed waits for that allocation and then writes into the allocated grain.
   */
  async write(offset: number, data: Buffer, fill: FillFn): Promise<void> {
    await this.markDirty()
    try {
      await this.writeGrains(offset, data, fill)
    } catch (e) {
      this.failed = true
      throw e
    }
  }

  private writeGrains(offset: number, data: Buffer, fill: FillFn): Promise<void> {
    return this.putGrains(offset, data.length, {
      inPlace: (host, at, n) => pwriteData(this.fh, this.path, host, data.subarray(at, at + n)),
      allocate: (at, n) => this.allocate(offset + at, data.subarray(at, at + n), fill),
    })
  }

  /**
   * Puts the bytes of [offset, offset+length): the parts in allocated grains where they are
   * (`inPlace`, at the file offset `host`), then the runs of unallocated or zeroed grains as new
   * grains (`allocate`, false when taken meanwhile); a grain another writer allocated meanwhile is
   * written in place on the next look. `at` is relative to `offset`.
   */
  private async putGrains(offset: number, length: number, put: { inPlace: PutInPlace; allocate: (at: number, n: number) => Promise<boolean> }): Promise<void> {
    let pending = await this.putAllocated(offset, 0, length, put.inPlace)
    while (pending.length > 0) {
      const retry: [number, number][] = []
      await Promise.all(
        pending.map(async ([s, e]) => {
          if (!(await put.allocate(s, e - s))) retry.push([s, e])
        }),
      )
      pending = []
      for (const [s, e] of retry) pending.push(...(await this.putAllocated(offset, s, e - s, put.inPlace)))
    }
  }

  /**
   * Puts the parts of [offset+at, offset+at+length) that land in allocated grains; returns the
   * ranges (relative to `offset`) that fall in unallocated or zeroed grains, grain-aligned runs.
   */
  private async putAllocated(offset: number, at: number, length: number, inPlace: PutInPlace): Promise<[number, number][]> {
    const pending: [number, number][] = []
    const writes: Promise<void>[] = []
    for (const m of await this.map(offset + at, length)) {
      const s = m.offset - offset
      if (m.kind === 'data') writes.push(inPlace(m.host!, s, m.length))
      else pending.push([s, s + m.length])
    }
    await Promise.all(writes)
    return pending
  }

  /**
   * The grains first..last as the cached tables say now, synchronously; null where a table is
   * not cached (the caller loads it and tries again).
   */
  private kindsNow(first: number, last: number): GrainKind[] | null {
    const per = this.header.numGTEsPerGT
    const out: GrainKind[] = []
    for (let g = first; g <= last; g++) {
      const i = Math.floor(g / per)
      const gt = this.gts.get(i)
      if (!gt && this.gd[i] !== 0) return null
      out.push(this.kindOf(gt ? gt[g % per] : 0, g))
    }
    return out
  }

  /**
   * Claims grains first..last for allocation, or returns false (after waiting for whoever
   * holds a claim, or loading a table) when the caller must look again.
   */
  private async claim(first: number, last: number): Promise<(() => void) | false> {
    const busy: Promise<void>[] = []
    for (let g = first; g <= last; g++) {
      const p = this.claims.get(g)
      if (p) busy.push(p)
    }
    if (busy.length) {
      await Promise.all(busy)
      return false
    }
    const kinds = this.kindsNow(first, last)
    if (kinds === null) {
      const per = this.header.numGTEsPerGT
      for (let i = Math.floor(first / per); i <= Math.floor(last / per); i++) await this.table(i)
      return false
    }
    if (kinds.some((k) => k === 'data')) return false
    let release!: () => void
    const done = new Promise<void>((r) => (release = r))
    for (let g = first; g <= last; g++) this.claims.set(g, done)
    return () => {
      for (let g = first; g <= last; g++) this.claims.delete(g)
      release()
    }
  }

  /**
   * Allocates consecutive new grains for [offset, offset+data.length) if they are all still
   * unallocated or zeroed; returns false when the caller must look again.
   */
  private async allocate(offset: number, data: Buffer, fill: FillFn): Promise<boolean> {
    const gb = this.geo.grainBytes
    const first = Math.floor(offset / gb)
    const last = Math.floor((offset + data.length - 1) / gb)
    return this.allocateGrains(first, last, async (host) => {
      const n = last - first + 1
      const headLen = offset - first * gb
      let buf = data
      if (data.length !== n * gb) {
        // A partial grain: merge the request into whole grains. Zero-filled grains never read
        // through; fill only what the request leaves uncovered.
        buf = Buffer.allocUnsafe(n * gb)
        const tailStart = offset + data.length
        const tailEnd = Math.min((last + 1) * gb, this.capacityBytes)
        if (headLen > 0) await this.fillGrainPart(first, first * gb, headLen, buf, 0, fill)
        if (tailStart < tailEnd) await this.fillGrainPart(last, tailStart, tailEnd - tailStart, buf, tailStart - first * gb, fill)
        if (tailEnd < (last + 1) * gb) buf.fill(0, tailEnd - first * gb)
        data.copy(buf, headLen)
      }
      await pwriteFull(this.fh, this.path, host, buf)
    })
  }

  /**
   * Claims grains first..last, gives them space at the end of the file, has `put` write their
   * bytes at that file offset, then points the tables at them (data before entries: SPEC.md §5).
   * False when the grains were taken meanwhile (the caller looks again).
   */
  private async allocateGrains(first: number, last: number, put: (host: number) => Promise<void>): Promise<boolean> {
    const release = await this.claim(first, last)
    if (!release) return false
    try {
      const n = last - first + 1
      // Reserve the file space at once (synchronously): concurrent allocations get distinct grains.
      const sector = this.nextSector
      if (sector > 0xffffffff - n * this.header.grainSize) {
        throw new StorageError('NoSpace', `'${this.path}': the extent file reached the 2 TiB limit of 32-bit grain offsets`, this.path)
      }
      this.nextSector += n * this.header.grainSize
      await put(sector * 512)
      this.fileSectors = Math.max(this.fileSectors, sector + n * this.header.grainSize)
      const entries: number[] = []
      for (let i = 0; i < n; i++) entries.push(sector + i * this.header.grainSize)
      await this.setEntries(first, entries)
      return true
    } finally {
      release()
    }
  }

  /**
   * Writes [offset, offset+length) with the bytes of file `fd` at `position`, copied by the kernel
   * (copyRange): into the grains already allocated, in place, and as new grains where they are
   * unallocated or zeroed. Only whole grains (the last may end at the capacity): false otherwise,
   * nothing written, and the caller writes the bytes through `write`.
   */
  async writeFromFile(offset: number, length: number, fd: number, position: number): Promise<boolean> {
    const gb = this.geo.grainBytes
    if (this.compressed || length === 0 || offset % gb !== 0 || (length % gb !== 0 && offset + length !== this.capacityBytes)) return false
    await this.markDirty()
    try {
      await this.putGrains(offset, length, {
        inPlace: (host, at, n) => copyRange(fd, position + at, this.fh, this.path, host, n),
        allocate: (at, n) => this.allocateFromFile(offset + at, n, fd, position + at),
      })
      return true
    } catch (e) {
      this.failed = true
      throw e
    }
  }

  /** allocate's counterpart for bytes of another file: whole grains (the last may end at the capacity). */
  private allocateFromFile(offset: number, length: number, fd: number, position: number): Promise<boolean> {
    const gb = this.geo.grainBytes
    const first = offset / gb
    const last = Math.floor((offset + length - 1) / gb)
    return this.allocateGrains(first, last, async (host) => {
      await copyRange(fd, position, this.fh, this.path, host, length)
      const pad = (last - first + 1) * gb - length
      if (pad > 0) await pwriteFull(this.fh, this.path, host + length, Buffer.alloc(pad))
    })
  }

  private async fillGrainPart(grain: number, offset: number, length: number, out: Buffer, at: number, fill: FillFn): Promise<void> {
    const per = this.header.numGTEsPerGT
    const gt = await this.table(Math.floor(grain / per))
    const gte = gt ? gt[grain % per] : 0
    if (gte === 1 && this.zeroedGrains) out.fill(0, at, at + length)
    else await fill(offset, length, out, at)
  }

  /**
   * Sets GTEs for grains first, first+1, … to `entries` in the primary and the redundant GT
   * (one write per table each), allocating grain tables where the GD has none.
   */
  async setEntries(first: number, entries: number[]): Promise<void> {
    const per = this.header.numGTEsPerGT
    let i = 0
    while (i < entries.length) {
      const grain = first + i
      const gdIdx = Math.floor(grain / per)
      const idx = grain % per
      const count = Math.min(entries.length - i, per - idx)
      let gt = await this.table(gdIdx)
      if (!gt) gt = await this.allocLock.runExclusive(async () => (await this.table(gdIdx)) ?? this.allocateTable(gdIdx))
      const bytes = Buffer.alloc(count * 4)
      for (let k = 0; k < count; k++) bytes.writeUInt32LE(entries[i + k], k * 4)
      await pwriteFull(this.fh, this.path, this.gd[gdIdx] * 512 + idx * 4, bytes)
      if (this.rgd && this.rgd[gdIdx] !== 0) {
        await pwriteFull(this.fh, this.path, this.rgd[gdIdx] * 512 + idx * 4, bytes)
      }
      for (let k = 0; k < count; k++) gt[idx + k] = entries[i + k]
      i += count
    }
  }

  /** Marks whole grains as zeroed (GTE 1); needs the zeroed-grain flag. Grains must be unallocated. */
  async zeroGrains(firstGrain: number, count: number): Promise<void> {
    await this.markDirty()
    const last = firstGrain + count - 1
    for (;;) {
      const release = await this.claim(firstGrain, last)
      if (!release) {
        const kinds = this.kindsNow(firstGrain, last)
        if (kinds?.some((k) => k === 'data')) {
          // someone wrote data meanwhile: zero it in place instead
          await this.write(firstGrain * this.geo.grainBytes, Buffer.alloc(count * this.geo.grainBytes), async (_o, l, b, a) => void b.fill(0, a, a + l))
          return
        }
        continue
      }
      try {
        await this.setEntries(firstGrain, new Array<number>(count).fill(1))
        return
      } finally {
        release()
      }
    }
  }

  /** A new GT (and redundant GT) in a fresh grain at the end of the file; then the GD entries. */
  private async allocateTable(gdIdx: number): Promise<Uint32Array> {
    const sector = this.nextSector
    const gts = this.geo.gtSectors
    this.nextSector += Math.ceil((gts * 2) / this.header.grainSize) * this.header.grainSize
    await pwriteFull(this.fh, this.path, sector * 512, Buffer.alloc(this.nextSector * 512 - sector * 512))
    this.fileSectors = Math.max(this.fileSectors, this.nextSector)
    const entry = Buffer.alloc(4)
    entry.writeUInt32LE(sector)
    await pwriteFull(this.fh, this.path, this.header.gdOffset * 512 + gdIdx * 4, entry)
    this.gd[gdIdx] = sector
    if (this.rgd) {
      entry.writeUInt32LE(sector + gts)
      await pwriteFull(this.fh, this.path, this.header.rgdOffset * 512 + gdIdx * 4, entry)
      this.rgd[gdIdx] = sector + gts
    }
    const gt = new Uint32Array(this.header.numGTEsPerGT)
    this.gts.set(gdIdx, gt)
    return gt
  }

  async flush(): Promise<void> {
    await datasync(this.fh, this.path)
  }

  async fileBytes(): Promise<number> {
    return fileSize(this.fh, this.path)
  }

  /** Rewrites the header (used by repair and commit). */
  async writeHeader(h: SparseHeader): Promise<void> {
    await pwriteFull(this.fh, this.path, 0, SparseHeaderStruct.encode(h))
  }

  /** Raw access for check/repair, which work below the GD/GT abstraction. */
  get handle(): FileHandle {
    return this.fh
  }

  /** Forgets cached tables after check/repair rewrote metadata underneath. */
  async reload(): Promise<void> {
    this.gts.clear()
    this.grains?.clear()
    this.fileSectors = Math.ceil((await fileSize(this.fh, this.path)) / 512)
    this.gd = await this.readDirectory(this.header.gdOffset, 'grain directory')
    if (this.rgd) this.rgd = await this.readDirectory(this.header.rgdOffset, 'redundant grain directory')
    this.nextSector = Math.ceil(this.fileSectors / this.header.grainSize) * this.header.grainSize
  }

  /**
   * Empties the extent after its data moved elsewhere (commit): every GTE of both tables
   * becomes 0, then the file is cut back to its metadata. Crash-safe: the redundant tables are
   * zeroed before the primary ones, so a kill in between leaves what an interrupted allocation
   * leaves (redundant 0, primary valid: harmless, repaired by check; SPEC.md §5), never a
   * primary 0 beside a redundant entry; and the tables are synced before the grains they
   * pointed at are cut off.
   */
  async makeEmpty(): Promise<void> {
    await this.markDirty()
    await this.allocLock.runExclusive(async () => {
      const zero = Buffer.alloc(this.header.numGTEsPerGT * 4)
      let end = this.header.overHead
      for (const dir of [this.rgd, this.gd]) {
        if (!dir) continue
        for (const sector of dir) {
          if (sector === 0) continue
          await pwriteFull(this.fh, this.path, sector * 512, zero)
          end = Math.max(end, sector + this.geo.gtSectors)
        }
      }
      await datasync(this.fh, this.path)
      const cut = Math.ceil(end / this.header.grainSize) * this.header.grainSize
      try {
        await this.fh.truncate(cut * 512)
      } catch (e) {
        throw new StorageError('IoError', `'${this.path}': could not truncate: ${(e as Error).message}`, this.path)
      }
      this.gts.clear()
      this.fileSectors = cut
      this.nextSector = cut
    })
  }

  /** Refuses writes from here on (ReadOnly), syncing nothing: settle() or close() does that. */
  stopWrites(): void {
    this.ro = true
  }

  /** What was written synced, then uncleanShutdown cleared (nothing after a failed write: it stays set). */
  async settle(): Promise<void> {
    if (this.marked && !this.failed) {
      await datasync(this.fh, this.path)
      await pwriteFull(this.fh, this.path, UNCLEAN_SHUTDOWN_OFFSET, Buffer.from([0]))
      this.marked = false
    }
  }

  /**
   * Syncs, clears uncleanShutdown and closes. With `sync: false` (convert's default, like
   * qemu-img's unsafe output cache) nothing is synced: the flag is left set, since the data
   * may not be durable yet. After a failed write the flag is left set too, so that whoever
   * opens the file next knows to check it (the datastore repairs such layers when it opens).
   */
  async close(opts: { sync?: boolean } = {}): Promise<void> {
    try {
      if (this.marked && !this.failed && opts.sync !== false) {
        // Data first, durably; then the flag. If clearing it is lost in a crash the flag stays
        // set, which only errs on the safe side.
        await datasync(this.fh, this.path)
        await pwriteFull(this.fh, this.path, UNCLEAN_SHUTDOWN_OFFSET, Buffer.from([0]))
      }
    } finally {
      await this.fh.close()
    }
  }
}


/** Reads a streamOptimized footer (SPEC.md §4): marker, header copy, end-of-stream marker. */
async function readFooter(fh: FileHandle, path: string, size: number, header: SparseHeader): Promise<SparseHeader> {
  const bad = (what: string) => new StorageError('Corrupt', `'${path}': Invalid footer: ${what}`, path)
  if (size < 1536) throw bad('file too short for a footer')
  const tail = await preadFull(fh, path, size - 1536, 1536)
  const markerSize = tail.readUInt32LE(8)
  const markerType = tail.readUInt32LE(12)
  if (markerSize !== 0 || markerType !== 3) throw bad(`expected a footer marker (type 3), found size ${markerSize} type ${markerType}`)
  const eos = tail.subarray(1024)
  if (eos.readBigUInt64LE(0) !== 0n || eos.readUInt32LE(8) !== 0 || eos.readUInt32LE(12) !== 0) throw bad('no end-of-stream marker after the footer')
  const footer = decodeSparseHeader(tail.subarray(512, 1024), path, Math.ceil(size / 512))
  if (footer.gdOffset === GD_AT_END) throw bad('the footer has no grain directory offset')
  if (footer.capacity !== header.capacity || footer.grainSize !== header.grainSize) throw bad('the footer disagrees with the header on capacity or grain size')
  return footer
}

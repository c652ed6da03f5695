import type { FileHandle } from 'node:fs/promises'
import { rename, stat, unlink } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join } from 'node:path'
import { Mutex } from 'async-mutex'
import { mergeExtents, type BlockDevice, type Extent, type WriteOptions, type WritesFromFile, type ZeroOptions } from '../block-device.js'
import { dataRuns } from '../data-runs.js'
import { fromSystemError, StorageError } from '../errors.js'
import { copyRange, datasync, duringSync, fileSize, openFile, preadFull, pwriteFull } from '../file-io.js'
import { lockImageFiles, type ImageLock } from '../image-lock.js'
import {
  CID_NOPARENT,
  looksLikeDescriptor,
  MAX_DESCRIPTOR_BYTES,
  newCid,
  parseDescriptor,
  serializeDescriptor,
  type Descriptor,
} from './descriptor.js'
import { COMPRESSION_DEFLATE, KDMV_MAGIC } from './sparse-header.js'
import { SparseExtent, type GrainKind } from './sparse-extent.js'

/** One extent of the disk's address space. */
interface Slot {
  start: number // byte offset in the disk
  size: number
  kind: 'sparse' | 'flat' | 'zero'
  path?: string
  sparse?: SparseExtent
  flat?: { fh: FileHandle; base: number }
}

/** A run of one layer's own allocation, in disk bytes. */
export interface LayerRun {
  offset: number
  length: number
  kind: GrainKind
}

export interface OpenOptions {
  readOnly?: boolean
}

/**
 * What a layer finds below it where it allocates nothing (chain/read-through.ts makes one from
 * the parent device): the parent's bytes and block status, in this layer's offsets.
 */
export interface Below {
  readonly device: BlockDevice
  /** how many layers lie below this one */
  readonly depth: number
  /** fills out[at, at+length) with the bytes below at `offset` (zeros past the parent's end) */
  fill(offset: number, length: number, out: Buffer, at: number): Promise<void>
  /** makes durable what was written to a parent still open for writing (a top being frozen) */
  flush(): Promise<void>
  /** whether the parent has bytes at `offset` (a zero there must shadow them) */
  shadows(offset: number): boolean
  /** block status below for a range this layer does not allocate (depth counted from this layer) */
  status(offset: number, length: number): Promise<Extent[]>
}

/** qemu's text createTypes; a text descriptor claiming another (e.g. monolithicSparse) is refused. */
const TEXT_CREATE_TYPES = new Set(['monolithicFlat', 'vmfs', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'])
const ZERO_CHUNK = 1 << 20

/**
 * One VMDK layer (descriptor + extents), a BlockDevice. Unallocated grains read what lies below
 * (attachParent, chain/) when a parent is attached, else zeros. SPEC.md has the formats.
 */
export class VmdkImage implements BlockDevice, WritesFromFile {
  readonly size: number
  private below: Below | null = null
  private cidUpdate: Promise<void> | null = null
  /** frozen without a sync (freeze({ sync: false })): the next flush or close syncs what was written */
  private unsynced = false
  private settling: Promise<void> | null = null
  private readonly descLock = new Mutex()

  private constructor(
    readonly path: string,
    public descriptor: Descriptor,
    private readonly slots: Slot[],
    private ro: boolean,
    /** the descriptor lives inside this sparse extent (monolithicSparse, streamOptimized) */
    private readonly embedded: SparseExtent | null,
    /** qemu-style image locks on the descriptor and every extent file (image-lock.ts) */
    private locks: ImageLock,
  ) {
    this.size = slots.reduce((n, s) => n + s.size, 0)
  }

  static async open(path: string, opts: OpenOptions = {}): Promise<VmdkImage> {
    const readOnly = opts.readOnly ?? false
    const locks = lockImageFiles()
    locks.add(path, readOnly ? 'read' : 'write')
    let fh: FileHandle
    try {
      fh = await openFile(path, readOnly ? 'r' : 'r+')
    } catch (e) {
      locks.release()
      throw e
    }
    const opened: (FileHandle | SparseExtent)[] = [fh]
    try {
      const size = await fileSize(fh, path)
      const head = await preadFull(fh, path, 0, Math.min(size, 512))
      if (head.length >= 4 && head.readUInt32LE(0) === KDMV_MAGIC) {
        const ext = await SparseExtent.open(path, fh, readOnly)
        const d = await readEmbeddedDescriptor(ext, path)
        const slot: Slot = { start: 0, size: ext.capacityBytes, kind: 'sparse', path, sparse: ext }
        return new VmdkImage(path, d, [slot], readOnly, ext, locks)
      }
      if (size > MAX_DESCRIPTOR_BYTES) throw notVmdk(path)
      const text = (await preadFull(fh, path, 0, size)).toString('utf8')
      if (!looksLikeDescriptor(text)) {
        if (head.length >= 4 && head.toString('latin1', 0, 4) === 'COWD') {
          throw new StorageError('Unsupported', `'${path}': vmfsSparse (COWD) extents are not supported`, path)
        }
        throw notVmdk(path)
      }
      await fh.close()
      opened.length = 0
      const d = parseDescriptor(text, path)
      if (!TEXT_CREATE_TYPES.has(d.createType)) {
        throw new StorageError('Unsupported', `'${path}': unsupported image type '${d.createType}' in a descriptor file`, path)
      }
      const slots: Slot[] = []
      let start = 0
      for (const e of d.extents) {
        const size = e.sectors * 512
        const file = e.file === undefined ? undefined : isAbsolute(e.file) ? e.file : join(dirname(path), e.file)
        const ro = readOnly || e.access !== 'RW'
        if (e.type === 'ZERO' || e.access === 'NOACCESS') {
          slots.push({ start, size, kind: 'zero' })
        } else if (e.type === 'SPARSE') {
          locks.add(file!, ro ? 'read' : 'write')
          const efh = await openFile(file!, ro ? 'r' : 'r+')
          opened.push(efh)
          const ext = await SparseExtent.open(file!, efh, ro)
          opened[opened.length - 1] = ext
          if (ext.capacityBytes < size) {
            throw new StorageError('Corrupt', `'${file}': extent capacity ${ext.header.capacity} sectors is smaller than the descriptor's ${e.sectors}`, file)
          }
          slots.push({ start, size, kind: 'sparse', path: file, sparse: ext })
        } else if (e.type === 'FLAT' || e.type === 'VMFS') {
          locks.add(file!, ro ? 'read' : 'write')
          const efh = await openFile(file!, ro ? 'r' : 'r+')
          opened.push(efh)
          slots.push({ start, size, kind: 'flat', path: file, flat: { fh: efh, base: (e.offset ?? 0) * 512 } })
        } else {
          throw new StorageError('Unsupported', `'${path}': extent type ${e.type} is not supported`, path)
        }
        start += size
      }
      const anyReadOnlyExtent = d.extents.some((e) => e.access !== 'RW')
      return new VmdkImage(path, d, slots, readOnly || anyReadOnlyExtent, null, locks)
    } catch (err) {
      await Promise.all(opened.map((o) => o.close().catch(() => undefined)))
      locks.release()
      throw err
    }
  }

  /** Opened read-only, or frozen since. */
  get readOnly(): boolean {
    return this.ro
  }

  /** The parent device attached below this layer, if any. */
  get backing(): BlockDevice | null {
    return this.below?.device ?? null
  }

  /**
   * Attaches what lies below this layer (once: chain/ opens a chain top-down, so the parent is
   * known only after this layer's descriptor is read). Closing this layer closes it too.
   */
  attachParent(below: Below): void {
    if (this.below) throw new StorageError('InvalidArgument', `'${this.path}' already has a parent attached`, this.path)
    this.below = below
  }

  get cid(): number {
    return this.descriptor.cid
  }
  get parentCid(): number {
    return this.descriptor.parentCid
  }
  get createType(): string {
    return this.descriptor.createType
  }
  get hasParent(): boolean {
    return this.descriptor.parentCid !== CID_NOPARENT || this.descriptor.parentFileNameHint !== undefined
  }
  /** The parent's path, resolved against this descriptor's folder (qemu's rule). */
  get parentPath(): string | undefined {
    const hint = this.descriptor.parentFileNameHint
    if (hint === undefined) return undefined
    return isAbsolute(hint) ? hint : join(dirname(this.path), hint)
  }

  /** Every file of this layer: the descriptor and its extents. */
  files(): string[] {
    const out = [this.path]
    for (const s of this.slots) if (s.path && !out.includes(s.path)) out.push(s.path)
    return out
  }

  /** Extents for `info` (qemu's format-specific extents[]). */
  extentInfo(): { filename: string; 'virtual-size': number; format: string; 'cluster-size'?: number; compressed?: boolean }[] {
    // qemu names a monolithic file's extent by the path opened, a descriptor's by its extent line
    // joined to the folder part of the path opened, unnormalised (qemu's path_combine).
    const folder = this.path.slice(0, this.path.lastIndexOf('/') + 1)
    const names = this.embedded ? [this.path] : this.descriptor.extents.map((e) => (e.file === undefined ? '' : isAbsolute(e.file) ? e.file : folder + e.file))
    return this.slots.map((s, i) => ({
      filename: names[i],
      'virtual-size': s.size,
      format: s.kind === 'sparse' ? (this.embedded ? '' : 'SPARSE') : s.kind === 'flat' ? 'FLAT' : 'ZERO',
      ...(s.sparse ? { 'cluster-size': s.sparse.geo.grainBytes } : {}),
      ...(s.sparse?.compressed ? { compressed: true } : {}),
    }))
  }

  /** The sparse extents (check, repair, commit). */
  sparseExtents(): { start: number; size: number; extent: SparseExtent }[] {
    return this.slots.filter((s) => s.sparse).map((s) => ({ start: s.start, size: s.size, extent: s.sparse! }))
  }

  get clusterSize(): number | undefined {
    return this.slots.find((s) => s.sparse)?.sparse!.geo.grainBytes
  }

  get streamOptimized(): boolean {
    return this.embedded?.header.compressAlgorithm === COMPRESSION_DEFLATE
  }

  /** Bytes the files use on disk (st_blocks), like qemu-img's actual-size. */
  async actualSize(): Promise<number> {
    let n = 0
    for (const f of this.files()) {
      try {
        n += (await stat(f)).blocks * 512
      } catch {
        /* a missing extent is reported by open */
      }
    }
    return n
  }

  private *overlapping(offset: number, length: number): Generator<[Slot, number, number]> {
    const end = offset + length
    for (const s of this.slots) {
      if (s.start + s.size <= offset || s.start >= end) continue
      const a = Math.max(offset, s.start)
      const b = Math.min(end, s.start + s.size)
      yield [s, a, b - a]
    }
  }

  /** Fills out[at, at+length) with what lies below at disk offset `offset` (zeros with no parent). */
  private async fillFromBacking(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    if (this.below) await this.below.fill(offset, length, out, at)
    else out.fill(0, at, at + length)
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length)
    await this.readInto(offset, length, out, 0)
    return out
  }

  async readInto(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    const jobs: Promise<void>[] = []
    for (const [s, a, n] of this.overlapping(offset, length)) {
      const dst = at + (a - offset)
      if (s.kind === 'zero') out.fill(0, dst, dst + n)
      else if (s.kind === 'flat') jobs.push(preadFull(s.flat!.fh, s.path!, s.flat!.base + (a - s.start), n, out, dst).then(() => undefined))
      else jobs.push(s.sparse!.readInto(a - s.start, n, out, dst, (o, l, buf, p) => this.fillFromBacking(s.start + o, l, buf, p)))
    }
    await Promise.all(jobs)
  }

  /**
   * Writes from here on leave the content id as it is. Only for writes that do not change what
   * this layer reads (rebase copying the old backing's bytes into it): the children of this
   * layer record its CID, and must still find it if the process dies in the middle. Also for a
   * delta just made, whose CID no layer names yet (a datastore snapshot's: its first write then
   * costs no descriptor sync under the writer).
   */
  keepCid(): void {
    this.cidUpdate ??= Promise.resolve()
  }

  /**
   * The CID this layer keeps while it stays open, given now if it has not changed since open (as
   * its first write would): a delta made on this layer while it is still written names this CID.
   */
  async pinCid(): Promise<number> {
    await this.touch()
    return this.cid
  }

  /** Frozen without a sync, and not synced since (a flush through a child syncs it: ReadThrough). */
  get syncPending(): boolean {
    return this.unsynced
  }

  /**
   * Makes this open layer read-only for good (a snapshot freezes the top it had): what was
   * written is synced and uncleanShutdown cleared as close would, and the image locks become a
   * reader's, so qemu-img may read the files. Reads, and layers above reading through, go on;
   * writes are refused (ReadOnly). The caller sees that nothing writes to it meanwhile; if a sync
   * fails it stays writable (and flushed through a child).
   *
   * `sync: false` (a datastore snapshot) syncs nothing now: what was written becomes durable at
   * the next flush through a child (ReadThrough.flush), or at close, as it would have without
   * the snapshot; until then uncleanShutdown stays set, so a crash meanwhile gets the layer
   * checked. A freeze is not made to write a layer's unflushed data out while clients write on.
   */
  async freeze(o: { sync?: boolean } = {}): Promise<void> {
    if (this.ro) return
    if (o.sync === false) this.unsynced = true
    else await this.syncSlots((e) => e.settle())
    for (const s of this.slots) s.sparse?.stopWrites()
    this.ro = true
    const locks = lockImageFiles()
    try {
      for (const f of this.files()) locks.add(f, 'read')
    } catch (e) {
      locks.release() // the writer's locks stay: stricter, never looser
      throw e
    }
    this.locks.release()
    this.locks = locks
  }

  /** First modification after open gives the disk a new content id (qemu does the same), synced. */
  private touch(): Promise<void> {
    if (this.ro) return Promise.reject(new StorageError('ReadOnly', `'${this.path}' is open read-only`, this.path))
    this.cidUpdate ??= (async () => {
      this.descriptor = { ...this.descriptor, cid: newCid() }
      await this.writeDescriptor()
      // durable at once, while the layer holds nothing else unsynced (every write waits for
      // this): a delta named after this CID can go in a record without a flush of the layer,
      // which under a writer is tens of ms of its data (a datastore snapshot, issue #14)
      await this.embedded?.flush()
    })()
    return this.cidUpdate
  }

  /**
   * Rewrites the descriptor: in place for an embedded one (qemu reads 10240 bytes at 0x200),
   * by temp + fsync + rename for a descriptor file.
   */
  async writeDescriptor(d: Descriptor = this.descriptor): Promise<void> {
    if (this.ro) throw new StorageError('ReadOnly', `'${this.path}' is open read-only`, this.path)
    await this.descLock.runExclusive(async () => {
      this.descriptor = d
      const text = Buffer.from(serializeDescriptor(d), 'utf8')
      if (this.embedded) {
        const h = this.embedded.header
        const room = h.descriptorSize * 512
        if (h.descriptorOffset === 0 || text.length > room) {
          throw new StorageError('NoSpace', `'${this.path}': the descriptor (${text.length} bytes) does not fit its ${room}-byte area`, this.path)
        }
        const buf = Buffer.alloc(room)
        text.copy(buf)
        await pwriteFull(this.embedded.handle, this.path, h.descriptorOffset * 512, buf)
        return
      }
      await writeFileAtomic(this.path, text)
    })
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    await this.touch()
    const jobs: Promise<void>[] = []
    for (const [s, a, n] of this.overlapping(offset, data.length)) {
      const part = data.subarray(a - offset, a - offset + n)
      if (s.kind === 'zero') throw new StorageError('ReadOnly', `'${this.path}': bytes ${a}..${a + n} lie in a ZERO extent`, this.path)
      if (s.kind === 'flat') jobs.push(pwriteFull(s.flat!.fh, s.path!, s.flat!.base + (a - s.start), part))
      else jobs.push(s.sparse!.write(a - s.start, part, (o, l, buf, p) => this.fillFromBacking(s.start + o, l, buf, p)))
    }
    await Promise.all(jobs)
    if (opts?.fua) await this.flush()
  }

  /**
   * Writes bytes of another file in the kernel (WritesFromFile): into a flat extent, or into whole
   * grains of a sparse one, allocated or new (SparseExtent.writeFromFile). False, nothing written,
   * for a range across extents, or grains not whole.
   */
  async writeFromFile(offset: number, length: number, fd: number, position: number): Promise<boolean> {
    const [slot, ...more] = this.overlapping(offset, length)
    if (!slot || more.length > 0 || slot[0].kind === 'zero') return false
    const [s, a] = slot
    await this.touch()
    if (s.sparse) return s.sparse.writeFromFile(a - s.start, length, fd, position)
    await copyRange(fd, position, s.flat!.fh, s.path!, s.flat!.base + (a - s.start), length)
    return true
  }

  /**
   * Zeroes a range without reading through: grains that already read as zero are left alone;
   * whole unallocated grains over a parent become zeroed grains (GTE 1) where the format has
   * them; everything else gets real zeros.
   */
  async writeZeroes(offset: number, length: number, _opts?: ZeroOptions): Promise<void> {
    await this.touch()
    for (const [s, a, n] of this.overlapping(offset, length)) {
      if (s.kind === 'zero') continue
      if (s.kind === 'flat') {
        await writeZeroBuffers(n, (o, b) => pwriteFull(s.flat!.fh, s.path!, s.flat!.base + (a - s.start) + o, b))
        continue
      }
      const ext = s.sparse!
      const gb = ext.geo.grainBytes
      for (const m of await ext.map(a - s.start, n)) {
        if (m.kind === 'zero') continue
        const diskOff = s.start + m.offset
        const shadowed = this.below !== null && this.below.shadows(diskOff)
        if (m.kind === 'unallocated' && !shadowed) continue
        let pos = m.offset
        const end = m.offset + m.length
        if (m.kind === 'unallocated' && ext.zeroedGrains) {
          const g0 = Math.ceil(pos / gb)
          const g1 = Math.floor(end / gb)
          if (g1 > g0) {
            await writeZeroBuffers((g0 * gb) - pos, (o, b) => ext.write(pos + o, b, (oo, l, buf, p) => this.fillFromBacking(s.start + oo, l, buf, p)))
            await ext.zeroGrains(g0, g1 - g0)
            pos = g1 * gb
          }
        }
        const from = pos
        await writeZeroBuffers(end - from, (o, b) => ext.write(from + o, b, (oo, l, buf, p) => this.fillFromBacking(s.start + oo, l, buf, p)))
      }
    }
  }

  /** Discard leaves data in place: VMDK cannot free a grain (nor does qemu), and content after discard is unspecified. */
  async discard(): Promise<void> {}

  /** Syncs this layer, and a parent still open for writing or frozen unsynced (Below.flush). */
  async flush(): Promise<void> {
    await Promise.all([
      this.unsynced ? this.settle() : this.syncSlots((e) => e.flush()),
      this.below?.flush(),
    ])
  }

  /** Every extent synced: a sparse one by `sparse`, a flat one with fdatasync. */
  private async syncSlots(sparse: (e: SparseExtent) => Promise<void>): Promise<void> {
    await Promise.all(this.slots.map((s) => (s.sparse ? sparse(s.sparse) : s.flat ? datasync(s.flat.fh, s.path!) : undefined)))
  }

  /** A layer frozen unsynced: syncs it and clears uncleanShutdown (once; again after a failure). */
  private settle(): Promise<void> {
    this.settling ??= (async () => {
      try {
        await this.syncSlots((e) => e.settle())
        this.unsynced = false
      } finally {
        this.settling = null
      }
    })()
    return this.settling
  }

  /** This layer's own allocation (no read-through): what commit copies and map's depth 0. */
  async layerStatus(offset: number, length: number): Promise<LayerRun[]> {
    const out: LayerRun[] = []
    for (const [s, a, n] of this.overlapping(offset, length)) {
      if (s.kind === 'zero') out.push({ offset: a, length: n, kind: 'zero' })
      else if (s.kind === 'flat') out.push({ offset: a, length: n, kind: 'data' })
      else for (const m of await s.sparse!.map(a - s.start, n)) out.push({ offset: s.start + m.offset, length: m.length, kind: m.kind })
    }
    return out
  }

  /** How many layers lie below this one. */
  get depthBelow(): number {
    return this.below?.depth ?? 0
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = []
    for (const [s, a, n] of this.overlapping(offset, length)) {
      if (s.kind === 'zero') {
        out.push({ offset: a, length: n, data: false, zero: true, depth: 0, present: true })
      } else if (s.kind === 'flat') {
        // qemu-img map's view of a flat extent: all data, and holes of the file (SEEK_HOLE) also zero.
        const host = s.flat!.base + (a - s.start)
        for (const r of dataRuns(s.flat!.fh.fd, host, host + n)) {
          out.push({ offset: a + (r.offset - host), length: r.length, data: true, zero: !r.data, depth: 0, present: true, hostOffset: r.offset, file: s.path })
        }
      } else {
        for (const m of await s.sparse!.map(a - s.start, n)) {
          const off = s.start + m.offset
          if (m.kind === 'data') {
            out.push({ offset: off, length: m.length, data: true, zero: false, depth: 0, present: true, ...(m.compressed ? {} : { hostOffset: m.host, file: s.path }) })
          } else if (m.kind === 'zero') {
            out.push({ offset: off, length: m.length, data: false, zero: true, depth: 0, present: true })
          } else {
            out.push(...(this.below ? await this.below.status(off, m.length) : [{ offset: off, length: m.length, data: false, zero: true, depth: 0, present: false }]))
          }
        }
      }
    }
    return mergeExtents(out)
  }

  /** Closes this layer and the chain below it (`sync: false`: see SparseExtent.close). */
  async close(opts: { sync?: boolean } = {}): Promise<void> {
    const errors: unknown[] = []
    for (const s of this.slots) {
      try {
        if (s.sparse) await s.sparse.close(opts)
        else if (s.flat) await s.flat.fh.close()
      } catch (e) {
        errors.push(e)
      }
    }
    this.locks.release()
    if (this.below) await this.below.device.close().catch((e) => errors.push(e))
    if (errors.length) throw errors[0]
  }
}

function notVmdk(path: string): StorageError {
  return new StorageError('BadMagic', `'${path}': not a VMDK image (no 'KDMV' header and no descriptor)`, path)
}

async function readEmbeddedDescriptor(ext: SparseExtent, path: string): Promise<Descriptor> {
  const h = ext.header
  if (h.descriptorOffset !== 0 && h.descriptorSize !== 0) {
    const text = (await preadFull(ext.handle, path, h.descriptorOffset * 512, h.descriptorSize * 512)).toString('utf8')
    const nul = text.indexOf('\0')
    const body = nul >= 0 ? text.slice(0, nul) : text
    if (body.trim() !== '') return parseDescriptor(body, path)
  }
  // A split-extent part has an empty descriptor area: describe it as one sparse extent.
  return {
    version: 1,
    cid: 0xfffffffe,
    parentCid: CID_NOPARENT,
    createType: ext.compressed ? 'streamOptimized' : 'monolithicSparse',
    extents: [{ access: 'RW', sectors: h.capacity, type: 'SPARSE', file: basename(path) }],
    ddb: [],
    extra: [],
  }
}

async function writeZeroBuffers(length: number, write: (offset: number, buf: Buffer) => Promise<void>): Promise<void> {
  if (length <= 0) return
  const zero = Buffer.alloc(Math.min(length, ZERO_CHUNK))
  for (let o = 0; o < length; o += zero.length) {
    const n = Math.min(zero.length, length - o)
    await write(o, n === zero.length ? zero : zero.subarray(0, n))
  }
}

/**
 * Writes a small file atomically: temp file, fsync, rename, fsync of the folder. With `mode`, the
 * file has that mode before it holds any data (for secrets).
 */
export async function writeFileAtomic(path: string, data: Buffer | string, mode?: number): Promise<void> {
  await (await stageFile(path, data, { mode })).commit()
}

/** A file's next content, written and synced beside it, not yet in place (stageFile). */
export interface StagedFile {
  /** puts it in place: the rename (a process killed after it finds the new content) */
  put(): Promise<void>
  /** then makes the rename durable: fsync of the folder (opened when staged), which is closed */
  sync(): Promise<void>
  /** put, then sync */
  commit(): Promise<void>
  /** removes the staged copy */
  discard(): Promise<void>
}

export async function stageFile(path: string, data: Buffer | string, o: { mode?: number; suffix?: string } = {}): Promise<StagedFile> {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}${o.suffix ? `-${o.suffix}` : ''}`)
  const fh = await openFile(tmp, 'w', o.mode)
  try {
    if (o.mode !== undefined) await fh.chmod(o.mode)
    await pwriteFull(fh, tmp, 0, Buffer.from(data))
    await datasync(fh, tmp)
  } finally {
    await fh.close()
  }
  const dir = await openFile(dirname(path), 'r')
  let done = false
  const staged: StagedFile = {
    put: async () => {
      if (done) throw new StorageError('InvalidArgument', `'${path}': the staged copy was already used`, path)
      done = true
      try {
        await rename(tmp, path)
      } catch (e) {
        await dir.close().catch(() => undefined)
        throw fromSystemError(e, path, 'Could not replace')
      }
    },
    sync: async () => {
      try {
        await duringSync(() => dir.sync()).catch(() => undefined)
      } finally {
        await dir.close()
      }
    },
    commit: async () => {
      await staged.put()
      await staged.sync()
    },
    discard: async () => {
      if (done) return
      done = true
      await dir.close().catch(() => undefined)
      await unlink(tmp).catch(() => undefined)
    },
  }
  return staged
}

import type { FileHandle } from 'node:fs/promises'
import { promisify } from 'node:util'
import * as zlib from 'node:zlib'
import { basename } from 'node:path'
import { StorageError } from '../errors.js'
import { duringSync, openFile, pwriteFull } from '../file-io.js'
import { serializeDescriptor } from './descriptor.js'
import { baseDescriptor, type CreateOptions } from './new-descriptor.js'
import {
  COMPRESSION_DEFLATE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NL_TEST,
  GD_AT_END,
  geometry,
  KDMV_MAGIC,
  SparseHeaderStruct,
  type SparseHeader,
} from './sparse-header.js'

let deflateLoaded: ((buf: Buffer) => Promise<Buffer>) | undefined
/** zlib's deflate, promisified when first used (the CLI's bundle loads zlib then: see build-cli.ts). */
const deflate = (buf: Buffer) => (deflateLoaded ??= promisify(zlib.deflate))(buf)
const MARKER_GT = 1
const MARKER_GD = 2
const MARKER_FOOTER = 3

/**
 * Writes a streamOptimized VMDK in VMware's layout (SPEC.md §4): header with the GD at the end,
 * descriptor, zlib-compressed grains each behind a grain marker, then GT markers and tables, the
 * GD marker and directory, the footer (a copy of the header with the real GD offset) and the
 * end-of-stream marker. Grains must be added in increasing order; all-zero grains are skipped.
 */
export class StreamWriter {
  private sector: number
  /** grain tables that have grains, by GD index (a 100 TiB disk has 3.2 million tables) */
  private readonly gts = new Map<number, Uint32Array>()
  private readonly grainCount: number
  private chain: Promise<void> = Promise.resolve()
  private lastGrain = -1

  private constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly header: SparseHeader,
  ) {
    this.sector = header.overHead
    this.grainCount = Math.ceil(header.capacity / header.grainSize)
  }

  static async create(path: string, o: CreateOptions): Promise<StreamWriter> {
    const sectors = o.size / 512
    const grainSize = o.grainSectors ?? 128
    const header: SparseHeader = {
      magic: KDMV_MAGIC,
      version: 3,
      flags: FLAG_NL_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
      capacity: sectors,
      grainSize,
      descriptorOffset: 1,
      descriptorSize: 20,
      numGTEsPerGT: 512,
      rgdOffset: 0,
      gdOffset: GD_AT_END,
      overHead: grainSize >= 21 ? grainSize : 21,
      uncleanShutdown: 0,
      singleEndLineChar: 0x0a,
      nonEndLineChar: 0x20,
      doubleEndLineChar1: 0x0d,
      doubleEndLineChar2: 0x0a,
      compressAlgorithm: COMPRESSION_DEFLATE,
    }
    const d = baseDescriptor(o, 'streamOptimized', [{ access: 'RW', sectors, type: 'SPARSE', file: basename(path) }])
    const fh = await openFile(path, o.exclusive ? 'wx' : 'w')
    const head = Buffer.alloc(header.overHead * 512)
    SparseHeaderStruct.encode(header, head, 0)
    Buffer.from(serializeDescriptor(d), 'utf8').copy(head, 512)
    await pwriteFull(fh, path, 0, head)
    return new StreamWriter(path, fh, header)
  }

  get grainBytes(): number {
    return this.header.grainSize * 512
  }

  /**
   * Adds grain `index` (its bytes, grainBytes long or shorter for the last). Compression
   * starts at once; bytes are appended in the order of calls.
   */
  addGrain(index: number, data: Buffer): Promise<void> {
    if (index <= this.lastGrain || index >= this.grainCount) {
      return Promise.reject(new StorageError('InvalidArgument', `stream grains must be added in increasing order (got ${index} after ${this.lastGrain})`))
    }
    this.lastGrain = index
    const compressed = deflate(data)
    const step = this.chain.then(async () => {
      const z = await compressed
      const total = Math.ceil((12 + z.length) / 512) * 512
      const buf = Buffer.alloc(total)
      buf.writeBigUInt64LE(BigInt(index * this.header.grainSize), 0)
      buf.writeUInt32LE(z.length, 8)
      z.copy(buf, 12)
      const at = this.sector
      this.sector += total / 512
      await pwriteFull(this.fh, this.path, at * 512, buf)
      const per = this.header.numGTEsPerGT
      const t = Math.floor(index / per)
      let gt = this.gts.get(t)
      if (!gt) this.gts.set(t, (gt = new Uint32Array(per)))
      gt[index % per] = at
    })
    this.chain = step
    return step
  }

  private async metadata(type: number, payload: Buffer): Promise<number> {
    const marker = Buffer.alloc(512)
    marker.writeBigUInt64LE(BigInt(payload.length / 512), 0)
    marker.writeUInt32LE(0, 8)
    marker.writeUInt32LE(type, 12)
    const at = this.sector
    await pwriteFull(this.fh, this.path, at * 512, Buffer.concat([marker, payload]))
    this.sector += 1 + payload.length / 512
    return at + 1
  }

  /** Writes GTs, GD, footer and end-of-stream marker, and closes the file (synced if `sync`). */
  async finish(sync = true): Promise<void> {
    try {
      await this.chain
      const geo = geometry(this.header)
      const gd = Buffer.alloc(geo.gdSectors * 512)
      for (const t of [...this.gts.keys()].sort((a, b) => a - b)) {
        const slice = this.gts.get(t)!
        const gt = Buffer.alloc(geo.gtSectors * 512)
        for (let i = 0; i < slice.length; i++) gt.writeUInt32LE(slice[i], i * 4)
        gd.writeUInt32LE(await this.metadata(MARKER_GT, gt), t * 4)
      }
      const gdAt = await this.metadata(MARKER_GD, gd)
      await this.metadata(MARKER_FOOTER, SparseHeaderStruct.encode({ ...this.header, gdOffset: gdAt }))
      await pwriteFull(this.fh, this.path, this.sector * 512, Buffer.alloc(512)) // end-of-stream
      if (sync) await duringSync(() => this.fh.datasync())
    } finally {
      await this.fh.close()
    }
  }

  /** Abandons the file (the caller removes it). */
  async abort(): Promise<void> {
    await this.chain.catch(() => undefined)
    await this.fh.close().catch(() => undefined)
  }
}

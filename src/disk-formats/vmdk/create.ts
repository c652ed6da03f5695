import { basename, dirname, join, relative } from 'node:path'
import { unlink } from 'node:fs/promises'
import { StorageError, fromSystemError } from '../errors.js'
import { duringSync, openFile, pwriteFull } from '../file-io.js'
import { serializeDescriptor, type ExtentLine } from './descriptor.js'
import { baseDescriptor, type CreateOptions } from './new-descriptor.js'
import {
  FLAG_NL_TEST,
  FLAG_RGD,
  FLAG_ZEROED_GRAIN,
  geometry,
  KDMV_MAGIC,
  SparseHeaderStruct,
  type SparseHeader,
} from './sparse-header.js'

/** qemu's split size: every extent but the last of a twoGbMaxExtent* disk is 2 GiB. */
export const SPLIT_BYTES = 0x80000000
const DESC_SECTORS = 20
const GTES = 512

/** The header and layout of a new hosted sparse extent, as qemu and VMware lay it out. */
export function sparseLayout(capacitySectors: number, opts: { zeroedGrain?: boolean; grainSectors?: number; embedDescriptor: boolean }): SparseHeader {
  const grainSize = opts.grainSectors ?? 128
  const geo = geometry({ capacity: capacitySectors, grainSize, numGTEsPerGT: GTES })
  const rgdOffset = 1 + DESC_SECTORS
  const gdOffset = rgdOffset + geo.gdSectors + geo.gdEntries * geo.gtSectors
  const metaEnd = gdOffset + geo.gdSectors + geo.gdEntries * geo.gtSectors
  return {
    magic: KDMV_MAGIC,
    version: opts.zeroedGrain ? 2 : 1,
    flags: FLAG_NL_TEST | FLAG_RGD | (opts.zeroedGrain ? FLAG_ZEROED_GRAIN : 0),
    capacity: capacitySectors,
    grainSize,
    descriptorOffset: 1,
    descriptorSize: DESC_SECTORS,
    numGTEsPerGT: GTES,
    rgdOffset,
    gdOffset,
    overHead: Math.ceil(metaEnd / grainSize) * grainSize,
    uncleanShutdown: 0,
    singleEndLineChar: 0x0a,
    nonEndLineChar: 0x20,
    doubleEndLineChar1: 0x0d,
    doubleEndLineChar2: 0x0a,
    compressAlgorithm: 0,
  }
}

/** Directory entries are written in pieces of this many (256 KiB): no buffer grows with the disk. */
const GD_CHUNK_ENTRIES = 65536

/**
 * The largest size of one sparse extent: 2^32 - 1 grains (256 TiB - 64 KiB with 64 KiB grains).
 * qemu-img counts grains in 32 bits and writes a broken header beyond it.
 */
export function maxSparseExtentBytes(grainSectors = 128): number {
  return (2 ** 32 - 1) * grainSectors * 512
}

/**
 * Writes a new sparse extent file as qemu-img does: header, descriptor and both GDs, every GD
 * entry pointing at its pre-allocated GT. The GTs are all zero and left as a hole of the file
 * (cut to overHead sectors), so a 2 TiB disk costs its two 256 KiB directories on disk.
 */
async function writeSparseExtent(path: string, h: SparseHeader, descriptor: string | null, exclusive: boolean): Promise<void> {
  const geo = geometry(h)
  const head = Buffer.alloc((h.descriptorOffset + DESC_SECTORS) * 512)
  SparseHeaderStruct.encode(h, head, 0)
  if (descriptor !== null) {
    const text = Buffer.from(descriptor, 'utf8')
    if (text.length > DESC_SECTORS * 512) throw new StorageError('InvalidArgument', `descriptor too long (${text.length} bytes)`)
    text.copy(head, h.descriptorOffset * 512)
  }
  const fh = await openFile(path, exclusive ? 'wx' : 'w')
  try {
    await pwriteFull(fh, path, 0, head)
    const chunk = Buffer.alloc(Math.min(geo.gdEntries, GD_CHUNK_ENTRIES) * 4)
    for (const gd of [h.rgdOffset, h.gdOffset]) {
      const tables = gd + geo.gdSectors
      for (let first = 0; first < geo.gdEntries; first += GD_CHUNK_ENTRIES) {
        const n = Math.min(GD_CHUNK_ENTRIES, geo.gdEntries - first)
        for (let i = 0; i < n; i++) chunk.writeUInt32LE(tables + (first + i) * geo.gtSectors, i * 4)
        await pwriteFull(fh, path, gd * 512 + first * 4, chunk.subarray(0, n * 4))
      }
    }
    await fh.truncate(h.overHead * 512)
    await duringSync(() => fh.datasync())
  } catch (e) {
    throw fromSystemError(e, path, 'Could not write')
  } finally {
    await fh.close()
  }
}

async function createFlatFile(path: string, size: number, exclusive: boolean): Promise<void> {
  const fh = await openFile(path, exclusive ? 'wx' : 'w')
  try {
    await fh.truncate(size)
  } catch (e) {
    throw fromSystemError(e, path, 'Could not resize')
  } finally {
    await fh.close()
  }
}

/** Name of extent `n` (1-based) of a split disk: x-s001.vmdk / x-f001.vmdk; x-flat.vmdk for monolithicFlat. */
export function extentFileName(path: string, kind: 's' | 'f' | 'flat', n = 1): string {
  const base = basename(path).replace(/\.vmdk$/i, '')
  return kind === 'flat' ? `${base}-flat.vmdk` : `${base}-${kind}${String(n).padStart(3, '0')}.vmdk`
}

/**
 * Creates a new, empty VMDK (a delta when `parent` is given). Returns the files written.
 * streamOptimized is written by convert (stream-writer.ts); here it makes an empty stream file.
 */
export async function createVmdk(path: string, o: CreateOptions): Promise<string[]> {
  const sub = o.subformat ?? 'monolithicSparse'
  if (!Number.isSafeInteger(o.size) || o.size <= 0 || o.size % 512 !== 0) {
    throw new StorageError('InvalidArgument', `invalid size ${o.size}: must be a positive multiple of 512 bytes`)
  }
  if (o.parent && sub !== 'monolithicSparse' && sub !== 'twoGbMaxExtentSparse') {
    throw new StorageError('InvalidArgument', `a delta disk must be sparse (monolithicSparse or twoGbMaxExtentSparse), not ${sub}`)
  }
  if (o.zeroedGrain && (sub === 'monolithicFlat' || sub === 'twoGbMaxExtentFlat')) {
    throw new StorageError('InvalidArgument', 'flat images cannot use zeroed grains')
  }
  const maxBytes = maxSparseExtentBytes(o.grainSectors)
  if ((sub === 'monolithicSparse' || sub === 'streamOptimized') && o.size > maxBytes) {
    throw new StorageError('InvalidArgument', `invalid size ${o.size}: a ${sub} disk holds at most ${maxBytes} bytes (2^32 - 1 grains of ${(o.grainSectors ?? 128) * 512} bytes)`)
  }
  const exclusive = o.exclusive ?? false
  const sectors = o.size / 512
  const dir = dirname(path)
  const hint = o.parent ? relative(dir, o.parent.path) || basename(o.parent.path) : undefined
  const written: string[] = []
  try {
    switch (sub) {
      case 'monolithicSparse': {
        const d = baseDescriptor(o, 'monolithicSparse', [{ access: 'RW', sectors, type: 'SPARSE', file: basename(path) }])
        if (hint !== undefined) d.parentFileNameHint = hint
        const h = sparseLayout(sectors, { zeroedGrain: o.zeroedGrain, grainSectors: o.grainSectors, embedDescriptor: true })
        written.push(path)
        await writeSparseExtent(path, h, serializeDescriptor(d), exclusive)
        break
      }
      case 'twoGbMaxExtentSparse':
      case 'twoGbMaxExtentFlat': {
        const sparse = sub === 'twoGbMaxExtentSparse'
        const extents: ExtentLine[] = []
        for (let off = 0, n = 1; off < o.size; off += SPLIT_BYTES, n++) {
          const bytes = Math.min(SPLIT_BYTES, o.size - off)
          const file = extentFileName(path, sparse ? 's' : 'f', n)
          const full = join(dir, file)
          written.push(full)
          if (sparse) {
            await writeSparseExtent(full, sparseLayout(bytes / 512, { zeroedGrain: o.zeroedGrain, grainSectors: o.grainSectors, embedDescriptor: false }), null, exclusive)
            extents.push({ access: 'RW', sectors: bytes / 512, type: 'SPARSE', file })
          } else {
            await createFlatFile(full, bytes, exclusive)
            extents.push({ access: 'RW', sectors: bytes / 512, type: 'FLAT', file, offset: 0 })
          }
        }
        const d = baseDescriptor(o, sub, extents)
        if (hint !== undefined) d.parentFileNameHint = hint
        written.push(path)
        await writeDescriptorFile(path, serializeDescriptor(d), exclusive)
        break
      }
      case 'monolithicFlat': {
        const file = extentFileName(path, 'flat')
        const full = join(dir, file)
        written.push(full)
        await createFlatFile(full, o.size, exclusive)
        const d = baseDescriptor(o, 'monolithicFlat', [{ access: 'RW', sectors, type: 'FLAT', file, offset: 0 }])
        written.push(path)
        await writeDescriptorFile(path, serializeDescriptor(d), exclusive)
        break
      }
      case 'streamOptimized': {
        const { StreamWriter } = await import('./stream-writer.js')
        const w = await StreamWriter.create(path, { ...o, exclusive })
        written.push(path)
        await w.finish()
        break
      }
      default: {
        const never: never = sub
        throw new StorageError('InvalidArgument', `unknown subformat ${String(never)}`)
      }
    }
  } catch (e) {
    // Leave nothing half-made behind (but never remove a file that existed: exclusive failed first).
    if (!(e instanceof StorageError && e.code === 'Exists')) await Promise.all(written.map((f) => unlink(f).catch(() => undefined)))
    throw e
  }
  return written
}

async function writeDescriptorFile(path: string, text: string, exclusive: boolean): Promise<void> {
  const fh = await openFile(path, exclusive ? 'wx' : 'w')
  try {
    await pwriteFull(fh, path, 0, Buffer.from(text, 'utf8'))
    await duringSync(() => fh.datasync())
  } finally {
    await fh.close()
  }
}

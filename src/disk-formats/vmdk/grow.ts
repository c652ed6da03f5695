import type { FileHandle } from 'node:fs/promises'
import { StorageError } from '../errors.js'
import { datasync, fileSize, pwriteFull } from '../file-io.js'
import { maxSparseExtentBytes } from './create.js'
import { COMPRESSION_DEFLATE, FLAG_RGD, geometry, SparseHeaderStruct, type SparseHeader } from './sparse-header.js'
import { VmdkImage } from './vmdk-image.js'

/**
 * The new header of a sparse extent grown to `capacity` sectors, with what to write before it:
 * both directories (each entry of the new capacity: the old entries, then new, pre-allocated
 * tables as create makes them, so qemu can write there too) and the file's new length. The
 * directories stay in place while their sectors hold the new entries, else move to the end of
 * the file; the new tables follow them there (all zero: left a hole of the file).
 */
function growPlan(h: SparseHeader, fileSectors: number, gd: Uint32Array, rgd: Uint32Array | null, capacity: number) {
  const old = geometry(h)
  const geo = geometry({ ...h, capacity })
  const added = geo.gdEntries - old.gdEntries
  const inPlace = geo.gdSectors <= old.gdSectors
  // new metadata from the first whole grain at or past the end of the file
  let next = Math.ceil(fileSectors / h.grainSize) * h.grainSize
  const take = (sectors: number) => {
    const s = next
    next += sectors
    return s
  }
  const gdOffset = inPlace ? h.gdOffset : take(geo.gdSectors)
  const rgdOffset = rgd === null ? h.rgdOffset : inPlace ? h.rgdOffset : take(geo.gdSectors)
  const directory = (offset: number, entries: Uint32Array, tables: number) => {
    const buf = Buffer.alloc(geo.gdEntries * 4)
    for (let i = 0; i < old.gdEntries; i++) buf.writeUInt32LE(entries[i], i * 4)
    for (let i = 0; i < added; i++) buf.writeUInt32LE(tables + i * geo.gtSectors, (old.gdEntries + i) * 4)
    // in place, only the new entries are written: the old ones are live
    const from = inPlace ? old.gdEntries * 4 : 0
    return { offset: offset * 512 + from, bytes: buf.subarray(from) }
  }
  const writes = [directory(gdOffset, gd, take(added * geo.gtSectors))]
  if (rgd) writes.push(directory(rgdOffset, rgd, take(added * geo.gtSectors)))
  // uncleanShutdown stays set: the file is open for write until its close clears it
  return { header: { ...h, capacity, gdOffset, rgdOffset, uncleanShutdown: 1 }, writes, fileBytes: Math.max(fileSectors, next) * 512 }
}

/**
 * Grows one hosted sparse extent (not a stream file) to `capacity` sectors, on its open file.
 * Crash-safe: the directories and tables are written and synced before the header names them,
 * and the header (sector 0, one write) is the commit point; stopped before it the file reads as
 * before, with unreferenced sectors at its end (leaks, as check reports them).
 */
export async function growSparseExtent(fh: FileHandle, path: string, h: SparseHeader, gd: Uint32Array, rgd: Uint32Array | null, capacity: number): Promise<SparseHeader> {
  if (h.compressAlgorithm === COMPRESSION_DEFLATE) throw new StorageError('Unsupported', `'${path}': a streamOptimized extent cannot grow (convert it first)`, path)
  const fileSectors = Math.ceil((await fileSize(fh, path)) / 512)
  const plan = growPlan(h, fileSectors, gd, h.flags & FLAG_RGD ? rgd : null, capacity)
  try {
    if (plan.fileBytes > fileSectors * 512) await fh.truncate(plan.fileBytes)
  } catch (e) {
    throw new StorageError('IoError', `'${path}': could not extend the file: ${(e as Error).message}`, path)
  }
  for (const w of plan.writes) await pwriteFull(fh, path, w.offset, w.bytes)
  await datasync(fh, path)
  await pwriteFull(fh, path, 0, SparseHeaderStruct.encode(plan.header))
  await datasync(fh, path)
  return plan.header
}

/**
 * Grows a monolithicSparse VMDK layer to `size` bytes (a multiple of 512): the header's capacity
 * and directories (growSparseExtent), then the descriptor's extent line and geometry. The bytes it
 * had stay; the new range reads zeros (a child layer reads zeros past a smaller parent's end, so
 * the layer's own parents need not grow). Shrinking is refused (InvalidArgument): the VM's file
 * system would lose its end. Other subformats are Unsupported.
 */
export async function growVmdk(path: string, size: number): Promise<{ from: number; to: number }> {
  if (!Number.isSafeInteger(size) || size <= 0) throw new StorageError('InvalidArgument', `invalid size ${size}`)
  size = Math.ceil(size / 512) * 512
  const img = await VmdkImage.open(path)
  try {
    const from = img.size
    if (size < from) throw new StorageError('InvalidArgument', `cannot shrink '${path}' from ${from} to ${size} bytes: only growing is supported`, path)
    if (size === from) return { from, to: size }
    const parts = img.sparseExtents()
    if (img.createType !== 'monolithicSparse' || parts.length !== 1) {
      throw new StorageError('Unsupported', `'${path}': only a monolithicSparse VMDK can grow (this one is ${img.createType}; convert it first)`, path)
    }
    const max = maxSparseExtentBytes(parts[0].extent.header.grainSize)
    if (size > max) throw new StorageError('InvalidArgument', `invalid size ${size}: a monolithicSparse disk holds at most ${max} bytes`, path)
    const ext = parts[0].extent
    const gd = ext.directory()
    const rgd = ext.redundantDirectory()
    await growSparseExtent(ext.handle, path, ext.header, gd, rgd, size / 512)
    const d = img.descriptor
    const heads = Number(d.ddb.find(([k]) => k === 'ddb.geometry.heads')?.[1] ?? 16) || 16
    const ddb = d.ddb.map(([k, v]): [string, string] => (k === 'ddb.geometry.cylinders' ? [k, String(Math.floor(size / (63 * heads * 512)))] : [k, v]))
    await img.writeDescriptor({ ...d, extents: [{ ...d.extents[0], sectors: size / 512 }], ddb })
    return { from, to: size }
  } finally {
    await img.close()
  }
}

import { realpath } from 'node:fs/promises'
import { StorageError, isStorageError } from '../errors.js'
import { dataRuns } from '../data-runs.js'
import { datasync, isZero, preadFull, pwriteFull, toU32 } from '../file-io.js'
import { CID_NOPARENT } from './descriptor.js'
import { FLAG_MARKERS } from './sparse-header.js'
import type { SparseExtent } from './sparse-extent.js'
import { VmdkImage } from './vmdk-image.js'

/** qemu-img check's JSON keys, plus Tandem's list of findings. */
export interface CheckResult {
  filename: string
  format: 'vmdk'
  'check-errors': number
  corruptions: number
  leaks: number
  'corruptions-fixed': number
  'leaks-fixed': number
  'total-clusters': number
  'allocated-clusters': number
  'image-end-offset': number
  /** one line per finding, qemu-style ("ERROR …", "Leaked cluster …") */
  messages: string[]
}

export interface CheckOptions {
  /** fix leaks and rebuild damaged grain directories and tables from their redundant copies */
  repair?: boolean
}

interface Finding {
  kind: 'corruption' | 'leak' | 'error'
  message: string
}

/** Exit status of `tandem disk check`, as qemu-img: 0 clean, 2 corruptions, 3 leaks only, 1 could not check. */
export function checkExitCode(r: CheckResult): number {
  if (r['check-errors'] > 0) return 1
  if (r.corruptions > 0) return 2
  if (r.leaks > 0) return 3
  return 0
}

/**
 * Checks a VMDK layer like `qemu-img check`, and what qemu misses: GD entries that are 0 or
 * past EOF, GD/RGD disagreement, GTEs past EOF or into metadata, grains used twice, truncated
 * grains, leaked grains, a bad descriptor, a parentCID that does not match the parent.
 */
export async function checkImage(path: string, opts: CheckOptions = {}): Promise<CheckResult> {
  const first = await analyse(path, false)
  if (!opts.repair || first.result['check-errors'] > 0 || (first.result.corruptions === 0 && first.result.leaks === 0)) {
    return first.result
  }
  await analyse(path, true)
  const after = (await analyse(path, false)).result
  after['corruptions-fixed'] = Math.max(0, first.result.corruptions - after.corruptions)
  after['leaks-fixed'] = Math.max(0, first.result.leaks - after.leaks)
  after.messages = [...first.result.messages, ...after.messages.map((m) => `after repair: ${m}`)]
  return after
}

async function analyse(path: string, repair: boolean): Promise<{ result: CheckResult }> {
  const result: CheckResult = {
    filename: path,
    format: 'vmdk',
    'check-errors': 0,
    corruptions: 0,
    leaks: 0,
    'corruptions-fixed': 0,
    'leaks-fixed': 0,
    'total-clusters': 0,
    'allocated-clusters': 0,
    'image-end-offset': 0,
    messages: [],
  }
  const add = (f: Finding, count = 1) => {
    if (f.kind === 'corruption') result.corruptions += count
    else if (f.kind === 'leak') result.leaks += count
    else result['check-errors'] += count
    result.messages.push(f.message)
  }
  let img: VmdkImage
  try {
    img = await VmdkImage.open(path, { readOnly: !repair })
  } catch (e) {
    // an image another process holds cannot be checked now: that is not a finding about the image
    if (isStorageError(e, 'Busy')) throw e
    if (isStorageError(e) && (e.code === 'Corrupt' || e.code === 'BadMagic')) {
      add({ kind: 'corruption', message: `ERROR ${e.message}` })
      return { result }
    }
    if (isStorageError(e)) {
      add({ kind: 'error', message: `ERROR ${e.message}` })
      return { result }
    }
    throw e
  }
  try {
    for (const { extent } of img.sparseExtents()) {
      const r = await checkExtent(extent, add, repair)
      result['total-clusters'] += r.total
      result['allocated-clusters'] += r.allocated
      result['image-end-offset'] = Math.max(result['image-end-offset'], r.end)
    }
    if (!repair) await checkParentLink(img, add)
  } finally {
    await img.close()
  }
  return { result }
}

async function checkParentLink(img: VmdkImage, add: (f: Finding) => void): Promise<void> {
  const pp = img.parentPath
  if (pp === undefined) {
    if (img.parentCid !== CID_NOPARENT) add({ kind: 'corruption', message: `ERROR parentCID is ${hex(img.parentCid)} but the descriptor names no parentFileNameHint` })
    return
  }
  let parent: VmdkImage
  try {
    parent = await VmdkImage.open(pp, { readOnly: true })
  } catch (e) {
    add({ kind: 'corruption', message: `ERROR backing file '${pp}' cannot be opened: ${(e as Error).message}` })
    return
  }
  try {
    if (parent.cid !== img.parentCid) {
      add({
        kind: 'corruption',
        message: `ERROR parentCID ${hex(img.parentCid)} of '${img.path}' does not match CID ${hex(parent.cid)} of its parent '${await realpath(pp)}'`,
      })
    }
  } finally {
    await parent.close()
  }
}

const hex = (n: number) => n.toString(16).padStart(8, '0')

interface Table {
  sector: number
  valid: boolean
  entries: Uint32Array | null
}

async function checkExtent(ext: SparseExtent, add: (f: Finding, n?: number) => void, repair: boolean) {
  const h = ext.header
  const geo = ext.geo
  const file = ext.path
  const fileBytes = await ext.fileBytes()
  const fileSectors = Math.ceil(fileBytes / 512)
  const per = h.numGTEsPerGT
  const totalGrains = Math.ceil(h.capacity / h.grainSize)
  const gd = ext.directory()
  const rgd = ext.redundantDirectory()
  const tableOk = (s: number) => s !== 0 && s >= 1 && s + geo.gtSectors <= fileSectors
  const zeroTable = new Uint32Array(per)

  const metadata: [number, number][] = [] // header, descriptor, directories and tables
  // metadata past overHead in an uncompressed extent (a table made on first write, directories a
  // grow moved) sits in whole grains of its own: the rest of its last grain (within the file) is
  // its padding, not a leak
  const addMetadata = (a: number, b: number) => {
    if (a >= h.overHead && !ext.compressed) b = Math.max(b, Math.min(fileSectors, Math.ceil(b / h.grainSize) * h.grainSize))
    const last = metadata[metadata.length - 1]
    if (last && last[1] === a) last[1] = b
    else metadata.push([a, b])
  }
  addMetadata(0, h.overHead)
  if (h.gdOffset < fileSectors) addMetadata(h.gdOffset, h.gdOffset + geo.gdSectors)
  if (rgd && h.rgdOffset < fileSectors) addMetadata(h.rgdOffset, h.rgdOffset + geo.gdSectors)

  // 1. Directories and tables, primary against redundant.
  const primary = await readTables(ext, gd, tableOk, zeroTable)
  const redundant: (Table | null)[] = rgd ? await readTables(ext, rgd, tableOk, zeroTable) : new Array<null>(geo.gdEntries).fill(null)
  for (const tables of [primary, redundant]) for (const x of tables) if (x?.valid) addMetadata(x.sector, x.sector + geo.gtSectors)
  for (let i = 0; i < geo.gdEntries; i++) {
    const p = primary[i]
    const r = redundant[i]
    const describe = (s: number) => (s === 0 ? 'is 0 (no grain table)' : `points past the end of the file (sector ${s}, file has ${fileSectors} sectors)`)
    if (!p.valid && !(gd[i] === 0 && !rgd)) {
      add({ kind: 'corruption', message: `ERROR grain directory entry ${i} ${describe(gd[i])}${r?.valid ? '; the redundant copy is intact' : ''}` })
    }
    if (r && !r.valid) add({ kind: 'corruption', message: `ERROR redundant grain directory entry ${i} ${describe(rgd![i])}${p.valid ? '; the primary copy is intact' : ''}` })
  }

  // 2. Grain table entries.
  const owner = new Map<number, number>() // grain sector -> grain index
  const grains: [number, number][] = []
  let allocated = 0
  const fixes: { table: number; index: number; value: number; which: 'primary' | 'redundant' }[] = []
  for (let t = 0; t < geo.gdEntries; t++) {
    const p = primary[t]
    const r = redundant[t]
    // Tables that are all zero (or unreadable) beside each other hold nothing to compare or count.
    if ((p.entries === null || p.entries === zeroTable) && (r?.entries == null || r.entries === zeroTable)) continue
    for (let j = 0; j < per; j++) {
      const g = t * per + j
      if (g >= totalGrains) break
      const pv = p.entries ? p.entries[j] : undefined
      const rv = r?.entries ? r.entries[j] : undefined
      const validGte = (v: number | undefined): v is number =>
        v !== undefined && (v === 0 || (v === 1 && ext.zeroedGrains) || (v >= h.overHead && v + h.grainSize <= fileSectors))
      if (pv !== undefined && rv !== undefined && pv !== rv && rv === 0 && pv > 1 && validGte(pv)) {
        // Entries are written primary first, then redundant (SPEC.md §5): a process killed
        // between the two leaves exactly this. Harmless — reads use the primary — and repairable.
        add({ kind: 'leak', message: `Grain table ${t} entry ${j} (grain ${g}): the redundant entry was not yet updated (interrupted write); primary ${pv}` })
        fixes.push({ table: t, index: j, value: pv, which: 'redundant' })
      } else if (pv !== undefined && rv !== undefined && pv !== rv) {
        add({ kind: 'corruption', message: `ERROR grain table ${t} entry ${j} (grain ${g}) differs: primary ${pv}, redundant ${rv}` })
        if (validGte(pv)) fixes.push({ table: t, index: j, value: pv, which: 'redundant' })
        else if (validGte(rv)) fixes.push({ table: t, index: j, value: rv, which: 'primary' })
      }
      const v = pv ?? rv
      if (v === undefined || v === 0 || (v === 1 && ext.zeroedGrains)) continue
      allocated++
      if (v < h.overHead) {
        add({ kind: 'corruption', message: `ERROR cluster offset for grain ${g} (sector ${v}) points into the metadata (data starts at sector ${h.overHead})` })
        continue
      }
      if (v >= fileSectors) {
        add({ kind: 'corruption', message: `ERROR cluster offset for sector ${g * h.grainSize} points after EOF (grain ${g} at sector ${v}, file has ${fileSectors} sectors)` })
        continue
      }
      if (!ext.compressed && v + h.grainSize > fileSectors) {
        add({ kind: 'corruption', message: `ERROR grain ${g} at sector ${v} is truncated: the file ends at sector ${fileSectors}` })
        continue
      }
      const prev = owner.get(v)
      if (prev !== undefined) {
        add({ kind: 'corruption', message: `ERROR grain at sector ${v} is used twice: by grain ${prev} and grain ${g}` })
        continue
      }
      owner.set(v, g)
      grains.push([v, g])
    }
  }

  // 3. Leaks: sectors past the metadata that nothing references (uncompressed extents).
  let end = h.overHead
  for (const [s, g] of grains) {
    if (!ext.compressed) {
      end = Math.max(end, s + h.grainSize)
      continue
    }
    // A compressed grain takes its marker and zlib data, not a whole grain (SPEC.md §4).
    const n = await compressedGrainSectors(ext, s)
    if (s + n > fileSectors) add({ kind: 'corruption', message: `ERROR compressed grain ${g} at sector ${s} is truncated: its ${n} sectors go past the end of the file (${fileSectors} sectors)` })
    end = Math.max(end, Math.min(s + n, fileSectors))
  }
  for (const [, e] of metadata) end = Math.max(end, e)
  const leaked: [number, number][] = [] // [start, end) sectors, at most one grain each
  if (!ext.compressed) {
    const used: [number, number][] = [...metadata, ...grains.map(([s]) => [s, s + h.grainSize] as [number, number])].sort((a, b) => a[0] - b[0])
    let cursor = h.overHead
    const gap = (a: number, b: number) => {
      for (let s = a; s < b; s += h.grainSize) leaked.push([s, Math.min(b, s + h.grainSize)])
    }
    for (const [a, b] of used) {
      if (a > cursor) gap(cursor, a)
      cursor = Math.max(cursor, b)
    }
    if (fileSectors > cursor) gap(cursor, fileSectors)
    for (const [s, e] of leaked) add({ kind: 'leak', message: `Leaked grain at sector ${s} (offset ${s * 512}, ${(e - s) * 512} bytes)` })
  }

  if (repair) await repairExtent(ext, { gd, rgd, primary, redundant, fixes, grains, leaked, fileSectors })
  return { total: totalGrains, allocated, end: Math.max(end, ext.compressed ? fileSectors : end) * 512 }
}

/** Sectors a compressed grain occupies from its marker: 12 bytes of marker, then its zlib data. */
async function compressedGrainSectors(ext: SparseExtent, sector: number): Promise<number> {
  if ((ext.header.flags & FLAG_MARKERS) === 0) return ext.header.grainSize
  const marker = await preadFull(ext.handle, ext.path, sector * 512, 12)
  return Math.ceil((12 + marker.readUInt32LE(8)) / 512)
}

/** Tables read at once: contiguous tables (qemu's layout) take one read per 1 MiB. */
const TABLES_PER_READ = 512

/**
 * The tables a directory points at. Runs of contiguous tables are read at once, and runs that are
 * holes of the file (SEEK_HOLE: the untouched tables of a new disk) are not read at all; every
 * all-zero table is `zeroTable` itself, so a 100 TiB disk's millions of empty tables take no memory.
 */
async function readTables(ext: SparseExtent, dir: Uint32Array, tableOk: (s: number) => boolean, zeroTable: Uint32Array): Promise<Table[]> {
  const gtSectors = ext.geo.gtSectors
  const tableBytes = ext.header.numGTEsPerGT * 4
  const out: Table[] = []
  for (let i = 0; i < dir.length; ) {
    const s = dir[i]
    if (!tableOk(s)) {
      out.push({ sector: s, valid: false, entries: null })
      i++
      continue
    }
    let n = 1
    while (n < TABLES_PER_READ && i + n < dir.length && dir[i + n] === s + n * gtSectors && tableOk(dir[i + n])) n++
    const bytes = (n - 1) * gtSectors * 512 + tableBytes
    const runs = dataRuns(ext.handle.fd, s * 512, s * 512 + bytes)
    const buf = runs.some((r) => r.data) ? await preadFull(ext.handle, ext.path, s * 512, bytes) : null
    for (let k = 0; k < n; k++) {
      const at = k * gtSectors * 512
      const zero = buf === null || isZero(buf, at, at + tableBytes)
      out.push({ sector: s + k * gtSectors, valid: true, entries: zero ? zeroTable : toU32(buf.subarray(at, at + tableBytes)) })
    }
    i += n
  }
  return out
}

interface RepairPlan {
  gd: Uint32Array
  rgd: Uint32Array | null
  primary: Table[]
  redundant: (Table | null)[]
  fixes: { table: number; index: number; value: number; which: 'primary' | 'redundant' }[]
  grains: [number, number][]
  leaked: [number, number][]
  fileSectors: number
}

/**
 * Repairs in crash-safe order: rebuilt tables are written and synced before the directory
 * entry that points at them; a moved grain is copied and synced before its GTEs change, and
 * the file is cut only after that.
 */
async function repairExtent(ext: SparseExtent, plan: RepairPlan): Promise<void> {
  const h = ext.header
  const geo = ext.geo
  const fh = ext.handle
  const file = ext.path
  let endSector = Math.ceil(plan.fileSectors / h.grainSize) * h.grainSize
  const u32 = (v: number) => {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(v)
    return b
  }
  const tableBytes = (t: Uint32Array) => {
    const b = Buffer.alloc(geo.gtSectors * 512)
    for (let i = 0; i < t.length; i++) b.writeUInt32LE(t[i], i * 4)
    return b
  }
  const used = new Set<number>()
  for (let i = 0; i < geo.gdEntries; i++) {
    if (plan.primary[i].valid) used.add(plan.gd[i])
    if (plan.redundant[i]?.valid) used.add(plan.rgd![i])
  }
  /** Where a rebuilt table goes: its place in the pre-allocated layout if free, else a new grain. */
  const placeFor = (dirOffset: number, i: number) => {
    const canonical = dirOffset + geo.gdSectors + i * geo.gtSectors
    if (canonical + geo.gtSectors <= h.overHead && !used.has(canonical)) {
      used.add(canonical)
      return canonical
    }
    const s = endSector
    endSector += h.grainSize
    return s
  }
  /** Rebuilds table `i` of the directory at `dirOffset` as a copy of `from`: table first, synced, then its entry. */
  const rebuild = async (dst: Table, from: Table, dirOffset: number, i: number) => {
    const s = placeFor(dirOffset, i)
    await pwriteFull(fh, file, s * 512, tableBytes(from.entries!))
    await datasync(fh, file)
    await pwriteFull(fh, file, dirOffset * 512 + i * 4, u32(s))
    dst.valid = true
    dst.sector = s
    dst.entries = from.entries!.slice()
  }
  // Directory entries rebuilt from the other copy.
  for (let i = 0; i < geo.gdEntries; i++) {
    const p = plan.primary[i]
    const r = plan.redundant[i]
    if (!p.valid && r?.valid) await rebuild(p, r, h.gdOffset, i)
    else if (p.valid && r && !r.valid) await rebuild(r, p, h.rgdOffset, i)
  }
  // Entries that differ: take the valid side.
  for (const f of plan.fixes) {
    const t = f.which === 'primary' ? plan.primary[f.table] : plan.redundant[f.table]
    if (!t?.valid) continue
    await pwriteFull(fh, file, t.sector * 512 + f.index * 4, u32(f.value))
  }
  await datasync(fh, file)
  if (ext.compressed || plan.leaked.length === 0) {
    await ext.reload()
    return
  }
  // Leaks: move the last grains into the holes, then cut the file after the last one in use.
  // Only a hole a whole grain long can take a grain without overlapping what follows it.
  const holes = plan.leaked.filter(([a, b]) => b - a === h.grainSize).map(([a]) => a)
  const grains = [...plan.grains].sort((a, b) => a[0] - b[0])
  const per = h.numGTEsPerGT
  const setGte = async (g: number, v: number) => {
    const t = Math.floor(g / per)
    const j = g % per
    if (plan.primary[t].valid) await pwriteFull(fh, file, plan.primary[t].sector * 512 + j * 4, u32(v))
    const r = plan.redundant[t]
    if (r?.valid) await pwriteFull(fh, file, r.sector * 512 + j * 4, u32(v))
  }
  let hi = grains.length - 1
  for (const hole of holes) {
    if (hi < 0 || grains[hi][0] <= hole) break
    if (hole + h.grainSize > grains[hi][0]) break // would overlap the grain it replaces
    const [from, g] = grains[hi]
    const data = await preadFull(fh, file, from * 512, geo.grainBytes)
    await pwriteFull(fh, file, hole * 512, data)
    await datasync(fh, file)
    await setGte(g, hole)
    await datasync(fh, file)
    grains[hi] = [hole, g]
    hi--
    grains.sort((a, b) => a[0] - b[0])
    hi = grains.length - 1
  }
  let last = h.overHead
  for (const [s] of grains) last = Math.max(last, s + h.grainSize)
  for (let i = 0; i < geo.gdEntries; i++) {
    if (plan.primary[i].valid) last = Math.max(last, plan.primary[i].sector + geo.gtSectors)
    if (plan.redundant[i]?.valid) last = Math.max(last, plan.redundant[i]!.sector + geo.gtSectors)
  }
  try {
    await fh.truncate(Math.ceil(last / h.grainSize) * h.grainSize * 512)
  } catch (e) {
    throw new StorageError('IoError', `'${file}': could not truncate: ${(e as Error).message}`, file)
  }
  await datasync(fh, file)
  await ext.reload()
}


import { readdir, rm, stat, unlink } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { isStorageError } from '../../disk-formats/errors.js'
import { datasync, openFile, pwriteFull } from '../../disk-formats/file-io.js'
import { checkImage, createVmdk, VmdkImage } from '../../disk-formats/vmdk/index.js'
import { UNCLEAN_SHUTDOWN_OFFSET } from '../../disk-formats/vmdk/sparse-header.js'
import { LAYER_FILE, RECORD_TMP, layersOf, readRecord, writeRecord, type DiskRecord } from './disk-record.js'

export interface RepairOptions {
  /**
   * Also check the layers left marked uncleanShutdown (open for writing when the process died)
   * and repair what a write cut short leaves (leaked grains, half-updated redundant tables), as
   * `tandem disk check -r` does. Only while no layer of the disk is open: at start.
   */
  checkUnclean: boolean
  /** a layer no record names yet that is to stay (a prepared snapshot's delta) */
  keep?: string
}

/** What an older Tandem's disk create, stopped before its disk.json was in place, leaves. */
const CREATE_LEFTOVER = /^(l-0000(-.+)?\.vmdk|\.disk\.json\.tmp-\d+)$/

/**
 * Puts right what an interrupted operation (a kill, ENOSPC) leaves in one disk's folder, so that
 * no name stays wedged. Every datastore operation is a sequence of steps each of which leaves
 * every chain valid (DESIGN §4); what remains to tidy is:
 * - a folder without disk.json holding at most a base layer (a disk create of an older Tandem
 *   stopped before its record): removed;
 * - `.disk.json.tmp-PID` files: removed;
 * - layers no record names (the new delta of a create or revert stopped before its record was
 *   replaced; the layer a revert or snapshot delete had not yet unlinked): removed;
 * - a snapshot delete stopped between rebasing its children: a layer whose file already descends
 *   from the deleted snapshot's parent. The record follows the files (the snapshot stays, with
 *   its content; deleting it again finishes the job);
 * - a top layer the record names but which is missing: a new empty delta on the current snapshot.
 * Returns one line per thing done.
 */
export async function repairDisk(diskDir: string, name: string, opts: RepairOptions): Promise<string[]> {
  let entries: string[]
  try {
    entries = await readdir(diskDir)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return []
    throw e
  }
  let r: DiskRecord
  try {
    r = await readRecord(diskDir, name)
  } catch (e) {
    if (!isStorageError(e, 'NotFound')) throw e
    if (!entries.every((f) => CREATE_LEFTOVER.test(f))) return [] // not ours: left alone
    await rm(diskDir, { recursive: true, force: true })
    return [`removed '${name}', a disk create that did not finish (${entries.length ? entries.join(', ') : 'empty folder'})`]
  }
  const done: string[] = []
  const named = layersOf(r)
  for (const f of entries) {
    // with a snapshot prepared (keep), its staged record (`…-prepared`) is its commit's: it stays too
    if ((RECORD_TMP.test(f) && !(opts.keep !== undefined && f.endsWith('-prepared'))) || (LAYER_FILE.test(f) && !named.has(f) && f !== opts.keep)) {
      await unlink(join(diskDir, f)).catch(() => undefined)
      done.push(`removed '${f}', left by an operation that did not finish`)
    }
  }
  let changed = false
  const highest = Math.max(...[...named].filter((f) => LAYER_FILE.test(f)).map((f) => Number(f.slice(2, -5))))
  if (r.nextLayer <= highest) {
    r.nextLayer = highest + 1
    changed = true
  }
  const byLayer = new Map(r.snapshots.map((s) => [s.layer, s]))
  if (!(await exists(join(diskDir, r.top)))) {
    const under = r.snapshots.find((s) => s.name === r.current)
    const parent = under ? { path: join(diskDir, under.layer), cid: await cidOf(join(diskDir, under.layer)) } : undefined
    await createVmdk(join(diskDir, r.top), { size: r.size, parent, exclusive: true })
    done.push(`the top layer '${r.top}' was missing: a new empty one ${parent ? `on snapshot '${r.current}'` : '(no snapshot under it)'}`)
  }
  // the record's size follows a top a grow made larger before it stopped (growDisk)
  const topSize = await layerSize(join(diskDir, r.top)).catch(() => undefined)
  if (topSize !== undefined && topSize > r.size) {
    done.push(`the disk's size is now ${topSize} bytes, its top layer's (a grow did not finish)`)
    r.size = topSize
    changed = true
  }
  // The record's tree follows the files: a layer's parent snapshot is the one whose layer its
  // parentFileNameHint names (create, revert and delete keep this so; only an interrupted
  // snapshot delete leaves a child re-linked before the record says so).
  const owner = async (layer: string): Promise<string | null | undefined> => {
    const p = await parentLayerOf(join(diskDir, layer))
    if (p === undefined || p === null) return p
    return byLayer.get(p)?.name
  }
  for (const s of r.snapshots) {
    const p = await owner(s.layer)
    if (p !== undefined && p !== s.parent) {
      done.push(`snapshot '${s.name}' now descends from ${p === null ? 'no snapshot' : `'${p}'`} (a snapshot delete did not finish)`)
      s.parent = p
      changed = true
    }
  }
  const cur = await owner(r.top)
  if (cur !== undefined && cur !== r.current) {
    done.push(`the current state descends from ${cur === null ? 'no snapshot' : `'${cur}'`} (a snapshot delete did not finish)`)
    r.current = cur
    changed = true
  }
  if (changed) await writeRecord(diskDir, r)
  if (opts.checkUnclean) for (const layer of layersOf(r)) done.push(...(await repairUnclean(join(diskDir, layer))))
  return done
}

/** Checks a layer left open for writing; repairs what check can and clears the flag if it is then clean. */
async function repairUnclean(path: string): Promise<string[]> {
  let extents: string[]
  try {
    const img = await VmdkImage.open(path, { readOnly: true })
    extents = img.sparseExtents().filter((e) => e.extent.header.uncleanShutdown !== 0).map((e) => e.extent.path)
    await img.close()
  } catch {
    return [] // a layer that does not open is reported when the disk is opened
  }
  if (extents.length === 0) return []
  const r = await checkImage(path, { repair: true })
  const out: string[] = []
  const fixed = r['leaks-fixed'] + r['corruptions-fixed']
  if (fixed > 0) out.push(`'${basename(path)}' was open for writing when the process stopped: ${fixed} leaked or half-written table entries repaired`)
  if (r.corruptions > 0 || r.leaks > 0 || r['check-errors'] > 0) {
    out.push(`'${basename(path)}' still fails check: ${r.messages.filter((m) => m.startsWith('ERROR')).join('; ')}`)
    return out
  }
  for (const file of extents) {
    const fh = await openFile(file, 'r+')
    try {
      await pwriteFull(fh, file, UNCLEAN_SHUTDOWN_OFFSET, Buffer.from([0]))
      await datasync(fh, file)
    } finally {
      await fh.close()
    }
  }
  return out
}

/** The layer file a layer's parentFileNameHint names (null: a base), or undefined if it does not open. */
async function parentLayerOf(path: string): Promise<string | null | undefined> {
  try {
    const img = await VmdkImage.open(path, { readOnly: true })
    const p = img.parentPath
    await img.close()
    // a parent outside the disk's folder is a linked clone's base: no layer of this disk
    return p === undefined || resolve(dirname(p)) !== resolve(dirname(path)) ? null : basename(p)
  } catch {
    return undefined
  }
}

/** A layer's own size (the size of the disk or snapshot it is the top of). */
export async function layerSize(path: string): Promise<number> {
  const img = await VmdkImage.open(path, { readOnly: true })
  await img.close()
  return img.size
}

async function cidOf(path: string): Promise<number> {
  const img = await VmdkImage.open(path, { readOnly: true })
  const cid = img.cid
  await img.close()
  return cid
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  )
}

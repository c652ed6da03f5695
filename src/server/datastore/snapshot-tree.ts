import { StorageError } from '../../disk-formats/errors.js'
import type { DiskRecord, SnapshotRecord } from './disk-record.js'
import { validName } from './names.js'

/**
 * The snapshot-tree rules (DESIGN §4), as pure functions over a disk's record: which operations
 * are valid, which layers they make, re-link and discard, and the tree as the REST API shows it.
 * Each plan returns a new record and leaves its input as it was; the datastore carries out the
 * file changes and writes the record. Snapshots form a tree as in vSphere:
 * - create freezes the top layer as the snapshot and puts a new delta on it;
 * - revert discards the top and puts a new delta on the chosen snapshot's layer;
 * - delete re-links the snapshot layer's children (child snapshots' layers, and the top if the
 *   snapshot is current) onto its parent's layer and removes the layer.
 */

/** A snapshot as the REST API and `tandem snapshot list` show it ("" when it has no description). */
export type SnapshotView = Omit<SnapshotRecord, 'layer' | 'description'> & { description: string; isCurrent: boolean }

/** Longest snapshot description kept. */
export const MAX_DESCRIPTION = 1024

/** A description as given: a string of at most MAX_DESCRIPTION characters (InvalidArgument otherwise). */
export function validDescription(d: unknown): string {
  if (d === undefined) return ''
  if (typeof d !== 'string' || d.length > MAX_DESCRIPTION || /[\u0000-\u0008\u000b-\u001f\u007f]/.test(d)) {
    throw new StorageError('InvalidArgument', `a snapshot description is text of at most ${MAX_DESCRIPTION} characters (no control characters but tab and newline)`)
  }
  return d
}

/** One snapshot as the REST API shows it. */
export function snapshotView(r: DiskRecord, s: SnapshotRecord): SnapshotView {
  return { name: s.name, parent: s.parent, createdAt: s.createdAt, description: s.description ?? '', isCurrent: s.name === r.current }
}

/** The name of layer number `n` of a disk (`l-0000.vmdk`; LAYER_FILE matches it). */
export function layerName(n: number): string {
  return `l-${String(n).padStart(4, '0')}.vmdk`
}

export function findSnapshot(r: DiskRecord, name: string): SnapshotRecord | undefined {
  return r.snapshots.find((s) => s.name === name)
}

function mustFind(r: DiskRecord, name: string): SnapshotRecord {
  const s = findSnapshot(r, validName('snapshot', name))
  if (!s) throw new StorageError('NotFound', `disk '${r.name}' has no snapshot '${name}'`)
  return s
}

/** The layer under snapshot `name`'s own (its parent snapshot's), or null for a first snapshot. */
function parentLayerOf(r: DiskRecord, s: SnapshotRecord): string | null {
  return s.parent === null ? null : mustFind(r, s.parent).layer
}

/** The current chain: the top, then each layer below it, down to the base. */
export function chainOf(r: DiskRecord): string[] {
  const chain = [r.top]
  const seen = new Set<string>()
  for (let s = r.current; s !== null && !seen.has(s); ) {
    seen.add(s) // a damaged record that loops ends here
    const snap = findSnapshot(r, s)
    if (!snap) break
    chain.push(snap.layer)
    s = snap.parent
  }
  return chain
}

/** The tree as the REST API returns it: each snapshot with its parent, and which is current. */
export function snapshotViews(r: DiskRecord): SnapshotView[] {
  return r.snapshots.map((s) => snapshotView(r, s))
}

/** One snapshot's view: NotFound if there is no such snapshot. */
export function snapshotViewOf(r: DiskRecord, name: string): SnapshotView {
  return snapshotView(r, mustFind(r, name))
}

function copy(r: DiskRecord): DiskRecord {
  return { ...r, snapshots: r.snapshots.map((s) => ({ ...s })) }
}

export interface CreatePlan {
  record: DiskRecord
  made: SnapshotRecord
  /** the new delta, whose parent is `made.layer` (the top until now) */
  top: string
}

/** Snapshot create: Exists if the name is taken. */
export function planCreate(r: DiskRecord, snapshot: string, createdAt: string, description = ''): CreatePlan {
  validName('snapshot', snapshot)
  if (findSnapshot(r, snapshot)) throw new StorageError('Exists', `disk '${r.name}' already has a snapshot '${snapshot}'`)
  const record = copy(r)
  const made: SnapshotRecord = { name: snapshot, layer: r.top, parent: r.current, createdAt, ...(description ? { description } : {}) }
  const top = layerName(record.nextLayer++)
  record.top = top
  record.snapshots.push(made)
  record.current = snapshot
  return { record, made, top }
}

export interface RevertPlan {
  record: DiskRecord
  /** the new delta, whose parent is `parentLayer` */
  top: string
  parentLayer: string
  /** the top until now: no snapshot's layer (a snapshot always freezes the then-top), removed */
  discard: string
}

/** Snapshot revert: NotFound if there is no such snapshot. */
export function planRevert(r: DiskRecord, snapshot: string): RevertPlan {
  const s = mustFind(r, snapshot)
  const record = copy(r)
  const top = layerName(record.nextLayer++)
  record.top = top
  record.current = s.name
  return { record, top, parentLayer: s.layer, discard: r.top }
}

export interface DeletePlan {
  record: DiskRecord
  /** the deleted snapshot's layer, removed once `record` is written */
  layer: string
  /** what its children are re-linked onto (null: they become bases) */
  parentLayer: string | null
  /** layers whose parent is `layer`: child snapshots' layers, and the top if it was current */
  children: string[]
}

/** Snapshot delete: NotFound if there is no such snapshot. */
export function planDelete(r: DiskRecord, snapshot: string): DeletePlan {
  const s = mustFind(r, snapshot)
  const children = r.snapshots.filter((x) => x.parent === s.name).map((x) => x.layer)
  if (r.current === s.name) children.push(r.top)
  const record = copy(r)
  for (const x of record.snapshots) if (x.parent === s.name) x.parent = s.parent
  if (record.current === s.name) record.current = s.parent
  record.snapshots = record.snapshots.filter((x) => x.name !== s.name)
  return { record, layer: s.layer, parentLayer: parentLayerOf(r, s), children }
}

import { randomBytes } from 'node:crypto'
import { mkdir, readdir, rename, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { LRUCache } from 'lru-cache'
import type { BlockDevice } from '../../disk-formats/block-device.js'
import { StorageError, fromSystemError } from '../../disk-formats/errors.js'
import { duringSync, openFile } from '../../disk-formats/file-io.js'
import { createVmdk, growVmdk, VmdkImage, type StagedFile, type Subformat } from '../../disk-formats/vmdk/index.js'
import { convert, linkParent, openVmdk, rebase } from '../../disk-formats/chain/index.js'
import { checked, swappable, type LiveDisk } from '../../disk-formats/filters/index.js'
import { DiskLocks } from './disk-locks.js'
import { RECORD, readRecord, stageRecord, writeRecord, type AccessRecord, type DiskRecord, type SnapshotRecord } from './disk-record.js'
import { isValidName, parseExportName, validName } from './names.js'
import { layerSize, repairDisk } from './repair.js'
import { chainOf, findSnapshot, layerName, planCreate, planDelete, planRevert, snapshotViewOf, snapshotViews, validDescription, type SnapshotView } from './snapshot-tree.js'

export type { AccessRecord, DiskRecord, SnapshotRecord } from './disk-record.js'

export interface DiskInfo {
  name: string
  /** a linked clone's base snapshot (null: a disk of its own) */
  base: { disk: string; snapshot: string } | null
  size: number
  actualSize: number
  createdAt: string
  chain: string[]
  current: string | null
  snapshots: SnapshotView[]
  openExports: Record<string, number>
  /** a snapshot prepared and not yet committed (see prepareSnapshot) */
  prepared: string | null
  writers: number
  access: { initiators: string[]; chap: boolean }
}

interface Handle {
  dev: BlockDevice
  refs: number
  live?: LiveDisk
}

/** Idle exports kept open for the next client (an open VMDK costs a few file opens and reads). */
const IDLE_HANDLES = 32

/** A snapshot prepared (its delta made and open) and not yet committed: held in memory only. */
interface Prepared {
  name: string
  createdAt: string
  description: string
  /** the delta's layer name, the record's next layer */
  layer: string
  delta: VmdkImage
  /** the open top the delta reads through to, once a commit linked it */
  linked?: VmdkImage
  /** the record the commit puts in place, written ahead (`json` is its text) */
  staged?: { file: StagedFile; json: string }
}

/** A prepared snapshot as the REST API shows it. */
export type PreparedView = Omit<SnapshotRecord, 'layer' | 'description'> & { description: string; state: 'prepared' }

export interface ExportHandle {
  readonly name: string
  readonly device: BlockDevice
  readonly readOnly: boolean
  release(): Promise<void>
}

/** Under `.tandem/`: new disks are built here and renamed into place. */
const STAGING = 'new'
/** Under `.tandem/`: a deleted disk's folder is renamed here, then removed. */
const TRASH = 'trash'

/**
 * A datastore: one folder, one sub-folder per disk holding its VMDK layers and disk.json.
 * Snapshots form a tree as in vSphere; snapshot-tree.ts has the rules. Delete rebases the
 * snapshot layer's children onto its parent (content-preserving, so neither the disk nor any
 * other snapshot changes) and removes the layer.
 * A client with the disk's read-write export open keeps its connection through all three: the
 * export is paused, re-pointed at the new top, and resumed (after a revert it reads the
 * reverted content). Create makes the new delta before the pause and, in it, only stacks that
 * delta on the open chain. Deleting a snapshot while any snapshot export of that disk is open is
 * refused (Busy).
 *
 * Crashes: every operation is a sequence of steps each of which leaves every chain valid and
 * every snapshot's content in place, with disk.json (replaced atomically) as the commit point;
 * a disk appears and disappears by one rename. What a stopped operation leaves over (a layer no
 * record names, a half-finished snapshot delete) is put right by repairDisk: for every disk when
 * the datastore opens, and for a disk whose last operation failed before its next one.
 * Every request on a disk holds the disk's lock from start to end.
 */
export class Datastore {
  private readonly locks = new DiskLocks()
  /** disks known to hold nothing a stopped operation left over (see repairDisk) */
  private readonly tidy = new Set<string>()
  /** what opening the datastore repaired, per disk (for the log) */
  readonly repairs: { disk: string; done: string[] }[] = []
  private readonly handles = new Map<string, Handle>()
  /** per export name, its clients as the protocols named them (`nbd 10.0.0.5:40312`, `iscsi iqn.…`) */
  private readonly clients = new Map<string, Map<symbol, string>>()
  /** per disk, the snapshot prepared and not yet committed */
  private readonly prepared = new Map<string, Prepared>()
  /**
   * per disk, what a commit finishes after answering (the record's folder sync, the old top's
   * freeze); the disk's next request under its lock waits for it
   */
  private readonly settling = new Map<string, Promise<void>>()
  private readonly idle = new LRUCache<string, Handle>({
    max: IDLE_HANDLES,
    // evicted handles are closed; deleted ones were taken back into use (or closed by the caller)
    dispose: (h, _key, reason) => {
      if (reason !== 'delete') void h.dev.close().catch(() => undefined)
    },
  })

  /**
   * Called before a disk's read-write export is opened; resolves to what to call when it is closed
   * (the server holds the disk's lock in between). Rejecting refuses the open.
   */
  onWritable?: (disk: string) => Promise<() => Promise<void>>

  /** wraps each writable export's device (the server's run-time disk faults, `serve --fault-injection`) */
  exportFilter?: (disk: string, dev: BlockDevice) => BlockDevice

  private constructor(readonly dir: string) {}

  /** Opens (creating) the datastore folder and repairs what stopped operations left in it. */
  static async open(dir: string): Promise<Datastore> {
    try {
      await mkdir(join(dir, '.tandem'), { recursive: true })
      for (const sub of [STAGING, TRASH]) await rm(join(dir, '.tandem', sub), { recursive: true, force: true })
    } catch (e) {
      throw fromSystemError(e, dir, 'Could not create the datastore')
    }
    const ds = new Datastore(dir)
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (!e.isDirectory() || e.name.startsWith('.')) continue
      if (!isValidName(e.name)) continue // not a folder Tandem made
      try {
        const done = await repairDisk(join(dir, e.name), e.name, { checkUnclean: true })
        if (done.length > 0) ds.repairs.push({ disk: e.name, done })
        ds.tidy.add(e.name)
      } catch (err) {
        // one damaged disk (an unreadable record) does not keep the others from being served
        ds.repairs.push({ disk: e.name, done: [`could not be repaired: ${(err as Error).message}`] })
      }
    }
    return ds
  }

  /** Runs `fn` holding the disk's lock. */
  private locked<T>(disk: string, fn: () => Promise<T>): Promise<T> {
    return this.run(disk, fn)
  }

  /** Runs `fn` holding the disk's lock, once what a commit left to finish (settling) is done. */
  private run<T>(disk: string, fn: () => Promise<T>): Promise<T> {
    return this.locks.run(disk, async () => {
      await this.settling.get(disk)
      return fn()
    })
  }

  /**
   * Runs a change to a disk holding its lock, after repairing what a failed change left; a
   * failure marks the disk for repair before the next one.
   */
  private changing<T>(disk: string, fn: () => Promise<T>): Promise<T> {
    validName('disk', disk) // before anything joins it into a path
    return this.run(disk, async () => {
      if (!this.tidy.has(disk)) {
        await repairDisk(this.diskDir(disk), disk, { checkUnclean: false, keep: this.prepared.get(disk)?.layer })
        this.tidy.add(disk)
      }
      try {
        return await fn()
      } catch (e) {
        this.tidy.delete(disk)
        throw e
      }
    })
  }

  private diskDir(name: string): string {
    return join(this.dir, validName('disk', name))
  }

  async readRecord(name: string): Promise<DiskRecord> {
    return readRecord(this.diskDir(name), name)
  }

  private async writeRecord(r: DiskRecord): Promise<void> {
    await writeRecord(this.diskDir(r.name), r)
  }

  async listDisks(): Promise<string[]> {
    const names: string[] = []
    for (const e of await readdir(this.dir, { withFileTypes: true })) {
      if (!e.isDirectory() || e.name.startsWith('.')) continue
      try {
        await stat(join(this.dir, e.name, RECORD))
        names.push(e.name)
      } catch {
        /* not a disk */
      }
    }
    return names.sort()
  }

  /** A fresh folder name under `.tandem/<sub>/`. */
  private async scratch(sub: string, name: string): Promise<string> {
    const d = join(this.dir, '.tandem', sub)
    await mkdir(d, { recursive: true })
    return join(d, `${name}.${randomBytes(6).toString('hex')}`)
  }

  /** Makes the datastore folder's entries durable (after a rename in it). */
  private async syncDir(): Promise<void> {
    const fh = await openFile(this.dir, 'r')
    try {
      await duringSync(() => fh.sync()).catch(() => undefined)
    } finally {
      await fh.close()
    }
  }

  /**
   * Creates a disk: built in `.tandem/new/`, then renamed into place with its record. Returns
   * what describe would, taken before any request queued behind this one runs.
   */
  async createDisk(name: string, size: number, opts: { subformat?: Subformat } = {}): Promise<DiskInfo> {
    validName('disk', name)
    if (!Number.isSafeInteger(size) || size <= 0) throw new StorageError('InvalidArgument', `invalid size ${size}`)
    size = Math.ceil(size / 512) * 512
    return this.makeDisk(name, size, async (top) => {
      await createVmdk(top, { size, subformat: opts.subformat ?? 'monolithicSparse', exclusive: true })
    })
  }

  /**
   * A new disk `name` from disk `source`: linked (its first layer a delta on `snapshot`'s layer,
   * which it shares read-only: VMware's linked clone) or full (the content copied into a layer of
   * its own, from `snapshot` or, without one, from the current state while no client writes it).
   * The source's snapshot stays as long as a linked clone names it (deleteSnapshot refuses).
   */
  async cloneDisk(source: string, name: string, o: { snapshot?: string; linked: boolean }): Promise<DiskInfo> {
    validName('disk', source)
    validName('disk', name)
    if (o.linked && o.snapshot === undefined) throw new StorageError('InvalidArgument', 'a linked clone needs a snapshot of the source (its base)')
    if (o.snapshot !== undefined) validName('snapshot', o.snapshot)
    if (source === name) throw new StorageError('Exists', `a disk named '${name}' already exists`)
    // the source's lock is held while its layer is read or linked: no delete or revert meanwhile
    return this.locked(source, async () => {
      const r = await this.readRecord(source)
      const snap = o.snapshot === undefined ? undefined : findSnapshot(r, o.snapshot)
      if (o.snapshot !== undefined && !snap) throw new StorageError('NotFound', `disk '${source}' has no snapshot '${o.snapshot}'`)
      if (!snap && this.handles.get(source)) throw new StorageError('Busy', `cannot copy the current state of '${source}': ${this.usersOf(source)} (clone a snapshot)`)
      if (!snap) await this.dropIdle(source)
      const layer = this.layerPath(source, snap ? snap.layer : r.top)
      // a snapshot's size: its layer's (a snapshot taken before a grow is smaller than the disk)
      const size = snap ? await layerSize(layer) : r.size
      return this.makeDisk(
        name,
        size,
        async (top) => {
          if (o.linked) {
            await createVmdk(top, { size, parent: { path: layer, cid: await this.cidOfLayer(source, snap!.layer) }, exclusive: true })
            // the hint as seen from the disk's own folder (it is made in .tandem/new/)
            const img = await VmdkImage.open(top)
            try {
              await img.writeDescriptor({ ...img.descriptor, parentFileNameHint: join('..', source, snap!.layer) })
            } finally {
              await img.close()
            }
            return
          }
          const src = await openVmdk(layer, { readOnly: true })
          try {
            await convert(src, top, { to: 'vmdk', subformat: 'monolithicSparse', sync: true })
          } finally {
            await src.close()
          }
        },
        o.linked ? { disk: source, snapshot: snap!.name } : undefined,
      )
    })
  }

  /** Makes disk `name` of `size` bytes: `fill` writes its first layer in `.tandem/new/`, then it is renamed into place with its record. */
  private makeDisk(name: string, size: number, fill: (top: string) => Promise<void>, base?: { disk: string; snapshot: string }): Promise<DiskInfo> {
    return this.changing(name, async () => {
      const dir = this.diskDir(name)
      const taken = () => new StorageError('Exists', `a disk named '${name}' already exists`)
      if (await stat(dir).then(() => true, () => false)) throw taken()
      let stage = ''
      try {
        stage = await this.scratch(STAGING, name)
        await mkdir(stage)
        const top = layerName(0)
        await fill(join(stage, top))
        const r: DiskRecord = {
          version: 1,
          name,
          size,
          createdAt: new Date().toISOString(),
          top,
          current: null,
          nextLayer: 1,
          snapshots: [],
          access: { initiators: [] },
          ...(base ? { base } : {}),
        }
        await writeRecord(stage, r)
        try {
          await rename(stage, dir)
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code
          throw code === 'EEXIST' || code === 'ENOTEMPTY' ? taken() : e
        }
        await this.syncDir()
        stage = ''
        return await this.describeLocked(name)
      } catch (e) {
        if (stage) await rm(stage, { recursive: true, force: true }).catch(() => undefined)
        throw fromSystemError(e, dir, 'Could not create')
      }
    })
  }

  /** The linked clones whose base is `disk`'s snapshot `snapshot` (any snapshot of it when not given). */
  private async clonesOf(disk: string, snapshot?: string): Promise<string[]> {
    const out: string[] = []
    for (const d of await this.listDisks()) {
      if (d === disk) continue
      const b = (await this.readRecord(d).catch(() => null))?.base
      if (b && b.disk === disk && (snapshot === undefined || b.snapshot === snapshot)) out.push(d)
    }
    return out
  }

  /**
   * Grows disk `name` to `size` bytes (rounded up to a sector): its top layer grows (growVmdk),
   * then the record names the new size. Snapshots and a linked clone's base keep their size (a
   * layer reads zeros past a smaller parent's end), so each snapshot reads as it was. Shrinking
   * is refused (InvalidArgument), and so is a grow while clients have the disk's read-write
   * export open (Busy, `details.connections` and `clients`: a client sized the disk when it
   * connected, and NBD has no way to tell it of a new size): they disconnect, then it grows.
   * A stop after the layer grew and before the record leaves a top larger than the record, which
   * repairDisk makes the record follow.
   */
  async growDisk(name: string, size: number): Promise<DiskInfo> {
    if (!Number.isSafeInteger(size) || size <= 0) throw new StorageError('InvalidArgument', `invalid size ${size}`)
    size = Math.ceil(size / 512) * 512
    return this.changing(name, async () => {
      const r = await this.readRecord(name)
      this.refusePrepared(name, 'grow the disk')
      if (size < r.size) throw new StorageError('InvalidArgument', `cannot shrink disk '${name}' from ${r.size} to ${size} bytes: only growing is supported`)
      if (this.handles.get(name)) {
        throw Object.assign(new StorageError('Busy', `cannot grow '${name}' while it is exported read-write: ${this.usersOf(name)} (disconnect them first)`), {
          details: { connections: this.openExportsOf(name), clients: this.clientsOf(name) },
        })
      }
      if (size > r.size) {
        await this.dropIdle(name)
        await growVmdk(this.layerPath(name, r.top), size)
        await this.writeRecord({ ...r, size })
      }
      return this.describeLocked(name)
    })
  }

  /** Deletes a disk: its folder is renamed into `.tandem/trash/` (gone in one step), then removed. */
  async deleteDisk(name: string): Promise<void> {
    await this.locked(name, async () => {
      await this.readRecord(name)
      this.refusePrepared(name, 'delete the disk')
      const clones = await this.clonesOf(name)
      if (clones.length > 0) throw Object.assign(new StorageError('Busy', `disk '${name}' is the base of linked clone(s) ${clones.map((c) => `'${c}'`).join(', ')}`), { details: { clones } })
      const open = this.openExportsOf(name)
      if (Object.keys(open).length > 0) {
        throw Object.assign(new StorageError('Busy', `disk '${name}' is in use by ${this.usersOf(name)}`), { details: { connections: open, clients: this.clientsOf(name) } })
      }
      await this.dropIdle(name)
      const trash = await this.scratch(TRASH, name)
      try {
        await rename(this.diskDir(name), trash)
      } catch (e) {
        throw fromSystemError(e, this.diskDir(name), 'Could not delete')
      }
      this.tidy.delete(name)
      await this.syncDir()
      await rm(trash, { recursive: true, force: true }).catch(() => undefined) // else at the next start
    })
  }

  /**
   * Notes a client of export `exportName` under `label` (what a refusal names: `nbd ADDR:PORT`,
   * `iscsi INITIATOR`) until the returned function is called.
   */
  noteClient(exportName: string, label: string): () => void {
    const key = Symbol(label)
    let m = this.clients.get(exportName)
    if (!m) this.clients.set(exportName, (m = new Map()))
    m.set(key, label)
    return () => {
      m.delete(key)
      if (m.size === 0 && this.clients.get(exportName) === m) this.clients.delete(exportName)
    }
  }

  /** Who has the disk's exports open, in words: `2 client(s) of 'd' (nbd 127.0.0.1:40312, …), 1 client(s) of 'd@s1'`. */
  private usersOf(disk: string): string {
    return Object.entries(this.openExportsOf(disk))
      .map(([k, n]) => {
        const named = [...(this.clients.get(k)?.values() ?? [])]
        return `${n} client(s) of '${k}'${named.length ? ` (${named.join(', ')})` : ''}`
      })
      .join(', ')
  }

  /** The disk's exports' clients as the protocols named them, per export (those with a name). */
  private clientsOf(disk: string): Record<string, string[]> {
    const out: Record<string, string[]> = {}
    for (const [k, m] of this.clients) if (parseExportName(k).disk === disk && m.size > 0) out[k] = [...m.values()]
    return out
  }

  /** One snapshot of a disk as the REST API shows it. */
  async describeSnapshot(disk: string, snapshot: string): Promise<SnapshotView> {
    validName('snapshot', snapshot)
    return this.locked(disk, async () => snapshotViewOf(await this.readRecord(disk), snapshot))
  }

  private openExportsOf(disk: string): Record<string, number> {
    const out: Record<string, number> = {}
    for (const [k, h] of this.handles) if (h.refs > 0 && parseExportName(k).disk === disk) out[k] = h.refs
    return out
  }

  /** Closes idle handles of a disk (before its files change). */
  private async dropIdle(disk: string): Promise<void> {
    for (const k of [...this.idle.keys()]) {
      if (parseExportName(k).disk !== disk) continue
      const h = this.idle.get(k)
      this.idle.delete(k)
      await h?.dev.close().catch(() => undefined)
    }
  }

  async describe(name: string): Promise<DiskInfo> {
    return this.locked(name, () => this.describeLocked(name))
  }

  private async describeLocked(name: string): Promise<DiskInfo> {
    const r = await this.readRecord(name)
    const dir = this.diskDir(name)
    let actual = 0
    for (const f of await readdir(dir)) {
      if (f.endsWith('.vmdk')) actual += (await stat(join(dir, f))).blocks * 512
    }
    let writers = 0
    for (const [k, h] of this.handles) if (h.refs > 0 && k === name) writers += h.refs
    return {
      name,
      base: r.base ?? null,
      size: r.size,
      actualSize: actual,
      createdAt: r.createdAt,
      chain: chainOf(r),
      current: r.current,
      snapshots: snapshotViews(r),
      openExports: this.openExportsOf(name),
      prepared: this.prepared.get(name)?.name ?? null,
      writers,
      access: { initiators: [...r.access.initiators], chap: r.access.chap !== undefined },
    }
  }

  /** Access list for the iSCSI target (LUN masking) — stored here, enforced by the target. */
  async setAccess(name: string, access: AccessRecord): Promise<void> {
    await this.changing(name, async () => {
      const r = await this.readRecord(name)
      r.access = access
      await this.writeRecord(r)
    })
  }

  private layerPath(disk: string, layer: string): string {
    return join(this.diskDir(disk), layer)
  }

  /**
   * Creates the delta `layer` on `parentLayer`, whose CID is `cid` (read from the parent layer
   * alone when not given: nothing below it matters).
   */
  private async newDelta(r: DiskRecord, layer: string, parentLayer: string, cid?: number): Promise<void> {
    cid ??= await this.cidOfLayer(r.name, parentLayer)
    await createVmdk(this.layerPath(r.name, layer), { size: r.size, parent: { path: this.layerPath(r.name, parentLayer), cid }, exclusive: true })
  }

  /** A closed layer's CID, read from it alone. */
  private async cidOfLayer(disk: string, layer: string): Promise<number> {
    const p = await VmdkImage.open(this.layerPath(disk, layer), { readOnly: true })
    try {
      return p.cid
    } finally {
      await p.close()
    }
  }

  /**
   * Runs `fn` with the disk's read-write export (open, or idle and kept for the next client), if
   * any. An idle one is taken out of the idle cache meanwhile, so that no eviction closes it while
   * its chain changes.
   */
  private async withLive<T>(disk: string, fn: (live: LiveDisk | undefined) => Promise<T>): Promise<T> {
    const open = this.handles.get(disk)
    if (open) return fn(open.live)
    const idle = this.idle.peek(disk)
    if (idle) this.idle.delete(disk) // 'delete' disposal: kept open
    try {
      return await fn(idle?.live)
    } finally {
      if (idle) this.idle.set(disk, idle)
    }
  }

  /**
   * Runs `fn` with the disk's live export (if open) paused and its chain closed; afterwards,
   * whether `fn` succeeded or not, the export reopens at the top the record names, so its
   * clients carry on (a failed `fn` leaves the record's chain valid).
   */
  private withTopClosed(disk: string, fn: () => Promise<DiskRecord>): Promise<DiskRecord> {
    return this.withLive(disk, (live) => this.swapTop(disk, live, fn))
  }

  private async swapTop(disk: string, live: LiveDisk | undefined, fn: () => Promise<DiskRecord>): Promise<DiskRecord> {
    if (!live) {
      await this.dropIdle(disk)
      return fn()
    }
    await live.pause()
    try {
      await live.current.flush()
    } catch (e) {
      live.resume() // nothing closed: the clients carry on with the same chain
      throw e
    }
    let r: DiskRecord | undefined
    let failure: unknown
    try {
      await live.current.close() // closes its files even when it fails
      r = await fn()
    } catch (e) {
      failure = e
    }
    let next: BlockDevice | undefined
    try {
      next = await openVmdk(this.layerPath(disk, (r ?? (await this.readRecord(disk))).top))
    } catch (e) {
      failure ??= e
    }
    live.resume(next)
    if (failure !== undefined) throw failure
    return r!
  }

  async createSnapshot(disk: string, snapshot: string, o: { description?: string } = {}): Promise<SnapshotRecord> {
    validName('snapshot', snapshot)
    const description = validDescription(o.description)
    return this.changing(disk, async () => {
      const plan = planCreate(await this.readRecord(disk), snapshot, new Date().toISOString(), description)
      this.refusePrepared(disk, 'create a snapshot')
      await this.withLive(disk, async (live) => {
        const top = live?.current
        if (live && top instanceof VmdkImage && !top.readOnly) return this.stackDelta(disk, live, top, plan.record)
        await this.newDelta(plan.record, plan.top, plan.made.layer)
        await this.writeRecord(plan.record)
      })
      return plan.made
    })
  }

  /**
   * Snapshot create with the disk's export open on chain `top`. Before the pause, while clients
   * write on: the top's CID is pinned, the new delta is made on it and opened (its parent is the
   * open top; pinning made the CID durable: VmdkImage.touch, and the delta keeps the CID it was
   * made with, which createVmdk synced) and `record`, naming the delta as the top, is written. The record is the commit point: a
   * stop before it leaves a delta no record names (repairDisk removes it); after it, the delta is
   * empty, so the disk reads the old top's content, and the snapshot is that content at the
   * stop. The pause only drains the export and swaps in the delta; the old top is then frozen
   * without a sync (read-only, a reader's image locks, uncleanShutdown still set): the writes it
   * holds that no flush covered become durable at the next flush through the delta
   * (chain/read-through.ts) or at close, as they would have without the snapshot. A create does
   * not write them out itself: that sync, tens of ms with a writer's data behind it, stalled the
   * writer (issue #14). Nothing reopens.
   */
  private async stackDelta(disk: string, live: LiveDisk, top: VmdkImage, record: DiskRecord): Promise<void> {
    const path = this.layerPath(disk, record.top)
    let delta: VmdkImage | undefined
    try {
      const cid = await top.pinCid()
      await createVmdk(path, { size: record.size, parent: { path: top.path, cid }, exclusive: true })
      delta = await VmdkImage.open(path)
      delta.keepCid()
      await this.writeRecord(record)
    } catch (e) {
      const named = await this.readRecord(disk).then((r) => r.top === record.top, () => false)
      if (!named) {
        await delta?.close().catch(() => undefined)
        await unlink(path).catch(() => undefined)
        throw e
      }
      // the record was replaced before the failure (a folder sync): the delta is the disk now
      delta ??= await VmdkImage.open(path)
    }
    linkParent(delta, top)
    await live.pause()
    live.resume(delta)
    await top.freeze({ sync: false })
  }

  /** Busy while a snapshot of `disk` is prepared: the tree changes only once it is committed or deleted. */
  private refusePrepared(disk: string, what: string): void {
    const p = this.prepared.get(disk)
    if (p) throw new StorageError('Busy', `cannot ${what}: snapshot '${p.name}' of '${disk}' is prepared (commit or delete it first)`)
  }

  /**
   * The slow half of a snapshot create, done while clients write on: the new delta is made on
   * the top and opened, and the top's CID pinned and synced (when the export is open: a live top
   * keeps that CID while it stays open). Nothing changes for clients until commitSnapshot; the
   * snapshot exists only then. One at a time per disk; other tree changes are refused (Busy)
   * meanwhile. Held in memory only: after a restart the delta is a layer no record names, which
   * opening the datastore removes (the prepare is one step of a client's stun, and that client
   * lost its server; a kept delta would also name a CID the reopened top changes on its first
   * write).
   */
  async prepareSnapshot(disk: string, snapshot: string, o: { description?: string } = {}): Promise<PreparedView> {
    validName('snapshot', snapshot)
    const description = validDescription(o.description)
    return this.changing(disk, async () => {
      const r = await this.readRecord(disk)
      if (this.prepared.get(disk)?.name === snapshot) throw new StorageError('Exists', `disk '${disk}' already has a prepared snapshot '${snapshot}'`)
      const plan = planCreate(r, snapshot, new Date().toISOString(), description)
      this.refusePrepared(disk, 'prepare another snapshot')
      const path = this.layerPath(disk, plan.top)
      let delta: VmdkImage | undefined
      try {
        await this.withLive(disk, async (live) => {
          const top = live?.current
          const cid = top instanceof VmdkImage && !top.readOnly ? await top.pinCid() : undefined
          await this.newDelta(plan.record, plan.top, plan.made.layer, cid)
          delta = await VmdkImage.open(path)
          delta.keepCid()
        })
      } catch (e) {
        await delta?.close().catch(() => undefined)
        await unlink(path).catch(() => undefined)
        throw e
      }
      const p: Prepared = { name: snapshot, createdAt: plan.made.createdAt, description, layer: plan.top, delta: delta! }
      await this.stage(p, plan.record).catch(() => undefined) // else written at the commit
      this.prepared.set(disk, p)
      return { name: snapshot, parent: plan.made.parent, createdAt: plan.made.createdAt, description, state: 'prepared' }
    })
  }

  /** The prepared snapshot `snapshot` of `disk`: NotFound, or Conflict-like Busy for a committed one. */
  private preparedOf(r: DiskRecord, snapshot: string): Prepared {
    const p = this.prepared.get(r.name)
    if (p?.name === snapshot) return p
    if (findSnapshot(r, snapshot)) throw new StorageError('Busy', `snapshot '${snapshot}' of '${r.name}' is not a prepared one (it was committed)`)
    throw new StorageError('NotFound', `disk '${r.name}' has no prepared snapshot '${snapshot}'`)
  }

  /**
   * Makes a prepared snapshot real. With the export open the switch is a pointer swap onto the
   * open delta (in-flight requests drained first), and the record naming the delta is put in
   * place after it (the staged copy renamed): meanwhile reads go on and writes are held,
   * unacknowledged, so a kill before the rename loses nothing acknowledged (the old record names
   * the old top, which holds every acknowledged write); if the rename fails the export switches
   * back and the held writes go to the old top. After the rename writes go on and flushes (and
   * FUA writes) wait until the folder is synced: a power loss before then may lose the rename,
   * and with it only writes no flush covered. The answer comes once writes go on (the switch is
   * the stun of a VM checkpoint); the folder sync and the old top's freeze finish after it, and
   * the disk's next request under its lock (an export open, a describe, a change) waits for them. Without an open export only the
   * record is written. Either way the delta's parent CID is first made the top's own, should
   * the top have been reopened (and so re-touched) since the prepare: an empty delta may name
   * any CID of its parent.
   */
  async commitSnapshot(disk: string, snapshot: string): Promise<SnapshotRecord> {
    validName('snapshot', snapshot)
    return this.changing(disk, async () => {
      const r = await this.readRecord(disk)
      const p = this.preparedOf(r, snapshot)
      const plan = planCreate(r, snapshot, p.createdAt, p.description)
      if (plan.top !== p.layer) throw new StorageError('Corrupt', `disk '${disk}': the prepared delta '${p.layer}' is not the record's next layer '${plan.top}'`)
      await this.withLive(disk, async (live) => {
        const top = live?.current
        if (p.linked && p.linked !== top) {
          // a commit that failed linked the delta to a top closed since: it starts afresh
          await p.delta.close()
          p.delta = await VmdkImage.open(this.layerPath(disk, p.layer))
          p.linked = undefined
        }
        const { delta } = p
        if (live && top instanceof VmdkImage && !top.readOnly) {
          const cid = await top.pinCid()
          if (delta.parentCid !== cid) {
            await delta.writeDescriptor({ ...delta.descriptor, parentCid: cid })
            await Promise.all([delta.flush(), top.flush()])
          }
          if (!p.linked) linkParent(delta, top)
          p.linked = top
          await this.stage(p, plan.record) // again if the record changed since the prepare (its access list)
          await live.pause()
          live.holdWrites()
          live.resume(delta)
          let sync: () => Promise<void> = async () => undefined
          try {
            sync = await this.putRecord(p, plan.record)
          } catch (e) {
            if (!(await this.readRecord(disk).then((x) => x.top === plan.top, () => false))) {
              live.resume(top) // nothing was written to the delta: it read as the top
              live.releaseWrites()
              throw e
            }
            // the record was replaced before the failure: the delta is the disk now
          }
          live.releaseWrites({ flushes: 'held' })
          const settled: Promise<void> = (async () => {
            await sync().catch(() => undefined) // the rename is in place; only a power loss could undo it
            live.releaseWrites()
            await top.freeze({ sync: false }).catch(() => undefined) // else it stays writable, flushed through the delta
          })().finally(() => {
            if (this.settling.get(disk) === settled) this.settling.delete(disk)
          })
          this.settling.set(disk, settled)
          return
        }
        const cid = await this.cidOfLayer(disk, plan.made.layer)
        if (delta.parentCid !== cid) await delta.writeDescriptor({ ...delta.descriptor, parentCid: cid })
        await delta.close()
        try {
          await (await this.putRecord(p, plan.record))()
        } catch (e) {
          p.delta = await VmdkImage.open(this.layerPath(disk, p.layer)) // still prepared
          throw e
        }
      })
      this.prepared.delete(disk)
      return plan.made
    })
  }

  /** Writes `record` ahead for `p`'s commit, unless what is staged is that already. */
  private async stage(p: Prepared, record: DiskRecord): Promise<void> {
    const json = JSON.stringify(record)
    if (p.staged?.json === json) return
    await p.staged?.file.discard()
    p.staged = undefined
    p.staged = { file: await stageRecord(this.diskDir(record.name), record), json }
  }

  /**
   * Puts `record` in place: by renaming the staged copy if it is that record (then the returned
   * function makes the rename durable), else written now, durably.
   */
  private async putRecord(p: Prepared, record: DiskRecord): Promise<() => Promise<void>> {
    const staged = p.staged
    p.staged = undefined
    if (staged?.json === JSON.stringify(record)) {
      await staged.file.put()
      return () => staged.file.sync()
    }
    await staged?.file.discard()
    await this.writeRecord(record)
    return async () => undefined
  }

  /** Aborts a prepared snapshot: its delta is closed and removed. */
  private async abortPrepared(disk: string): Promise<void> {
    const p = this.prepared.get(disk)!
    this.prepared.delete(disk)
    await p.staged?.file.discard()
    await p.delta.close().catch(() => undefined)
    await unlink(this.layerPath(disk, p.layer)).catch(() => undefined)
  }

  /**
   * Reverts the disk to a snapshot. While clients have the disk's read-write export open the
   * revert is refused (Busy, `details.connections`: export name to client count) unless `force`:
   * the disk would change under a writer (with force their connections carry on, reading the
   * reverted content).
   */
  async revertSnapshot(disk: string, snapshot: string, o: { force?: boolean } = {}): Promise<void> {
    validName('snapshot', snapshot)
    await this.changing(disk, async () => {
      const plan = planRevert(await this.readRecord(disk), snapshot)
      this.refusePrepared(disk, 'revert')
      const writers = this.handles.get(disk)?.refs ?? 0
      if (writers > 0 && !o.force) {
        throw Object.assign(new StorageError('Busy', `cannot revert '${disk}' to '${snapshot}': ${this.usersOf(disk)} (force reverts under them)`), {
          details: { connections: this.openExportsOf(disk), clients: this.clientsOf(disk) },
        })
      }
      await this.withTopClosed(disk, async () => {
        await this.newDelta(plan.record, plan.top, plan.parentLayer)
        await this.writeRecord(plan.record)
        return plan.record
      })
      await unlink(this.layerPath(disk, plan.discard)).catch(() => undefined)
    })
  }

  async deleteSnapshot(disk: string, snapshot: string): Promise<void> {
    validName('snapshot', snapshot)
    await this.changing(disk, async () => {
      const r = await this.readRecord(disk)
      if (this.prepared.get(disk)?.name === snapshot) return this.abortPrepared(disk)
      const plan = planDelete(r, snapshot)
      this.refusePrepared(disk, 'delete a snapshot')
      const clones = await this.clonesOf(disk, snapshot)
      if (clones.length > 0) {
        throw Object.assign(new StorageError('Busy', `cannot delete snapshot '${snapshot}' of '${disk}': it is the base of linked clone(s) ${clones.map((c) => `'${c}'`).join(', ')}`), { details: { clones } })
      }
      const snapExports = Object.entries(this.openExportsOf(disk)).filter(([k]) => k.includes('@'))
      if (snapExports.length > 0) {
        throw new StorageError('Busy', `cannot delete snapshot '${snapshot}': snapshot exports of '${disk}' are open (${snapExports.map(([k]) => k).join(', ')})`)
      }
      await this.dropIdle(disk)
      await this.withTopClosed(disk, async () => {
        // Each rebase keeps its layer's content and CID, so stopped after any step every chain
        // still opens with its content; the record names the result only once all are done
        // (repairDisk makes a record follow children rebased before a stop).
        for (const child of plan.children) {
          await rebase(this.layerPath(disk, child), plan.parentLayer === null ? null : this.layerPath(disk, plan.parentLayer))
        }
        await this.writeRecord(plan.record)
        await unlink(this.layerPath(disk, plan.layer)).catch(() => undefined)
        return plan.record
      })
    })
  }

  /**
   * Opens an export: `disk` read-write (the current state) or `disk@snapshot` read-only.
   * Handles are shared by every client of the same export (so flush and multi-conn are safe)
   * and kept open for a while after the last client leaves.
   */
  async openExport(exportName: string, o: { client?: string } = {}): Promise<ExportHandle> {
    const { disk, snapshot } = parseExportName(exportName)
    return this.locked(disk, async () => {
      const r = await this.readRecord(disk)
      let h = this.handles.get(exportName)
      if (!h) {
        h = this.idle.get(exportName)
        if (h) this.idle.delete(exportName)
      }
      if (!h) {
        if (snapshot === undefined) {
          const unlock = await this.onWritable?.(disk)
          const dev = await openVmdk(this.layerPath(disk, r.top)).catch(async (e) => {
            await unlock?.()
            throw e
          })
          const live = swappable(dev, { readOnly: false, onClose: unlock })
          h = { dev: checked(this.exportFilter ? this.exportFilter(disk, live) : live), refs: 0, live }
        } else {
          const s = findSnapshot(r, snapshot)
          if (!s) throw new StorageError('NotFound', `disk '${disk}' has no snapshot '${snapshot}'`)
          h = { dev: checked(await openVmdk(this.layerPath(disk, s.layer), { readOnly: true })), refs: 0 }
        }
      }
      this.handles.set(exportName, h)
      h.refs++
      const handle = h
      const unnote = o.client === undefined ? () => undefined : this.noteClient(exportName, o.client)
      let released = false
      return {
        name: exportName,
        device: handle.dev,
        readOnly: snapshot !== undefined,
        release: async () => {
          if (released) return
          released = true
          unnote()
          // a snapshot export wrote nothing: no flush (a sync of its layer, frozen unsynced while
          // the disk's export is open, would write out the disk's data and keep the export open
          // meanwhile: a delete right after the client's close found it in use)
          if (snapshot === undefined) await handle.dev.flush().catch(() => undefined)
          handle.refs--
          if (handle.refs === 0 && this.handles.get(exportName) === handle) {
            this.handles.delete(exportName)
            this.idle.set(exportName, handle)
          }
        },
      }
    })
  }

  /** Names of every export: each disk and each of its snapshots. */
  async exportNames(): Promise<string[]> {
    const out: string[] = []
    for (const d of await this.listDisks()) {
      out.push(d)
      try {
        for (const s of (await this.readRecord(d)).snapshots) out.push(`${d}@${s.name}`)
      } catch {
        /* a damaged record: the disk itself is still listed */
      }
    }
    return out
  }

  /** Flushes and closes every handle (shutdown): clears uncleanShutdown on every open layer. */
  async close(): Promise<void> {
    await Promise.all(this.settling.values())
    const all = [...this.handles.values(), ...this.idle.values()]
    this.handles.clear()
    this.idle.clear() // 'delete' disposal: closed below, once each
    const prepared = [...this.prepared.values()] // deltas left for the next open's repair
    this.prepared.clear()
    await Promise.all(prepared.map((p) => p.staged?.file.discard()))
    const deltas = prepared.map((p) => p.delta)
    await Promise.all([...all.map((h) => h.dev.close()), ...deltas.map((d) => d.close())].map((p) => p.catch(() => undefined)))
  }
}

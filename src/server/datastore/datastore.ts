import { mkdir, readdir, readFile, rm, stat, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { Mutex } from 'async-mutex'
import { LRUCache } from 'lru-cache'
import type { BlockDevice } from '../../disk-formats/block-device.js'
import { StorageError, fromSystemError } from '../../disk-formats/errors.js'
import { createVmdk, writeFileAtomic, type Subformat } from '../../disk-formats/vmdk/index.js'
import { openVmdk, rebase } from '../../disk-formats/chain/index.js'
import { LiveDisk } from './live-disk.js'
import { parseExportName, validName } from './names.js'

export interface SnapshotRecord {
  name: string
  /** the frozen layer holding this snapshot's content (with its parents) */
  layer: string
  /** the snapshot that was current when this one was taken; null for a first snapshot */
  parent: string | null
  createdAt: string
}

export interface AccessRecord {
  initiators: string[]
  chap?: { user: string; secret: string; mutualUser?: string; mutualSecret?: string }
}

/** disk.json: the snapshot tree of one disk (written atomically). */
export interface DiskRecord {
  version: 1
  name: string
  size: number
  createdAt: string
  /** the writable top layer: the disk's current state */
  top: string
  /** the snapshot the current state descends from (vSphere's "you are here") */
  current: string | null
  nextLayer: number
  snapshots: SnapshotRecord[]
  access: AccessRecord
}

export interface DiskInfo {
  name: string
  size: number
  actualSize: number
  createdAt: string
  chain: string[]
  current: string | null
  snapshots: (Omit<SnapshotRecord, 'layer'> & { isCurrent: boolean })[]
  openExports: Record<string, number>
  writers: number
  access: { initiators: string[]; chap: boolean }
}

interface Handle {
  dev: BlockDevice
  refs: number
  live?: LiveDisk
}

const RECORD = 'disk.json'
/** Idle exports kept open for the next client (an open VMDK costs a few file opens and reads). */
const IDLE_HANDLES = 32

export interface ExportHandle {
  readonly name: string
  readonly device: BlockDevice
  readonly readOnly: boolean
  release(): Promise<void>
}

/**
 * A datastore: one folder, one sub-folder per disk holding its VMDK layers and disk.json.
 * Snapshots form a tree as in vSphere (DESIGN §4):
 * - create freezes the top layer as the snapshot and puts a new delta on it;
 * - revert discards the top and puts a new delta on the chosen snapshot's layer;
 * - delete rebases the snapshot layer's children onto its parent (content-preserving, so
 *   neither the disk nor any other snapshot changes) and removes the layer.
 * A client with the disk's read-write export open keeps its connection through all three: the
 * export is paused, re-pointed at the new top, and resumed (after a revert it reads the
 * reverted content). Deleting a snapshot while any snapshot export of that disk is open is
 * refused (Busy).
 */
export class Datastore {
  private readonly locks = new Map<string, Mutex>()
  private readonly handles = new Map<string, Handle>()
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

  private constructor(readonly dir: string) {}

  static async open(dir: string): Promise<Datastore> {
    try {
      await mkdir(join(dir, '.tandem'), { recursive: true })
    } catch (e) {
      throw fromSystemError(e, dir, 'Could not create the datastore')
    }
    return new Datastore(dir)
  }

  private lock(disk: string): Mutex {
    let m = this.locks.get(disk)
    if (!m) this.locks.set(disk, (m = new Mutex()))
    return m
  }

  private diskDir(name: string): string {
    return join(this.dir, validName('disk', name))
  }

  async readRecord(name: string): Promise<DiskRecord> {
    const file = join(this.diskDir(name), RECORD)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new StorageError('NotFound', `no disk named '${name}'`)
      throw fromSystemError(e, file, 'Could not read')
    }
    try {
      const r = JSON.parse(text) as DiskRecord
      if (r.version !== 1 || r.name !== name || typeof r.top !== 'string') throw new Error('unexpected content')
      return r
    } catch (e) {
      throw new StorageError('Corrupt', `'${file}': invalid disk record: ${(e as Error).message}`, file)
    }
  }

  private async writeRecord(r: DiskRecord): Promise<void> {
    await writeFileAtomic(join(this.diskDir(r.name), RECORD), JSON.stringify(r, null, 2) + '\n')
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

  async createDisk(name: string, size: number, opts: { subformat?: Subformat } = {}): Promise<DiskRecord> {
    validName('disk', name)
    if (!Number.isSafeInteger(size) || size <= 0) throw new StorageError('InvalidArgument', `invalid size ${size}`)
    size = Math.ceil(size / 512) * 512
    return this.lock(name).runExclusive(async () => {
      const dir = this.diskDir(name)
      try {
        await mkdir(dir)
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new StorageError('Exists', `a disk named '${name}' already exists`)
        throw fromSystemError(e, dir, 'Could not create')
      }
      try {
        const top = 'l-0000.vmdk'
        await createVmdk(join(dir, top), { size, subformat: opts.subformat ?? 'monolithicSparse', exclusive: true })
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
        }
        await this.writeRecord(r)
        return r
      } catch (e) {
        await rm(dir, { recursive: true, force: true })
        throw e
      }
    })
  }

  async deleteDisk(name: string): Promise<void> {
    await this.lock(name).runExclusive(async () => {
      await this.readRecord(name)
      const open = this.openExportsOf(name)
      if (Object.keys(open).length > 0) {
        throw new StorageError('Busy', `disk '${name}' is in use by ${Object.entries(open).map(([k, n]) => `${n} client(s) of '${k}'`).join(', ')}`)
      }
      await this.dropIdle(name)
      await rm(this.diskDir(name), { recursive: true, force: true })
    })
    this.locks.delete(name)
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
    const r = await this.readRecord(name)
    const dir = this.diskDir(name)
    let actual = 0
    for (const f of await readdir(dir)) {
      if (f.endsWith('.vmdk')) actual += (await stat(join(dir, f))).blocks * 512
    }
    // The current chain: top, then each parent layer (from the snapshot tree).
    const chain = [r.top]
    for (let s = r.current; s !== null; ) {
      const snap = r.snapshots.find((x) => x.name === s)
      if (!snap) break
      chain.push(snap.layer)
      s = snap.parent
    }
    let writers = 0
    for (const [k, h] of this.handles) if (h.refs > 0 && k === name) writers += h.refs
    return {
      name,
      size: r.size,
      actualSize: actual,
      createdAt: r.createdAt,
      chain,
      current: r.current,
      snapshots: r.snapshots.map(({ name: n, parent, createdAt }) => ({ name: n, parent, createdAt, isCurrent: n === r.current })),
      openExports: this.openExportsOf(name),
      writers,
      access: { initiators: [...r.access.initiators], chap: r.access.chap !== undefined },
    }
  }

  /** Access list for the iSCSI target (LUN masking) — stored here, enforced by the target. */
  async setAccess(name: string, access: AccessRecord): Promise<void> {
    await this.lock(name).runExclusive(async () => {
      const r = await this.readRecord(name)
      r.access = access
      await this.writeRecord(r)
    })
  }

  private layerPath(disk: string, layer: string): string {
    return join(this.diskDir(disk), layer)
  }

  private newLayerName(r: DiskRecord): string {
    return `l-${String(r.nextLayer++).padStart(4, '0')}.vmdk`
  }

  /** Creates a delta on `parentLayer` and returns its name. */
  private async newDelta(r: DiskRecord, parentLayer: string): Promise<string> {
    const name = this.newLayerName(r)
    const parentPath = this.layerPath(r.name, parentLayer)
    const p = await openVmdk(parentPath, { readOnly: true })
    const cid = p.cid
    await p.close()
    await createVmdk(this.layerPath(r.name, name), { size: r.size, parent: { path: parentPath, cid }, exclusive: true })
    return name
  }

  /**
   * Runs `fn` with the disk's live export (if open) paused and its chain closed; afterwards
   * the export reopens at the record's (new) top.
   */
  private async withTopClosed(disk: string, fn: () => Promise<DiskRecord>): Promise<DiskRecord> {
    const live = this.handles.get(disk)?.live ?? this.idle.peek(disk)?.live
    if (!live) {
      await this.dropIdle(disk)
      return fn()
    }
    await live.pause()
    let reopened = false
    try {
      await live.current.flush()
      await live.current.close()
      const r = await fn().catch(async (e) => {
        // put the old top back so the client carries on
        const rec = await this.readRecord(disk)
        live.resume(await openVmdk(this.layerPath(disk, rec.top)))
        reopened = true
        throw e
      })
      live.resume(await openVmdk(this.layerPath(disk, r.top)))
      reopened = true
      return r
    } finally {
      if (!reopened) live.resume()
    }
  }

  async createSnapshot(disk: string, snapshot: string): Promise<SnapshotRecord> {
    validName('snapshot', snapshot)
    return this.lock(disk).runExclusive(async () => {
      const r0 = await this.readRecord(disk)
      if (r0.snapshots.some((s) => s.name === snapshot)) throw new StorageError('Exists', `disk '${disk}' already has a snapshot '${snapshot}'`)
      let made!: SnapshotRecord
      await this.withTopClosed(disk, async () => {
        const r = await this.readRecord(disk)
        made = { name: snapshot, layer: r.top, parent: r.current, createdAt: new Date().toISOString() }
        r.top = await this.newDelta(r, made.layer)
        r.snapshots.push(made)
        r.current = snapshot
        await this.writeRecord(r)
        return r
      })
      return made
    })
  }

  async revertSnapshot(disk: string, snapshot: string): Promise<void> {
    validName('snapshot', snapshot)
    await this.lock(disk).runExclusive(async () => {
      const r0 = await this.readRecord(disk)
      if (!r0.snapshots.some((s) => s.name === snapshot)) throw new StorageError('NotFound', `disk '${disk}' has no snapshot '${snapshot}'`)
      let old = ''
      await this.withTopClosed(disk, async () => {
        const r = await this.readRecord(disk)
        const snap = r.snapshots.find((s) => s.name === snapshot)!
        old = r.top
        r.top = await this.newDelta(r, snap.layer)
        r.current = snapshot
        await this.writeRecord(r)
        return r
      })
      // The discarded top is no snapshot's layer (a snapshot always freezes the then-top).
      await unlink(this.layerPath(disk, old)).catch(() => undefined)
    })
  }

  async deleteSnapshot(disk: string, snapshot: string): Promise<void> {
    validName('snapshot', snapshot)
    await this.lock(disk).runExclusive(async () => {
      const r0 = await this.readRecord(disk)
      const snap = r0.snapshots.find((s) => s.name === snapshot)
      if (!snap) throw new StorageError('NotFound', `disk '${disk}' has no snapshot '${snapshot}'`)
      const snapExports = Object.entries(this.openExportsOf(disk)).filter(([k]) => k.includes('@'))
      if (snapExports.length > 0) {
        throw new StorageError('Busy', `cannot delete snapshot '${snapshot}': snapshot exports of '${disk}' are open (${snapExports.map(([k]) => k).join(', ')})`)
      }
      await this.dropIdle(disk)
      await this.withTopClosed(disk, async () => {
        const r = await this.readRecord(disk)
        const s = r.snapshots.find((x) => x.name === snapshot)!
        const parentLayer = s.parent === null ? null : r.snapshots.find((x) => x.name === s.parent)!.layer
        // Layers whose parent is this snapshot's layer: child snapshots' layers, and the top if current.
        const children = r.snapshots.filter((x) => x.parent === snapshot).map((x) => x.layer)
        if (r.current === snapshot) children.push(r.top)
        for (const child of children) {
          await rebase(this.layerPath(disk, child), parentLayer === null ? null : this.layerPath(disk, parentLayer))
        }
        for (const x of r.snapshots) if (x.parent === snapshot) x.parent = s.parent
        if (r.current === snapshot) r.current = s.parent
        r.snapshots = r.snapshots.filter((x) => x.name !== snapshot)
        await this.writeRecord(r)
        await unlink(this.layerPath(disk, s.layer)).catch(() => undefined)
        return r
      })
    })
  }

  /**
   * Opens an export: `disk` read-write (the current state) or `disk@snapshot` read-only.
   * Handles are shared by every client of the same export (so flush and multi-conn are safe)
   * and kept open for a while after the last client leaves.
   */
  async openExport(exportName: string): Promise<ExportHandle> {
    const { disk, snapshot } = parseExportName(exportName)
    return this.lock(disk).runExclusive(async () => {
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
          const live = new LiveDisk(dev, false, unlock)
          h = { dev: live, refs: 0, live }
        } else {
          const s = r.snapshots.find((x) => x.name === snapshot)
          if (!s) throw new StorageError('NotFound', `disk '${disk}' has no snapshot '${snapshot}'`)
          h = { dev: await openVmdk(this.layerPath(disk, s.layer), { readOnly: true }), refs: 0 }
        }
      }
      this.handles.set(exportName, h)
      h.refs++
      const handle = h
      let released = false
      return {
        name: exportName,
        device: handle.dev,
        readOnly: snapshot !== undefined,
        release: async () => {
          if (released) return
          released = true
          await handle.dev.flush().catch(() => undefined)
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
    const all = [...this.handles.values(), ...this.idle.values()]
    this.handles.clear()
    this.idle.clear() // 'delete' disposal: closed below, once each
    await Promise.all(all.map((h) => h.dev.close().catch(() => undefined)))
  }
}

import type { DiskInfo } from '../../server/datastore/index.js'
import { requestJson } from './http.js'

/**
 * Typed client of `tandem serve`'s REST API (the snapshot and disk routes). Each type below has a
 * key table (`…_KEYS`): tsc checks it names exactly the type's keys, and
 * test/server/http/openapi.test.ts checks it against the OpenAPI document's schema of the same name.
 */

export interface Snapshot {
  name: string
  parent: string | null
  createdAt: string
  description: string
  isCurrent: boolean
}
export const SNAPSHOT_KEYS: Record<keyof Snapshot, true> = { name: true, parent: true, createdAt: true, description: true, isCurrent: true }

/** The answer of create, prepare and commit: the snapshot and whether it is committed yet. */
export interface SnapshotMade extends Snapshot {
  state: 'prepared' | 'committed'
}
export const SNAPSHOT_MADE_KEYS: Record<keyof SnapshotMade, true> = { ...SNAPSHOT_KEYS, state: true }

export interface SnapshotTree {
  current: string | null
  snapshots: Snapshot[]
}
export const SNAPSHOT_TREE_KEYS: Record<keyof SnapshotTree, true> = { current: true, snapshots: true }

/** A disk as the REST API shows it: the datastore's description, and where it is exported. */
export interface Disk extends DiskInfo {
  nbd: string
  iscsi: { iqn: string; portal: string; lun: number }
}
export const DISK_KEYS: Record<keyof Disk, true> = {
  name: true,
  base: true,
  size: true,
  actualSize: true,
  createdAt: true,
  chain: true,
  current: true,
  snapshots: true,
  openExports: true,
  prepared: true,
  writers: true,
  access: true,
  nbd: true,
  iscsi: true,
}

/** The default server of the CLI's `--server`. */
export const DEFAULT_SERVER = 'http://127.0.0.1:8080'

const seg = encodeURIComponent

export class TandemApi {
  /** `token`: the bearer token; without it the client finds one after a 401 (api/http.ts). */
  constructor(
    readonly base: string,
    private readonly o: { token?: string; timeoutMs?: number } = {},
  ) {}

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return requestJson<T>(this.base, method, `/api/v1${path}`, body, this.o)
  }

  disks(): Promise<{ disks: Disk[] }> {
    return this.call('GET', '/disks')
  }
  disk(name: string): Promise<Disk> {
    return this.call('GET', `/disks/${seg(name)}`)
  }
  createDisk(name: string, size: number | string): Promise<Disk> {
    return this.call('POST', '/disks', { name, size })
  }
  /** A linked clone of `snapshot` (default), or a full copy with `linked: false`. */
  cloneDisk(source: string, name: string, o: { snapshot?: string; linked?: boolean } = {}): Promise<Disk> {
    return this.call('POST', `/disks/${seg(source)}/clones`, { name, ...o })
  }
  /** Grows the disk to `size` (bytes, or a string like "20G"). */
  growDisk(name: string, size: number | string): Promise<Disk> {
    return this.call('POST', `/disks/${seg(name)}/grow`, { size })
  }
  deleteDisk(name: string): Promise<null> {
    return this.call('DELETE', `/disks/${seg(name)}`)
  }
  snapshots(disk: string): Promise<SnapshotTree> {
    return this.call('GET', `/disks/${seg(disk)}/snapshots`)
  }
  snapshot(disk: string, snap: string): Promise<Snapshot> {
    return this.call('GET', `/disks/${seg(disk)}/snapshots/${seg(snap)}`)
  }
  createSnapshot(disk: string, name: string, o: { description?: string; prepare?: boolean } = {}): Promise<SnapshotMade> {
    return this.call('POST', `/disks/${seg(disk)}/snapshots`, { name, ...o })
  }
  commitSnapshot(disk: string, snap: string): Promise<SnapshotMade> {
    return this.call('POST', `/disks/${seg(disk)}/snapshots/${seg(snap)}/commit`)
  }
  revert(disk: string, snap: string, o: { force?: boolean } = {}): Promise<SnapshotTree> {
    return this.call('POST', `/disks/${seg(disk)}/snapshots/${seg(snap)}/revert`, o)
  }
  deleteSnapshot(disk: string, snap: string): Promise<null> {
    return this.call('DELETE', `/disks/${seg(disk)}/snapshots/${seg(snap)}`)
  }
}

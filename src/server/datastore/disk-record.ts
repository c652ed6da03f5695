import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { StorageError, fromSystemError } from '../../disk-formats/errors.js'
import { stageFile, writeFileAtomic, type StagedFile } from '../../disk-formats/vmdk/index.js'

export interface SnapshotRecord {
  name: string
  /** the frozen layer holding this snapshot's content (with its parents) */
  layer: string
  /** the snapshot that was current when this one was taken; null for a first snapshot */
  parent: string | null
  createdAt: string
  /** what the operator said it is (absent in records written before descriptions were kept) */
  description?: string
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
  /**
   * a linked clone's base: the source disk's snapshot whose layer the clone's first layer reads
   * through to (shared, read-only; the source refuses to delete it while the clone exists)
   */
  base?: { disk: string; snapshot: string }
}

export const RECORD = 'disk.json'

/** A layer file the datastore names (`l-0000.vmdk`); extent files of split layers do not match. */
export const LAYER_FILE = /^l-\d{4,}\.vmdk$/
/**
 * writeFileAtomic's temporary copy of disk.json, or stageRecord's, left behind by a process
 * killed while writing it (or with a snapshot prepared).
 */
export const RECORD_TMP = /^\.disk\.json\.tmp-\d+(-prepared)?$/

/** Reads `<diskDir>/disk.json`: NotFound when there is none, Corrupt when it is not a record of `name`. */
export async function readRecord(diskDir: string, name: string): Promise<DiskRecord> {
  const file = join(diskDir, RECORD)
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

/** Replaces `<diskDir>/disk.json` atomically (temp + fsync + rename + fsync of the folder). */
export async function writeRecord(diskDir: string, r: DiskRecord): Promise<void> {
  await writeFileAtomic(join(diskDir, RECORD), JSON.stringify(r, null, 2) + '\n')
}

/** `r` written and synced beside `<diskDir>/disk.json`; its commit puts it in place (rename + folder sync). */
export async function stageRecord(diskDir: string, r: DiskRecord): Promise<StagedFile> {
  return stageFile(join(diskDir, RECORD), JSON.stringify(r, null, 2) + '\n', { suffix: 'prepared' })
}

/** Every layer the record names: the top and each snapshot's layer. */
export function layersOf(r: DiskRecord): Set<string> {
  return new Set([r.top, ...r.snapshots.map((s) => s.layer)])
}

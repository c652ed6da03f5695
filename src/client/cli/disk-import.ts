import { open } from 'node:fs/promises'
import type { BlockDevice } from '../../disk-formats/block-device.js'
import { convert, type ImageFormat } from '../../disk-formats/chain/index.js'
import { isStorageError, StorageError } from '../../disk-formats/errors.js'
import { abortable, isCancelled } from '../../disk-formats/filters/index.js'
import { isApiError } from '../api/http.js'
import type { Disk, TandemApi } from '../api/tandem.js'
import { isNetworkDisk, openDisk } from '../transport/open-disk.js'

export interface ImportOptions {
  /** the new disk's size (default: the source's); at least the source's */
  size?: number
  /** the source file's format (default: probe); nbd:// and iscsi:// sources are raw bytes */
  format?: ImageFormat
  /** aborting stops the copy at its next request; the partial disk is then deleted */
  signal: AbortSignal
  /** the disk was created and the copy begins (`total`: the source's bytes) */
  onStart?(disk: Disk, total: number): void
  onProgress?(done: number, total: number): void
}

/** qcow2's magic, "QFI\xfb": a format Tandem does not read (raw would copy its metadata as data). */
const QCOW2_MAGIC = 0x514649fb

/** Opens an import's source read-only: a raw or VMDK file (qcow2 refused, naming the way round), an nbd:// or iscsi:// URI. */
async function openSource(source: string, format?: ImageFormat): Promise<BlockDevice> {
  if (!isNetworkDisk(source) && /^([a-z][a-z0-9+.-]*:\/\/|(nbd|iscsi)[a-z+]*:)/i.test(source)) {
    throw new StorageError('InvalidArgument', `'${source}': not a source Tandem reads (a file path, nbd://host[:port]/export or iscsi://host[:port]/iqn/lun)`)
  }
  if (!isNetworkDisk(source) && format === undefined) {
    const head = Buffer.alloc(4)
    const fh = await open(source, 'r').catch((e: NodeJS.ErrnoException) => {
      throw new StorageError(e.code === 'ENOENT' ? 'NotFound' : 'IoError', `cannot open '${source}': ${e.code ?? e.message}`)
    })
    try {
      await fh.read(head, 0, 4, 0)
    } finally {
      await fh.close()
    }
    if (head.readUInt32BE(0) === QCOW2_MAGIC) {
      throw new StorageError('Unsupported', `'${source}' is qcow2, which Tandem does not read: export it with \`qemu-nbd -r -f qcow2 -b 127.0.0.1 -p PORT ${source}\` and import nbd://127.0.0.1:PORT`)
    }
  }
  return openDisk(source, { readOnly: true, format })
}

/** Deletes a disk an import made; the server frees its export once it has seen the copy's connection close, so Busy is tried again for a while. */
async function removeDisk(api: TandemApi, name: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await api.deleteDisk(name)
      return
    } catch (e) {
      if (isApiError(e) && e.status === 404) return
      if (!(isApiError(e) && e.code === 'Busy') || i >= 50) throw e
      await new Promise((r) => setTimeout(r, 100))
    }
  }
}

/**
 * Imports `source` as a new disk `name` on a tandem serve (`api`), on this side of the network:
 * the source is opened here (nbd:// and iscsi:// through src/client/transport), the disk is
 * created over REST and written through its NBD export with convert (ranges the source reports
 * zero or unallocated are not read, all-zero blocks not written). The source is opened before the
 * disk is made, so a bad source creates nothing. If the copy fails or `signal` aborts, the partial
 * disk is deleted and the failure is thrown (a failed deletion is named in its message).
 */
export async function importDisk(api: TandemApi, name: string, source: string, o: ImportOptions): Promise<Disk> {
  const src = await openSource(source, o.format)
  let created = false
  let dst: BlockDevice | undefined
  try {
    const size = o.size ?? src.size
    if (size < src.size) throw new StorageError('InvalidArgument', `--size ${size} is smaller than the source (${src.size} bytes)`)
    o.signal.throwIfAborted()
    const disk = await api.createDisk(name, size)
    created = true
    dst = await openDisk(disk.nbd, { readOnly: false })
    o.onStart?.(disk, src.size)
    await convert(abortable(src, o.signal), dst, { to: 'raw', onProgress: o.onProgress }).catch((e: unknown) => {
      if (!isStorageError(e) || isCancelled(e)) throw e
      throw new StorageError(e.code, `import of '${name}' from ${source} stopped: ${e.message}; the partial disk is deleted`)
    })
    const d = dst
    dst = undefined
    await d.close()
    return await api.disk(name)
  } catch (e) {
    await dst?.close().catch(() => undefined)
    if (created) {
      await removeDisk(api, name).catch((r: unknown) => {
        const why = `${(e as Error).message} (and the partial disk '${name}' could not be deleted: ${(r as Error).message})`
        throw isStorageError(e) ? new StorageError(e.code, why) : new Error(why)
      })
    }
    throw e
  } finally {
    await src.close().catch(() => undefined)
  }
}

import { basename, dirname, relative } from 'node:path'
import type { BlockDevice } from '../block-device.js'
import { StorageError } from '../errors.js'
import { CID_NOPARENT } from '../vmdk/descriptor.js'
import { VmdkImage } from '../vmdk/vmdk-image.js'
import { openVmdk } from './open-chain.js'

export interface RebaseOptions {
  /** only rewrite the parent link, copying nothing (qemu-img rebase -u) */
  unsafe?: boolean
  onProgress?: (done: number, total: number) => void
  chunk?: number
}

/**
 * Puts `topPath` on a new parent (or none) without changing what it reads: wherever the top
 * does not allocate and the old and new backing content differ, the old content is copied
 * into the top first. The top keeps its CID throughout (its content never changes, so its own
 * children stay valid even if the process dies while copying); its parentCID and
 * parentFileNameHint name the new parent once every copied byte is flushed. A rebase stopped
 * at any point leaves a chain that reads the same bytes: the old link, or the new one.
 */
export async function rebase(topPath: string, newParentPath: string | null, opts: RebaseOptions = {}): Promise<{ copied: number }> {
  const top = opts.unsafe ? await VmdkImage.open(topPath) : await openVmdk(topPath)
  let next: BlockDevice | null = null
  let copied = 0
  try {
    if (top.readOnly) throw new StorageError('ReadOnly', `'${topPath}' cannot be written`, topPath)
    const keepCid = top.cid
    top.keepCid()
    let parentCid = CID_NOPARENT
    if (newParentPath !== null) {
      const np = await openVmdk(newParentPath, { readOnly: true })
      next = np
      parentCid = np.cid
    }
    if (!opts.unsafe) {
      const chunk = opts.chunk ?? 1 << 20
      const runs = (await top.layerStatus(0, top.size)).filter((r) => r.kind === 'unallocated')
      const total = runs.reduce((n, r) => n + r.length, 0)
      let done = 0
      const readOf = async (dev: BlockDevice | null, o: number, n: number) => {
        const buf = Buffer.alloc(n)
        const avail = dev ? Math.max(0, Math.min(n, dev.size - o)) : 0
        if (avail > 0) (await dev!.read(o, avail)).copy(buf)
        return buf
      }
      for (const r of runs) {
        for (let o = r.offset; o < r.offset + r.length; o += chunk) {
          const n = Math.min(chunk, r.offset + r.length - o)
          const [oldData, newData] = await Promise.all([readOf(top.backing, o, n), readOf(next, o, n)])
          if (!oldData.equals(newData)) {
            await top.write(o, oldData)
            copied += n
          }
          done += n
          opts.onProgress?.(done, total)
        }
      }
      await top.flush()
    }
    const d = { ...top.descriptor, cid: keepCid, parentCid }
    if (newParentPath === null) delete d.parentFileNameHint
    else d.parentFileNameHint = relative(dirname(topPath), newParentPath) || basename(newParentPath)
    await top.writeDescriptor(d)
    await top.flush()
  } finally {
    await next?.close().catch(() => undefined)
    await top.close()
  }
  return { copied }
}

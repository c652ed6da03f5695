import { readdir, realpath } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { StorageError } from '../errors.js'
import { VmdkImage } from '../vmdk/vmdk-image.js'
import { openVmdk } from './open-chain.js'

export interface CommitOptions {
  /** commit even though other children of the parent exist (they will then refuse to open) */
  force?: boolean
  /** keep the committed data in the top layer too (qemu-img commit -d) */
  keepTop?: boolean
  onProgress?: (done: number, total: number) => void
  chunk?: number
}

export interface CommitResult {
  parent: string
  bytes: number
  /** other children of the parent, now stale (only with force) */
  siblings: string[]
}

/** Other VMDK files in the parent's folder whose parent is `parentPath` (besides `except`). */
export async function findChildren(parentPath: string, except: string[] = []): Promise<string[]> {
  const dir = dirname(parentPath)
  const target = await realpath(parentPath)
  const skip = new Set(await Promise.all(except.map((p) => realpath(p).catch(() => p))))
  const out: string[] = []
  for (const name of (await readdir(dir)).sort()) {
    if (!name.toLowerCase().endsWith('.vmdk')) continue
    const p = join(dir, name)
    const real = await realpath(p).catch(() => p)
    if (real === target || skip.has(real)) continue
    try {
      const img = await VmdkImage.open(p, { readOnly: true })
      const pp = img.parentPath
      await img.close()
      if (pp !== undefined && (await realpath(pp).catch(() => pp)) === target) out.push(p)
    } catch {
      /* not a VMDK layer (an extent file, or another file): not a child */
    }
  }
  return out
}

/**
 * Merges the top layer of a chain into its parent (DESIGN §3). The disk's content does not
 * change; the parent gets a new CID, and the top's parentCID is updated to it, so the chain
 * stays valid (qemu-img leaves it stale). Then the top is emptied unless keepTop.
 *
 * Order for crash safety: parent data, parent flush; then the top's parentCID; then the top is
 * emptied. A crash in between leaves either a top whose data duplicates the parent's (valid)
 * or a top that refuses to open with a CID mismatch (safe, never wrong content).
 */
export async function commit(topPath: string, opts: CommitOptions = {}): Promise<CommitResult> {
  const chain = await openVmdk(topPath, { readOnly: true })
  const parentPath = chain.parentPath
  await chain.close()
  if (parentPath === undefined) {
    throw new StorageError('InvalidArgument', `'${topPath}' has no backing file to commit into`, topPath)
  }
  const siblings = await findChildren(parentPath, [topPath])
  if (siblings.length > 0 && !opts.force) {
    throw new StorageError(
      'Busy',
      `'${parentPath}' has other children (${siblings.join(', ')}); committing would change what they read. Use --force to commit anyway (they will then refuse to open)`,
      parentPath,
    )
  }
  const parent = await openVmdk(parentPath)
  let top: VmdkImage | null = null
  let bytes = 0
  try {
    top = await VmdkImage.open(topPath, { readOnly: true })
    const runs = await top.layerStatus(0, top.size)
    const total = runs.filter((r) => r.kind !== 'unallocated').reduce((n, r) => n + r.length, 0)
    const beyond = runs.find((r) => r.kind !== 'unallocated' && r.offset + r.length > parent.size)
    if (beyond) {
      throw new StorageError('NoSpace', `'${topPath}' holds data at ${beyond.offset} beyond the end of its parent (${parent.size} bytes); a VMDK cannot grow`, topPath)
    }
    const chunk = opts.chunk ?? 4 << 20
    for (const r of runs) {
      for (let o = r.offset; o < r.offset + r.length; o += chunk) {
        const n = Math.min(chunk, r.offset + r.length - o)
        if (r.kind === 'data') await parent.write(o, await top.read(o, n))
        else if (r.kind === 'zero') await parent.writeZeroes(o, n)
        else continue
        bytes += n
        opts.onProgress?.(bytes, total)
      }
    }
    await parent.flush()
  } finally {
    await top?.close().catch(() => undefined)
    await parent.close()
  }
  if (bytes === 0) return { parent: parentPath, bytes, siblings }
  const newCid = (await VmdkImage.open(parentPath, { readOnly: true }).then(async (p) => {
    const c = p.cid
    await p.close()
    return c
  })) as number
  const rw = await VmdkImage.open(topPath)
  try {
    await rw.writeDescriptor({ ...rw.descriptor, parentCid: newCid })
    await rw.flush()
    if (!opts.keepTop) for (const { extent } of rw.sparseExtents()) await extent.makeEmpty()
  } finally {
    await rw.close()
  }
  return { parent: parentPath, bytes, siblings }
}

import { readdir, realpath } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { StorageError } from '../errors.js'
import { VmdkImage } from '../vmdk/vmdk-image.js'
import { checkParentLink, openVmdk } from './open-chain.js'
import { inLocalFile, SourceFiles } from './convert.js'

/** Copies in flight during commit. */
const COMMIT_PARALLEL = 8

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
  // The top is opened once, read-only; its link to the parent is checked before the parent
  // (with the rest of the chain below it) is opened for writing.
  const top = await VmdkImage.open(topPath, { readOnly: true })
  let parent: VmdkImage | null = null
  let bytes = 0
  let newCid = 0
  let parentPath: string | undefined
  let siblings: string[] = []
  try {
    if (top.parentPath === undefined) {
      throw new StorageError('InvalidArgument', `'${topPath}' has no backing file to commit into`, topPath)
    }
    parentPath = await checkParentLink(top)
    siblings = await findChildren(parentPath, [topPath])
    if (siblings.length > 0 && !opts.force) {
      throw new StorageError(
        'Busy',
        `'${parentPath}' has other children (${siblings.join(', ')}); committing would change what they read. Use --force to commit anyway (they will then refuse to open)`,
        parentPath,
      )
    }
    parent = await openVmdk(parentPath)
    const runs = await top.layerStatus(0, top.size)
    const total = runs.filter((r) => r.kind !== 'unallocated').reduce((n, r) => n + r.length, 0)
    const beyond = runs.find((r) => r.kind !== 'unallocated' && r.offset + r.length > parent!.size)
    if (beyond) {
      throw new StorageError('NoSpace', `'${topPath}' holds data at ${beyond.offset} beyond the end of its parent (${parent.size} bytes); a VMDK cannot grow`, topPath)
    }
    const chunk = opts.chunk ?? 4 << 20
    const work: { offset: number; length: number; zero: boolean }[] = []
    for (const r of runs) {
      if (r.kind === 'unallocated') continue
      for (let o = r.offset; o < r.offset + r.length; o += chunk) {
        work.push({ offset: o, length: Math.min(chunk, r.offset + r.length - o), zero: r.kind === 'zero' })
      }
    }
    // Distinct grains are independent: keep several copies in flight (allocation in the
    // parent is serialized inside the extent), each with its own buffer.
    const dst = parent
    let next = 0
    // The top's data is copied file to file by the kernel (copy_file_range) where the parent
    // takes it (whole grains); the rest is read and written.
    const files = new SourceFiles()
    const worker = async () => {
      let buf = Buffer.alloc(0)
      const copy = async (offset: number, length: number) => {
        if (buf.length < length) buf = Buffer.allocUnsafe(Math.min(chunk, Math.max(length, 1 << 20)))
        const data = buf.subarray(0, length)
        await top.readInto(offset, length, data, 0)
        await dst.write(offset, data)
      }
      while (next < work.length) {
        const w = work[next++]
        if (w.zero) await dst.writeZeroes(w.offset, w.length)
        else {
          for (const e of await top.blockStatus(w.offset, w.length)) {
            const inKernel = e.depth === 0 && e.data && inLocalFile(e) && (await dst.writeFromFile(e.offset, e.length, await files.fd(e.file!), e.hostOffset!))
            if (!inKernel) await copy(e.offset, e.length)
          }
        }
        bytes += w.length
        opts.onProgress?.(bytes, total)
      }
    }
    // every worker ends before the files close: a copy on the pool must not find its fd closed
    const ends = await Promise.allSettled(Array.from({ length: Math.min(COMMIT_PARALLEL, work.length) }, worker))
    await files.close()
    const bad = ends.find((r): r is PromiseRejectedResult => r.status === 'rejected')
    if (bad) throw bad.reason
    await parent.flush()
    newCid = parent.cid
  } finally {
    await top.close().catch(() => undefined)
    await parent?.close()
  }
  if (bytes === 0) return { parent: parentPath, bytes, siblings }
  const rw = await VmdkImage.open(topPath)
  try {
    // No flush between the two: whichever reaches the disk first, a crash leaves a valid chain
    // (new parentCID: emptied grains read the same bytes from the parent) or a top that refuses
    // to open (old parentCID). makeEmpty syncs its tables before it truncates; close syncs.
    await rw.writeDescriptor({ ...rw.descriptor, parentCid: newCid })
    if (!opts.keepTop) for (const { extent } of rw.sparseExtents()) await extent.makeEmpty()
  } finally {
    await rw.close()
  }
  return { parent: parentPath, bytes, siblings }
}

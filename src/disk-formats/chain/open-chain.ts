import { realpath } from 'node:fs/promises'
import type { BlockDevice } from '../block-device.js'
import { StorageError } from '../errors.js'
import { openFile, preadFull } from '../file-io.js'
import { RawFile } from '../raw/index.js'
import { looksLikeDescriptor } from '../vmdk/descriptor.js'
import { KDMV_MAGIC } from '../vmdk/sparse-header.js'
import { VmdkImage } from '../vmdk/vmdk-image.js'
import { linkParent } from './read-through.js'

export type ImageFormat = 'vmdk' | 'raw'

/** A chain longer than this is refused: it bounds recursion on a looping or hostile chain. */
export const MAX_CHAIN_DEPTH = 256

/** Guesses a file's format the way qemu probes: KDMV/COWD magic or a `version=` descriptor. */
export async function probeFormat(path: string): Promise<ImageFormat> {
  const fh = await openFile(path, 'r')
  try {
    const head = await preadFull(fh, path, 0, 4096)
    const magic = head.readUInt32LE(0)
    if (magic === KDMV_MAGIC || head.toString('latin1', 0, 4) === 'COWD') return 'vmdk'
    return looksLikeDescriptor(head.toString('utf8')) ? 'vmdk' : 'raw'
  } finally {
    await fh.close()
  }
}

export interface OpenImageOptions {
  readOnly?: boolean
  /** force a format instead of probing */
  format?: ImageFormat
  /** open only the named layer, not its parents (info, check) */
  noBacking?: boolean
}

/**
 * Opens an image and, for a VMDK delta, its parents read-only, each checked against its child's
 * parentCID: a chain whose CIDs disagree refuses to open, naming both files and both CIDs.
 */
export async function openImage(path: string, opts: OpenImageOptions = {}): Promise<BlockDevice> {
  const format = opts.format ?? (await probeFormat(path))
  if (format === 'raw') return RawFile.open(path, { readOnly: opts.readOnly })
  const top = await VmdkImage.open(path, { readOnly: opts.readOnly })
  if (opts.noBacking) return top
  try {
    await attachParents(top)
  } catch (e) {
    await top.close().catch(() => undefined)
    throw e
  }
  return top
}

export async function openVmdk(path: string, opts: Omit<OpenImageOptions, 'format'> = {}): Promise<VmdkImage> {
  const img = await openImage(path, { ...opts, format: 'vmdk' })
  return img as VmdkImage
}

const hex = (n: number) => n.toString(16).padStart(8, '0')

/** Opens `child`'s parent (its path is `ppath`) with `open`, naming the child if it is missing. */
async function openBacking(child: VmdkImage, ppath: string, open: () => Promise<VmdkImage>): Promise<VmdkImage> {
  try {
    return await open()
  } catch (e) {
    if (e instanceof StorageError && e.code === 'NotFound') {
      throw new StorageError('NotFound', `'${child.path}': could not open backing file '${ppath}': No such file or directory`, child.path)
    }
    throw e
  }
}

/** The child's parentCID must be its parent's CID: otherwise the parent changed under it. */
function checkLink(child: VmdkImage, parent: VmdkImage, ppath: string): void {
  if (parent.cid !== child.parentCid) {
    throw new StorageError(
      'ChainMismatch',
      `'${child.path}' expects parent CID ${hex(child.parentCid)} but its parent '${ppath}' has CID ${hex(parent.cid)}: the parent was modified after the child was created`,
      child.path,
    )
  }
}

/** Opens the parents of `top` (read-only), checking each CID link. */
export async function attachParents(top: VmdkImage): Promise<void> {
  const seen = new Set<string>([await realpath(top.path)])
  let child = top
  for (let depth = 1; child.parentPath !== undefined; depth++) {
    if (depth > MAX_CHAIN_DEPTH) throw new StorageError('Corrupt', `'${top.path}': backing chain longer than ${MAX_CHAIN_DEPTH} layers`, top.path)
    const ppath = child.parentPath
    const parent = await openBacking(child, ppath, () => VmdkImage.open(ppath, { readOnly: true }))
    const real = await realpath(ppath)
    if (seen.has(real)) {
      await parent.close()
      throw new StorageError('Corrupt', `'${child.path}': backing chain loops back to '${ppath}'`, child.path)
    }
    seen.add(real)
    linkParent(child, parent)
    checkLink(child, parent, ppath)
    child = parent
  }
}

/**
 * Checks `child`'s link to its parent as attachParents does, opening the parent alone,
 * read-only (commit checks the link before it opens anything for writing).
 */
export async function checkParentLink(child: VmdkImage): Promise<string> {
  const ppath = child.parentPath
  if (ppath === undefined) throw new StorageError('InvalidArgument', `'${child.path}' has no backing file`, child.path)
  if ((await realpath(ppath).catch(() => ppath)) === (await realpath(child.path))) {
    throw new StorageError('Corrupt', `'${child.path}': backing chain loops back to '${ppath}'`, child.path)
  }
  const parent = await openBacking(child, ppath, () => VmdkImage.open(ppath, { readOnly: true }))
  try {
    checkLink(child, parent, ppath)
  } finally {
    await parent.close()
  }
  return ppath
}

import { StorageError } from './errors.js'

/** One run of a device's address space with the same allocation state (qemu-img map's fields). */
export interface Extent {
  offset: number
  length: number
  /** the bytes are stored (in the layer `depth`) */
  data: boolean
  /** the bytes read as zero */
  zero: boolean
  /**
   * Which layer answers: 0 is the device itself, 1 its parent, and so on. For a range no
   * layer allocates, the depth of the bottom layer, with data=false and present=false.
   */
  depth: number
  /** false when no layer of the chain allocates the range (qemu's "present") */
  present: boolean
  /** byte offset in the file that holds the data, when it is stored uncompressed in one place */
  hostOffset?: number
  /** the file named by hostOffset: a path, or a network disk's URI (nbd://…) */
  file?: string
}

export interface WriteOptions {
  /** force unit access: the data is durable when the promise resolves */
  fua?: boolean
}

export interface ZeroOptions {
  /** the device may deallocate the range instead of writing zeroes */
  mayUnmap?: boolean
}

/**
 * The seam every disk, layer and filter implements (DESIGN §2). Offsets and lengths are in
 * bytes. Callers validate requests once at the edge with `checkRange`; implementations may
 * trust them.
 */
export interface BlockDevice {
  readonly size: number
  readonly readOnly: boolean
  read(offset: number, length: number): Promise<Buffer>
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>
  discard(offset: number, length: number): Promise<void>
  flush(): Promise<void>
  blockStatus(offset: number, length: number): Promise<Extent[]>
  close(): Promise<void>
  /** What the device offers beyond the interface; absent: see `capabilitiesOf`. */
  capabilities?(): Capabilities
}

/**
 * What a device does beyond the interface, asked once by a protocol before it advertises a
 * feature. Filters answer for the device beneath them, less what they take away.
 */
export interface Capabilities {
  /** discard deallocates (frees space); false: discard is accepted and does nothing */
  discard: boolean
  /** the device has an atomic `compareAndWrite` (ComparesAndWrites) */
  compareAndWrite: boolean
}

/** A device's capabilities: its own answer, or none but a compareAndWrite it has. */
export function capabilitiesOf(dev: BlockDevice): Capabilities {
  if (dev.capabilities) return dev.capabilities()
  return { discard: false, compareAndWrite: typeof (dev as Partial<ComparesAndWrites>).compareAndWrite === 'function' }
}

/** A device that can read into a caller's buffer, saving an allocation and a copy (VmdkImage). */
export interface ReadsInto {
  readInto(offset: number, length: number, out: Buffer, at: number): Promise<void>
}

/**
 * A device that takes bytes straight from another file (convert, commit): the kernel copies
 * page cache to page cache once (copy_file_range), where read + write copy every byte twice.
 */
export interface WritesFromFile {
  /**
   * Writes `length` bytes read at `position` of the open file `fd` at `offset`; resolves false
   * (nothing written) where this device cannot, and the caller then writes the bytes itself.
   */
  writeFromFile(offset: number, length: number, fd: number, position: number): Promise<boolean>
  /**
   * Where the device's bytes are one file's at the same offsets (a raw file): writes the blocks of
   * [offset, offset+length) that are not all zero, read at `position` of `fd`, in one step, and
   * leaves the all-zero ones unwritten; zero[i] is set to 1 for those. Block 0 is `first` bytes
   * long, the others `block`.
   */
  writeDataFromFile?(offset: number, length: number, fd: number, position: number, first: number, block: number, zero: Uint8Array): Promise<void>
}

/**
 * A device with its own compare-and-write, atomic against writers the LogicalUnit does not see
 * (the lockspace file, locked across processes): SCSI COMPARE AND WRITE goes through it. Resolves
 * false on a miscompare (nothing written).
 */
export interface ComparesAndWrites {
  compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean>
}

/** Reads into `out[at…]`, directly where the device supports it. */
export async function readInto(dev: BlockDevice, offset: number, length: number, out: Buffer, at: number): Promise<void> {
  const direct = (dev as Partial<ReadsInto>).readInto
  if (direct) return direct.call(dev, offset, length, out, at)
  ;(await dev.read(offset, length)).copy(out, at)
}

/** Validates a request against a device once, at the edge (the `checked` filter). */
export function checkRange(dev: { size: number }, offset: number, length: number): void {
  const e = rangeError(dev, offset, length)
  if (e) throw e
}

/** checkRange's verdict as a value (null: the request is within the device). */
export function rangeError(dev: { size: number }, offset: number, length: number): StorageError | null {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    return new StorageError('InvalidArgument', `invalid request: offset ${offset}, length ${length}`)
  }
  if (offset + length > dev.size) {
    return new StorageError('OutOfRange', `request ${offset}+${length} is beyond the end of the device (${dev.size} bytes)`)
  }
  return null
}

export function checkWritable(dev: { readOnly: boolean }): void {
  if (dev.readOnly) throw readOnlyError()
}

export function readOnlyError(): StorageError {
  return new StorageError('ReadOnly', 'the device is read-only')
}

/** Joins adjacent extents with the same state, as qemu-img map does. */
export function mergeExtents(list: Extent[]): Extent[] {
  const out: Extent[] = []
  for (const e of list) {
    if (e.length === 0) continue
    const last = out[out.length - 1]
    if (
      last &&
      last.offset + last.length === e.offset &&
      last.data === e.data &&
      last.zero === e.zero &&
      last.depth === e.depth &&
      last.present === e.present &&
      last.file === e.file &&
      (last.hostOffset === undefined) === (e.hostOffset === undefined) &&
      (last.hostOffset === undefined || last.hostOffset + last.length === e.hostOffset)
    ) {
      last.length += e.length
    } else {
      out.push({ ...e })
    }
  }
  return out
}

export const SECTOR = 512

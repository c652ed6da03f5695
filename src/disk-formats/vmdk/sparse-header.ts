import { defineStruct, U64_TOO_LARGE, type Decoded } from '../struct.js'
import { StorageError } from '../errors.js'

/** SparseExtentHeader, sector 0 of every hosted sparse extent (SPEC.md §1). */
export const SparseHeaderStruct = defineStruct(
  {
    magic: { offset: 0, type: 'u32' },
    version: { offset: 4, type: 'u32' },
    flags: { offset: 8, type: 'u32' },
    capacity: { offset: 12, type: 'u64' },
    grainSize: { offset: 20, type: 'u64' },
    descriptorOffset: { offset: 28, type: 'u64' },
    descriptorSize: { offset: 36, type: 'u64' },
    numGTEsPerGT: { offset: 44, type: 'u32' },
    rgdOffset: { offset: 48, type: 'u64' },
    gdOffset: { offset: 56, type: 'u64' },
    overHead: { offset: 64, type: 'u64' },
    uncleanShutdown: { offset: 72, type: 'u8' },
    singleEndLineChar: { offset: 73, type: 'u8' },
    nonEndLineChar: { offset: 74, type: 'u8' },
    doubleEndLineChar1: { offset: 75, type: 'u8' },
    doubleEndLineChar2: { offset: 76, type: 'u8' },
    compressAlgorithm: { offset: 77, type: 'u16' },
  },
  512,
)

export type SparseHeader = Decoded<typeof SparseHeaderStruct.fields>

export const KDMV_MAGIC = 0x564d444b // "KDMV" as stored little-endian
export const COWD_MAGIC = 0x44574f43 // "COWD": ESX vmfsSparse, not supported
export const FLAG_NL_TEST = 0x1
export const FLAG_RGD = 0x2
export const FLAG_ZEROED_GRAIN = 0x4
export const FLAG_COMPRESSED = 0x10000
export const FLAG_MARKERS = 0x20000
export const COMPRESSION_DEFLATE = 1
export const GD_AT_END = U64_TOO_LARGE
export const UNCLEAN_SHUTDOWN_OFFSET = 72

/** qemu's bound: a grain of more than 2^21 sectors (1 GiB) is refused as corrupt. */
const MAX_GRAIN_SECTORS = 0x200000
/** qemu's bound on GTEs per GT; the spec fixes 512. */
const MAX_GTES = 512
/**
 * 2^40 sectors = 512 TiB: beyond VMDK's own 62 TiB limit, so a larger capacity is corrupt.
 * It also keeps capacity*512 an exact JS number.
 */
const MAX_CAPACITY_SECTORS = 2 ** 40
/** A descriptor is text of a few hundred bytes; 2048 sectors (1 MiB) bounds the read. */
export const MAX_DESCRIPTOR_SECTORS = 2048

export interface HeaderGeometry {
  grainBytes: number
  gtCoverage: number // sectors covered by one GT
  gdEntries: number
  gdSectors: number
  gtSectors: number
}

export function geometry(h: Pick<SparseHeader, 'capacity' | 'grainSize' | 'numGTEsPerGT'>): HeaderGeometry {
  const gtCoverage = h.numGTEsPerGT * h.grainSize
  const gdEntries = Math.ceil(h.capacity / gtCoverage)
  return {
    grainBytes: h.grainSize * 512,
    gtCoverage,
    gdEntries,
    gdSectors: Math.ceil((gdEntries * 4) / 512),
    gtSectors: Math.ceil((h.numGTEsPerGT * 4) / 512),
  }
}

/**
 * Decodes and validates a header: magic, then version, then bounds, each with its own error.
 * (VMDK headers carry no checksum.) `fileSectors` bounds the offsets.
 */
export function decodeSparseHeader(buf: Buffer, file: string, fileSectors: number): SparseHeader {
  if (buf.length < 512) {
    throw new StorageError('Corrupt', `'${file}': file truncated: expected a 512-byte header, found ${buf.length} bytes`, file)
  }
  const h = SparseHeaderStruct.decode(buf)
  if (h.magic === COWD_MAGIC) {
    throw new StorageError('Unsupported', `'${file}': vmfsSparse (COWD) extents are not supported`, file)
  }
  if (h.magic !== KDMV_MAGIC) {
    throw new StorageError('BadMagic', `'${file}': not a VMDK sparse extent: expected magic 'KDMV', found 0x${h.magic.toString(16).padStart(8, '0')}`, file)
  }
  if (h.version < 1 || h.version > 3) {
    throw new StorageError('Unsupported', `'${file}': unsupported VMDK version ${h.version} (expected 1, 2 or 3)`, file)
  }
  const bad = (what: string) => new StorageError('Corrupt', `'${file}': invalid header: ${what}`, file)
  if (h.capacity === 0) throw bad('capacity is 0 sectors')
  if (h.capacity > MAX_CAPACITY_SECTORS) throw bad(`capacity ${h.capacity} sectors exceeds ${MAX_CAPACITY_SECTORS}`)
  if (h.grainSize < 1 || h.grainSize > MAX_GRAIN_SECTORS || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw bad(`grain size ${h.grainSize} sectors is not a power of two from 1 to ${MAX_GRAIN_SECTORS}`)
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > MAX_GTES) {
    throw bad(`${h.numGTEsPerGT} entries per grain table (expected 1 to ${MAX_GTES})`)
  }
  if (h.descriptorSize > MAX_DESCRIPTOR_SECTORS) {
    throw bad(`descriptor size ${h.descriptorSize} sectors exceeds ${MAX_DESCRIPTOR_SECTORS}`)
  }
  if (h.descriptorOffset !== 0 && h.descriptorOffset + h.descriptorSize > fileSectors) {
    throw new StorageError('Corrupt', `'${file}': file truncated: descriptor at sector ${h.descriptorOffset} (+${h.descriptorSize}) is past the end of the file (${fileSectors} sectors)`, file)
  }
  const compressed = h.compressAlgorithm === COMPRESSION_DEFLATE
  if (h.compressAlgorithm > COMPRESSION_DEFLATE) throw bad(`unknown compression algorithm ${h.compressAlgorithm}`)
  if (h.gdOffset === GD_AT_END) {
    if (!compressed) throw bad('grain directory at end of file in an uncompressed extent')
  } else if (h.gdOffset === 0 || h.gdOffset >= fileSectors) {
    throw new StorageError('Corrupt', `'${file}': invalid header: grain directory at sector ${h.gdOffset} is outside the file (${fileSectors} sectors)`, file)
  }
  if (h.flags & FLAG_RGD && !compressed && (h.rgdOffset === 0 || h.rgdOffset >= fileSectors)) {
    throw new StorageError('Corrupt', `'${file}': invalid header: redundant grain directory at sector ${h.rgdOffset} is outside the file (${fileSectors} sectors)`, file)
  }
  if (h.overHead > fileSectors && !compressed) {
    throw new StorageError('Corrupt', `'${file}': file truncated: expecting at least ${h.overHead * 512} bytes, found ${fileSectors * 512}`, file)
  }
  return h
}

import { defineStruct, type FieldType } from '../../disk-formats/struct.js'

/** The fields every block-addressed CDB has, read without judging them. */
export interface BlockFields {
  /** byte 1 (0 in the 6-byte format): protection, DPO, FUA, BYTCHK, ANCHOR, UNMAP, NDOB… */
  flags: number
  /** above Number.MAX_SAFE_INTEGER it reads as MAX_SAFE_INTEGER + 1 (out of range for any medium) */
  lba: number
  /** TRANSFER LENGTH / NUMBER OF LOGICAL BLOCKS / VERIFICATION LENGTH / PREFETCH LENGTH */
  count: number
  /** WRITE ATOMIC(16)'s ATOMIC BOUNDARY; 0 in every other format */
  boundary: number
}

/**
 * A block-addressed CDB format (SBC-3 4.2.2): where its LOGICAL BLOCK ADDRESS and its count lie.
 * The field pointer of an error in the count is `countByte`, read from the same table as the count.
 */
export interface BlockFormat {
  readonly lbaByte: number
  readonly countByte: number
  fields(cdb: Buffer): BlockFields
  /** a copy of `cdb` whose count is `count` */
  withCount(cdb: Buffer, count: number): Buffer
}

const field = (offset: number, type: FieldType) => ({ offset, type })

interface Layout {
  lba: number
  lbaType: FieldType
  count: number
  countType: FieldType
  boundary?: number
  /** the 6-byte format: no flags byte (the LBA starts in byte 1) */
  short?: boolean
}

function blockFormat(table: Layout, read = (f: BlockFields) => f): BlockFormat {
  const s = defineStruct({
    lba: field(table.lba, table.lbaType),
    count: field(table.count, table.countType),
    ...(table.boundary !== undefined ? { boundary: field(table.boundary, 'u16be') } : {}),
  })
  const countOnly = defineStruct({ count: field(table.count, table.countType) })
  return {
    lbaByte: table.lba,
    countByte: table.count,
    fields(cdb) {
      const d = s.decode(cdb) as { lba: number; count: number; boundary?: number }
      return read({ flags: table.short ? 0 : cdb[1], lba: d.lba, count: d.count, boundary: d.boundary ?? 0 })
    },
    withCount(cdb, count) {
      return countOnly.encode({ count }, Buffer.from(cdb))
    },
  }
}

/** READ(6), WRITE(6): a 21-bit LBA in bytes 1-3; a count of 0 means 256 blocks (SBC-3 5.8). */
export const CDB6 = blockFormat({ lba: 1, lbaType: 'u24be', count: 4, countType: 'u8', short: true }, (f) => ({ ...f, lba: f.lba & 0x1fffff, count: f.count || 256 }))
export const CDB10 = blockFormat({ lba: 2, lbaType: 'u32be', count: 7, countType: 'u16be' })
export const CDB12 = blockFormat({ lba: 2, lbaType: 'u32be', count: 6, countType: 'u32be' })
export const CDB16 = blockFormat({ lba: 2, lbaType: 'u64be', count: 10, countType: 'u32be' })
/** COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS is byte 13 (SBC-3 5.2). */
export const CAW16 = blockFormat({ lba: 2, lbaType: 'u64be', count: 13, countType: 'u8' })
/** WRITE ATOMIC(16): ATOMIC BOUNDARY in bytes 10-11, TRANSFER LENGTH in 12-13 (SBC-4 5.48). */
export const ATOMIC_BOUNDARY_BYTE = 10
export const ATOMIC16 = blockFormat({ lba: 2, lbaType: 'u64be', count: 12, countType: 'u16be', boundary: ATOMIC_BOUNDARY_BYTE })

import type { StorageErrorCode } from '../../disk-formats/errors.js'
import * as C from './constants.js'

/** A command that ends in CHECK CONDITION with this sense. */
export class SenseError extends Error {
  constructor(
    readonly key: number,
    readonly asc: C.AscName,
    /** the INFORMATION field (e.g. the offset of a miscompare), when valid */
    readonly information?: number,
    /** SKSV: the field in error is at byte `field.byte` (bit `field.bit`) of the CDB (cd) or of the data */
    readonly field?: { cd: boolean; byte: number; bit?: number },
  ) {
    super(`sense ${key.toString(16)}/${C.ASC[asc].map((x) => x.toString(16).padStart(2, '0')).join('/')} (${asc})`)
  }
}

export const invalidField = (byte: number, bit?: number) => new SenseError(C.ILLEGAL_REQUEST, 'INVALID_FIELD_IN_CDB', undefined, { cd: true, byte, bit })
export const invalidOpcode = () => new SenseError(C.ILLEGAL_REQUEST, 'INVALID_COMMAND_OPERATION_CODE', undefined, { cd: true, byte: 0 })
export const lbaOutOfRange = () => new SenseError(C.ILLEGAL_REQUEST, 'LBA_OUT_OF_RANGE')
export const invalidParameter = (byte: number) => new SenseError(C.ILLEGAL_REQUEST, 'INVALID_FIELD_IN_PARAMETER_LIST', undefined, { cd: false, byte })
export const logicalUnitNotSupported = () => new SenseError(C.ILLEGAL_REQUEST, 'LOGICAL_UNIT_NOT_SUPPORTED')
export const parameterLength = () => new SenseError(C.ILLEGAL_REQUEST, 'PARAMETER_LIST_LENGTH_ERROR')

/** Fixed-format sense data (SPC-4 4.5.3), 18 bytes. */
export function senseData(e: SenseError): Buffer {
  const b = Buffer.alloc(18)
  const [asc, ascq] = C.ASC[e.asc]
  b[0] = 0x70 | (e.information !== undefined ? 0x80 : 0)
  b[2] = e.key
  if (e.information !== undefined) b.writeUInt32BE(e.information >>> 0, 3)
  b[7] = 10
  b[12] = asc
  b[13] = ascq
  if (e.field) {
    b[15] = 0x80 | (e.field.cd ? 0x40 : 0) | (e.field.bit !== undefined ? 0x08 | (e.field.bit & 7) : 0)
    b.writeUInt16BE(e.field.byte, 16)
  }
  return b
}

/** The one mapping of storage errors to sense data. */
export function senseFor(code: StorageErrorCode): SenseError {
  switch (code) {
    case 'OutOfRange':
      return lbaOutOfRange()
    case 'InvalidArgument':
      return new SenseError(C.ILLEGAL_REQUEST, 'INVALID_FIELD_IN_CDB')
    case 'ReadOnly':
      return new SenseError(C.DATA_PROTECT, 'WRITE_PROTECTED')
    case 'NoSpace':
      return new SenseError(C.DATA_PROTECT, 'SPACE_ALLOCATION_FAILED_WRITE_PROTECT')
    case 'Unsupported':
      return invalidOpcode()
    case 'Busy':
      return new SenseError(C.NOT_READY, 'LUN_NOT_READY_MANUAL_INTERVENTION')
    case 'Corrupt':
    case 'BadMagic':
    case 'ChainMismatch':
      return new SenseError(C.MEDIUM_ERROR, 'UNRECOVERED_READ_ERROR')
    case 'NotFound':
    case 'Exists':
    case 'IoError':
      return new SenseError(C.HARDWARE_ERROR, 'INTERNAL_TARGET_FAILURE')
  }
}

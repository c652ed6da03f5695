import type { StorageErrorCode } from '../../disk-formats/errors.js'

/** The one mapping of storage errors to HTTP statuses. */
export function httpStatus(code: StorageErrorCode): number {
  switch (code) {
    case 'InvalidArgument':
    case 'OutOfRange':
      return 400
    case 'NotFound':
      return 404
    case 'Exists':
    case 'Busy':
    case 'ReadOnly':
      return 409
    case 'NoSpace':
      return 507
    case 'Unsupported':
      return 501
    case 'Corrupt':
    case 'BadMagic':
    case 'ChainMismatch':
    case 'IoError':
      return 500
  }
}

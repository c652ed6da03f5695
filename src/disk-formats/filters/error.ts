import type { BlockDevice } from '../block-device.js'
import { StorageError, type StorageErrorCode } from '../errors.js'
import { faultTest, type FaultOptions } from './fault.js'
import { Faulty } from './faulty.js'

export interface ErrorOptions extends FaultOptions {
  /** the error hit requests fail with (default IoError) */
  code?: StorageErrorCode
}

/** Failing-storage fault injection (DESIGN §11): hit requests fail without reaching `next`. */
export function error(next: BlockDevice, opts: ErrorOptions = {}): BlockDevice {
  const code = opts.code ?? 'IoError'
  return new Faulty(next, faultTest(opts), (op, offset, length) =>
    Promise.reject(new StorageError(code, `injected ${code}: ${op}${op === 'flush' ? '' : ` at ${offset}+${length}`}`)),
  )
}

import { isStorageError, type StorageErrorCode } from '../../disk-formats/errors.js'

/** The CLI's one mapping from error codes to exit statuses. */
export function exitCodeFor(code: StorageErrorCode): number {
  switch (code) {
    case 'OutOfRange':
    case 'ReadOnly':
    case 'NoSpace':
    case 'Corrupt':
    case 'BadMagic':
    case 'Unsupported':
    case 'InvalidArgument':
    case 'NotFound':
    case 'Exists':
    case 'ChainMismatch':
    case 'Busy':
    case 'IoError':
      return 1
  }
}

/** Prints one line, `tandem: message`, and returns the exit status; never a stack trace. */
export function reportError(e: unknown): number {
  if (isStorageError(e)) {
    process.stderr.write(`tandem: ${e.message}\n`)
    return exitCodeFor(e.code)
  }
  const msg = e instanceof Error ? e.message : String(e)
  process.stderr.write(`tandem: ${msg}\n`)
  if (process.env.TANDEM_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`)
  return 1
}

/**
 * The one error type of the storage layers. Every edge (CLI exit codes, NBD errno,
 * SCSI sense, HTTP status) maps `code` exactly once, with an exhaustive switch.
 */
export type StorageErrorCode =
  | 'OutOfRange' // request outside the device
  | 'ReadOnly' // write to a read-only device or export
  | 'NoSpace' // the backing store is full, or a format limit was reached
  | 'Corrupt' // on-disk metadata is inconsistent or fails validation
  | 'BadMagic' // the file is not of the expected format
  | 'Unsupported' // a valid file using a feature Tandem does not offer
  | 'InvalidArgument' // a request or option that is malformed
  | 'NotFound' // a named file, disk or snapshot does not exist
  | 'Exists' // creating something that already exists
  | 'ChainMismatch' // a delta whose parentCID does not match its parent's CID
  | 'Busy' // the resource is in use (e.g. other children of a parent being committed)
  | 'IoError' // the operating system reported an I/O failure

/** Marks StorageErrors, so that every copy of this module recognizes every other's (below). */
const BRAND = Symbol.for('tandem.StorageError')

export class StorageError extends Error {
  override readonly name = 'StorageError'
  readonly [BRAND] = true
  /**
   * `instanceof StorageError` holds for an instance of any copy of this class: the `tandem`
   * executable bundles one copy and loads the server and the lock manager with their own.
   */
  static override [Symbol.hasInstance](v: unknown): boolean {
    return typeof v === 'object' && v !== null && (v as { [BRAND]?: unknown })[BRAND] === true
  }
  constructor(
    readonly code: StorageErrorCode,
    message: string,
    readonly file?: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

export function isStorageError(e: unknown, code?: StorageErrorCode): e is StorageError {
  return e instanceof StorageError && (code === undefined || e.code === code)
}

/** Wrap an operating-system error (ENOENT, EIO, ENOSPC…) as a StorageError naming the file. */
export function fromSystemError(e: unknown, file: string, action: string): StorageError {
  if (e instanceof StorageError) return e
  const err = e as NodeJS.ErrnoException
  const msg = `${action} '${file}': ${err?.message ?? String(e)}`
  switch (err?.code) {
    case 'ENOENT':
      return new StorageError('NotFound', `${action} '${file}': No such file or directory`, file, { cause: e })
    case 'EEXIST':
      return new StorageError('Exists', `${action} '${file}': File exists`, file, { cause: e })
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return new StorageError('NoSpace', msg, file, { cause: e })
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return new StorageError('ReadOnly', msg, file, { cause: e })
    case 'EISDIR':
    case 'ENOTDIR':
      return new StorageError('InvalidArgument', msg, file, { cause: e })
    default:
      return new StorageError('IoError', msg, file, { cause: e })
  }
}

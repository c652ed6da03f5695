import type { StorageErrorCode } from '../../disk-formats/errors.js'

/** The protocol's fixed-size structures, as field tables. */
export * from './wire.js'

/** Constants of the NBD protocol document (fixed newstyle), with their spec names. */
export const NBDMAGIC = 0x4e42444d41474943n
export const IHAVEOPT = 0x49484156454f5054n
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_NO_ZEROES = 1 << 1
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
export const NBD_FLAG_C_NO_ZEROES = 1 << 1

export const NBD_OPT_EXPORT_NAME = 1
export const NBD_OPT_ABORT = 2
export const NBD_OPT_LIST = 3
export const NBD_OPT_STARTTLS = 5
export const NBD_OPT_INFO = 6
export const NBD_OPT_GO = 7
export const NBD_OPT_STRUCTURED_REPLY = 8
export const NBD_OPT_LIST_META_CONTEXT = 9
export const NBD_OPT_SET_META_CONTEXT = 10

export const NBD_REP_ACK = 1
export const NBD_REP_SERVER = 2
export const NBD_REP_INFO = 3
export const NBD_REP_META_CONTEXT = 4
export const NBD_REP_FLAG_ERROR = 2 ** 31
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9

export const NBD_INFO_EXPORT = 0
export const NBD_INFO_NAME = 1
export const NBD_INFO_DESCRIPTION = 2
export const NBD_INFO_BLOCK_SIZE = 3

export const NBD_FLAG_HAS_FLAGS = 1 << 0
export const NBD_FLAG_READ_ONLY = 1 << 1
export const NBD_FLAG_SEND_FLUSH = 1 << 2
export const NBD_FLAG_SEND_FUA = 1 << 3
export const NBD_FLAG_SEND_TRIM = 1 << 5
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
export const NBD_FLAG_SEND_DF = 1 << 7
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8
export const NBD_FLAG_SEND_CACHE = 1 << 10
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11

export const NBD_CMD_READ = 0
export const NBD_CMD_WRITE = 1
export const NBD_CMD_DISC = 2
export const NBD_CMD_FLUSH = 3
export const NBD_CMD_TRIM = 4
export const NBD_CMD_CACHE = 5
export const NBD_CMD_WRITE_ZEROES = 6
export const NBD_CMD_BLOCK_STATUS = 7

export const NBD_CMD_FLAG_FUA = 1 << 0
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1
export const NBD_CMD_FLAG_DF = 1 << 2
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4

export const NBD_REPLY_FLAG_DONE = 1 << 0
export const NBD_REPLY_TYPE_NONE = 0
export const NBD_REPLY_TYPE_OFFSET_DATA = 1
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5
export const NBD_REPLY_TYPE_ERROR = 2 ** 15 + 1
export const NBD_REPLY_TYPE_ERROR_OFFSET = 2 ** 15 + 2

export const NBD_STATE_HOLE = 1 << 0
export const NBD_STATE_ZERO = 1 << 1

export const NBD_EPERM = 1
export const NBD_EIO = 5
export const NBD_ENOMEM = 12
export const NBD_EINVAL = 22
export const NBD_ENOSPC = 28
export const NBD_EOVERFLOW = 75
export const NBD_ENOTSUP = 95
export const NBD_ESHUTDOWN = 108

/**
 * The one mapping of storage errors to NBD errnos. `write`: the request changes the export (the
 * NBD document: past the end, a write gets ENOSPC and a read EINVAL).
 */
export function nbdErrno(code: StorageErrorCode, write = false): number {
  switch (code) {
    case 'OutOfRange':
      return write ? NBD_ENOSPC : NBD_EINVAL
    case 'InvalidArgument':
      return NBD_EINVAL
    case 'ReadOnly':
      return NBD_EPERM
    case 'NoSpace':
      return NBD_ENOSPC
    case 'Unsupported':
      return NBD_ENOTSUP
    case 'Corrupt':
    case 'BadMagic':
    case 'NotFound':
    case 'Exists':
    case 'ChainMismatch':
    case 'Busy':
    case 'IoError':
      return NBD_EIO
  }
}

/** Limits. Option data: the longest legitimate option is a name list, far below 64 KiB. */
export const MAX_OPTION_LENGTH = 64 * 1024
/** Largest READ/WRITE payload accepted (advertised as the maximum block size): 32 MiB, as nbdkit. */
export const MAX_REQUEST_LENGTH = 32 * 1024 * 1024
/**
 * Largest WRITE payload refused with EINVAL and skipped (read and dropped as it arrives) with the
 * connection kept; a larger one closes the connection (the spec allows either past 2^25 bytes).
 */
export const MAX_SKIPPED_PAYLOAD = 2 * MAX_REQUEST_LENGTH
export const PREFERRED_BLOCK = 64 * 1024
/** Requests of one connection in flight before the server stops reading from it. */
export const MAX_INFLIGHT = 64
/**
 * Bytes one connection may hold before the server stops reading its requests: the data of its
 * requests in flight (READ data being read, WRITE payloads being written) plus its replies that
 * the kernel has not taken yet (a client that does not read them). With the requests not yet read
 * (the socket queue's 4 MiB, net/byte-queue.ts) this bounds what a connection costs the server to
 * about 68 MiB, however many requests it sends or how slowly it reads (README, NBD). A request
 * alone always goes through, so two of the largest can overlap.
 */
export const MAX_CONNECTION_BYTES = 64 * 1024 * 1024
export const META_BASE_ALLOCATION = 'base:allocation'
export const META_CONTEXT_ID = 1

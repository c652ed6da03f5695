import { defineStruct } from '../../disk-formats/struct.js'

/** the first field of every request (NBD_REQUEST.magic) */
export const NBD_REQUEST_MAGIC = 0x25609513

/**
 * The NBD protocol's fixed-size structures (the NetworkBlockDevice protocol document,
 * doc/proto.md), declared once for the server and the client. All fields are big-endian.
 * Variable parts (names, option data, descriptors lists) follow the structure they belong to.
 */

/** The server's first bytes, fixed newstyle: NBDMAGIC, IHAVEOPT, handshake flags. */
export const NBD_GREETING = defineStruct({
  nbdMagic: { offset: 0, type: 'u64be' },
  optMagic: { offset: 8, type: 'u64be' },
  handshakeFlags: { offset: 16, type: 'u16be' },
})

/** The client's answer to the greeting. */
export const NBD_CLIENT_FLAGS = defineStruct({
  clientFlags: { offset: 0, type: 'u32be' },
})

/** An option request (IHAVEOPT), followed by `length` bytes of option data. */
export const NBD_OPTION = defineStruct({
  magic: { offset: 0, type: 'u64be' },
  option: { offset: 8, type: 'u32be' },
  length: { offset: 12, type: 'u32be' },
})

/** An option reply (NBD_OPT_REPLY_MAGIC), followed by `length` bytes of reply data. */
export const NBD_OPTION_REPLY = defineStruct({
  magic: { offset: 0, type: 'u64be' },
  option: { offset: 8, type: 'u32be' },
  type: { offset: 12, type: 'u32be' },
  length: { offset: 16, type: 'u32be' },
})

/** The reply to NBD_OPT_EXPORT_NAME (then 124 zero bytes unless NBD_FLAG_C_NO_ZEROES). */
export const NBD_EXPORT_NAME_REPLY = defineStruct({
  size: { offset: 0, type: 'u64be' },
  transmissionFlags: { offset: 8, type: 'u16be' },
})
export const NBD_EXPORT_NAME_ZEROES = 124

/** NBD_REP_INFO data: every kind starts with its type. */
export const NBD_INFO = defineStruct({
  info: { offset: 0, type: 'u16be' },
})

/** NBD_REP_INFO data of NBD_INFO_EXPORT. */
export const NBD_INFO_EXPORT_DATA = defineStruct({
  info: { offset: 0, type: 'u16be' },
  size: { offset: 2, type: 'u64be' },
  transmissionFlags: { offset: 10, type: 'u16be' },
})

/** NBD_REP_INFO data of NBD_INFO_BLOCK_SIZE. */
export const NBD_INFO_BLOCK_SIZE_DATA = defineStruct({
  info: { offset: 0, type: 'u16be' },
  minimum: { offset: 2, type: 'u32be' },
  preferred: { offset: 6, type: 'u32be' },
  maximum: { offset: 10, type: 'u32be' },
})

/** A transmission request (NBD_REQUEST_MAGIC), followed by `length` bytes for NBD_CMD_WRITE. */
export const NBD_REQUEST = defineStruct({
  magic: { offset: 0, type: 'u32be' },
  flags: { offset: 4, type: 'u16be' },
  type: { offset: 6, type: 'u16be' },
  /** opaque to the server, echoed in the replies */
  cookie: { offset: 8, type: 'u64be' },
  offset: { offset: 16, type: 'u64be' },
  length: { offset: 24, type: 'u32be' },
})

/** A simple reply (NBD_SIMPLE_REPLY_MAGIC), followed by the data of a successful READ. */
export const NBD_SIMPLE_REPLY = defineStruct({
  magic: { offset: 0, type: 'u32be' },
  error: { offset: 4, type: 'u32be' },
  cookie: { offset: 8, type: 'u64be' },
})

/** A structured reply chunk (NBD_STRUCTURED_REPLY_MAGIC), followed by `length` bytes of payload. */
export const NBD_STRUCTURED_REPLY = defineStruct({
  magic: { offset: 0, type: 'u32be' },
  flags: { offset: 4, type: 'u16be' },
  type: { offset: 6, type: 'u16be' },
  cookie: { offset: 8, type: 'u64be' },
  length: { offset: 16, type: 'u32be' },
})

/** Payload of NBD_REPLY_TYPE_OFFSET_DATA: the offset, then the data. */
export const NBD_CHUNK_OFFSET_DATA = defineStruct({
  offset: { offset: 0, type: 'u64be' },
})

/** Payload of NBD_REPLY_TYPE_OFFSET_HOLE. */
export const NBD_CHUNK_OFFSET_HOLE = defineStruct({
  offset: { offset: 0, type: 'u64be' },
  length: { offset: 8, type: 'u32be' },
})

/** Payload of NBD_REPLY_TYPE_ERROR: errno, then a message of `messageLength` bytes. */
export const NBD_CHUNK_ERROR = defineStruct({
  error: { offset: 0, type: 'u32be' },
  messageLength: { offset: 4, type: 'u16be' },
})

/** Payload of NBD_REPLY_TYPE_BLOCK_STATUS: the context id, then descriptors. */
export const NBD_CHUNK_BLOCK_STATUS = defineStruct({
  contextId: { offset: 0, type: 'u32be' },
})

/** One block status descriptor. */
export const NBD_BLOCK_DESCRIPTOR = defineStruct({
  length: { offset: 0, type: 'u32be' },
  flags: { offset: 4, type: 'u32be' },
})

/** A request header, as a client sends it. */
export function encodeRequest(type: number, flags: number, cookie: bigint, offset: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(NBD_REQUEST.size)
  NBD_REQUEST.set(h, 'magic', NBD_REQUEST_MAGIC)
  NBD_REQUEST.set(h, 'flags', flags)
  NBD_REQUEST.set(h, 'type', type)
  NBD_REQUEST.setBig(h, 'cookie', cookie)
  NBD_REQUEST.set(h, 'offset', offset)
  NBD_REQUEST.set(h, 'length', length)
  return h
}

import { crc32c } from '../../disk-formats/crc32c.js'
import { StorageError } from '../../disk-formats/errors.js'
import { defineStruct, type Decoded, type FieldTable, type Struct } from '../../disk-formats/struct.js'
import { validVmName } from '../host/names.js'

/**
 * The FT log channel's frames (SPEC.md in this folder), little-endian like the VM's other formats:
 *
 *   frame = u32 length  u8 type  u8 flags(0)  u16 reserved(0)  payload(length bytes)  u32 crc32c
 *
 * The CRC-32C covers the header and the payload. `length` counts the payload only.
 */
export const FT_VERSION = 1

/**
 * The largest payload: a LOG or STATE batch is at most this. 16 MiB bounds what one untrusted
 * header makes a receiver buffer, and is far above a flush's log (a slice's records, ~KiB) and a
 * STATE chunk (the sender picks ≤ 1 MiB so that a frame arrives well within the loss timeout).
 */
export const MAX_PAYLOAD = 16 << 20

export const FrameHead = defineStruct({
  length: { offset: 0, type: 'u32' },
  type: { offset: 4, type: 'u8' },
  flags: { offset: 5, type: 'u8' },
  reserved: { offset: 6, type: 'u16' },
})
export const HEAD_BYTES = FrameHead.size
export const CRC_BYTES = 4
/** a frame's bytes besides its payload */
export const FRAME_OVERHEAD = HEAD_BYTES + CRC_BYTES

/** Wire type codes (SPEC.md §Messages); the names are the spec's. */
export const FT_TYPE = {
  HELLO: 1,
  HELLO_OK: 2,
  HELLO_REFUSED: 3,
  STATE: 4,
  STATE_END: 5,
  LOG: 6,
  ACK: 7,
  HEARTBEAT: 8,
  BYE: 9,
  ERROR: 10,
  /** quasi-lockstep (`--ft-mode colo`): a sub-message of colo/messages.ts */
  COLO: 11,
  FEEDBACK: 12,
} as const
export type FtType = keyof typeof FT_TYPE
export const FT_TYPES = Object.keys(FT_TYPE) as FtType[]
const TYPE_NAME = new Map<number, FtType>(FT_TYPES.map((t) => [FT_TYPE[t], t]))

export type FtMode = 'replay' | 'checkpoint' | 'colo'
export type FtStart = 'boot' | 'state'
export type FtBackupReads = 'disk' | 'log'
export type FtByeReason = 'handover' | 'stop'
/** why a backup refuses a HELLO */
export type FtRefusal = 'version' | 'image' | 'memory' | 'vm' | 'generation' | 'mode' | 'other'

/**
 * Why a frame stream is broken (decode) or an ERROR frame's code. `Busy` and `Internal` occur only
 * in ERROR frames: a backup already has a primary; the sender failed for a reason of its own.
 */
export type FtErrorCode =
  | 'BadLength' // payload length above MAX_PAYLOAD, or wrong for the type
  | 'BadType' // a type code this version does not define
  | 'BadFlags' // a flag bit set (version 1 defines none)
  | 'BadReserved' // the reserved u16 is not 0
  | 'BadCrc' // the frame's CRC-32C does not match
  | 'BadPayload' // a field out of its range (an enum code, a name, a count)
  | 'AfterBye' // bytes after a BYE frame
  | 'Truncated' // the stream ended inside a frame
  | 'Busy'
  | 'Internal'

const ERROR_CODES: FtErrorCode[] = ['BadLength', 'BadType', 'BadFlags', 'BadReserved', 'BadCrc', 'BadPayload', 'AfterBye', 'Truncated', 'Busy', 'Internal']

/** A broken frame stream, or a message that cannot be encoded; the channel ends with it. */
export class FtProtocolError extends Error {
  override readonly name = 'FtProtocolError'
  /** messages the decoder completed in the same push before the error (the caller acts on them first) */
  decoded: FtMessage[] = []
  constructor(
    readonly code: FtErrorCode,
    message: string,
  ) {
    super(message)
  }
}

export interface FtHelloParams {
  version: number
  vm: string
  mode: FtMode
  /** the generation of the primary's `vm/<name>` lock (the fencing token) */
  lockGeneration: number
  memoryBytes: number
  imageSha256: Buffer
  start: FtStart
  backupReads: FtBackupReads
  /** the primary's instret at start */
  instret: number
}

export type FtMessage =
  | ({ type: 'HELLO' } & FtHelloParams)
  | ({ type: 'HELLO_OK' } & FtHelloParams)
  | { type: 'HELLO_REFUSED'; version: number; reason: FtRefusal; text: string }
  | { type: 'STATE'; data: Buffer }
  | { type: 'STATE_END'; instret: number; hash: Buffer }
  | { type: 'LOG'; records: Buffer }
  | { type: 'ACK'; received: number; executed: number; readsDone: number }
  | { type: 'HEARTBEAT'; ms: number }
  | { type: 'BYE'; reason: FtByeReason; instret: number }
  | { type: 'ERROR'; code: FtErrorCode; text: string }
  | { type: 'COLO'; data: Buffer }
  | { type: 'FEEDBACK'; data: Buffer }

export type FtMessageOf<T extends FtType> = Extract<FtMessage, { type: T }>

/** HELLO and HELLO_OK: this fixed part, then the VM name (UTF-8, the rest of the payload). */
export const HelloBody = defineStruct({
  version: { offset: 0, type: 'u32' },
  mode: { offset: 4, type: 'u8' },
  start: { offset: 5, type: 'u8' },
  backupReads: { offset: 6, type: 'u8' },
  reserved: { offset: 7, type: 'u8' },
  lockGeneration: { offset: 8, type: 'u64' },
  memoryBytes: { offset: 16, type: 'u64' },
  instret: { offset: 24, type: 'f64' },
  imageSha256: { offset: 32, type: { bytes: 32 } },
})
/** HELLO_REFUSED: this, then the reason text (UTF-8). */
export const RefusedBody = defineStruct({
  version: { offset: 0, type: 'u32' },
  reason: { offset: 4, type: 'u8' },
})
export const StateEndBody = defineStruct({
  instret: { offset: 0, type: 'f64' },
  hash: { offset: 8, type: { bytes: 32 } },
})
export const AckBody = defineStruct({
  received: { offset: 0, type: 'f64' },
  executed: { offset: 8, type: 'f64' },
  readsDone: { offset: 16, type: 'f64' },
})
export const HeartbeatBody = defineStruct({
  ms: { offset: 0, type: 'f64' },
})
export const ByeBody = defineStruct({
  reason: { offset: 0, type: 'u8' },
  instret: { offset: 8, type: 'f64' },
})
/** ERROR: this, then the text (UTF-8). */
export const ErrorBody = defineStruct({
  code: { offset: 0, type: 'u8' },
})

/** The most text (reason, error) a frame carries: a line for a log, not a payload. */
export const MAX_TEXT = 1024

const MODES: FtMode[] = ['replay', 'checkpoint', 'colo']
const STARTS: FtStart[] = ['boot', 'state']
const READS: FtBackupReads[] = ['disk', 'log']
const BYES: FtByeReason[] = ['handover', 'stop']
const REFUSALS: FtRefusal[] = ['version', 'image', 'memory', 'vm', 'generation', 'mode', 'other']

/** An enum's wire code: its index + 1 (0 is never valid, so a zeroed field is caught). */
const code = <T>(list: readonly T[], v: T, what: string): number => {
  const i = list.indexOf(v)
  if (i < 0) throw new FtProtocolError('BadPayload', `${what} ${JSON.stringify(v)} is not one of ${list.join(', ')}`)
  return i + 1
}
const named = <T>(list: readonly T[], c: number, what: string): T => {
  const v = list[c - 1]
  if (v === undefined) throw new FtProtocolError('BadPayload', `${what} code ${c} is not one of 1..${list.length}`)
  return v
}

/** An instruction count, a horizon or a clock reading: finite and not negative. */
const count = (v: number, what: string): number => {
  if (!Number.isFinite(v) || v < 0) throw new FtProtocolError('BadPayload', `${what} ${v} is not a count (finite, ≥ 0)`)
  return v
}
const integer = (v: number, what: string): number => {
  if (!Number.isSafeInteger(v) || v < 0) throw new FtProtocolError('BadPayload', `${what} ${v} is not an integer in 0..2^53`)
  return v
}
const sha = (b: Buffer, what: string): Buffer => {
  if (b.length !== 32) throw new FtProtocolError('BadPayload', `${what} is ${b.length} bytes, not 32`)
  return b
}

const utf8 = new TextDecoder('utf-8', { fatal: true })
function textOf(b: Buffer, what: string): string {
  if (b.length > MAX_TEXT) throw new FtProtocolError('BadPayload', `${what} is ${b.length} bytes (at most ${MAX_TEXT})`)
  try {
    return utf8.decode(b)
  } catch {
    throw new FtProtocolError('BadPayload', `${what} is not UTF-8`)
  }
}
/** Text to send: cut to MAX_TEXT bytes (whole characters), so a long reason never fails a send. */
function textBytes(s: string): Buffer {
  let b = Buffer.from(s, 'utf8')
  while (b.length > MAX_TEXT) b = Buffer.from((s = s.slice(0, -1)), 'utf8')
  return b
}

/** A fixed struct then variable bytes. */
function withTail<T extends FieldTable>(s: Struct<T>, v: Decoded<T>, tail: Buffer): Buffer {
  const out = Buffer.alloc(s.size + tail.length)
  s.encode(v, out)
  tail.copy(out, s.size)
  return out
}
function fixed<T extends FieldTable>(s: Struct<T>, p: Buffer, type: FtType, exact = true): Decoded<T> {
  if (exact ? p.length !== s.size : p.length < s.size) {
    throw new FtProtocolError('BadLength', `${type} payload is ${p.length} bytes, ${exact ? '' : 'at least '}${s.size} expected`)
  }
  return s.decode(p)
}

function encodeHello(m: FtHelloParams): Buffer {
  const name = Buffer.from(m.vm, 'utf8')
  return withTail(
    HelloBody,
    {
      version: m.version,
      mode: code(MODES, m.mode, 'mode'),
      start: code(STARTS, m.start, 'start'),
      backupReads: code(READS, m.backupReads, 'backup reads'),
      reserved: 0,
      lockGeneration: integer(m.lockGeneration, 'lock generation'),
      memoryBytes: integer(m.memoryBytes, 'memory bytes'),
      instret: count(m.instret, 'instret'),
      imageSha256: sha(m.imageSha256, 'image SHA-256'),
    },
    name,
  )
}
function decodeHello(p: Buffer, type: FtType): FtHelloParams {
  const h = fixed(HelloBody, p, type, false)
  if (h.reserved !== 0) throw new FtProtocolError('BadPayload', `${type} reserved byte is ${h.reserved}, not 0`)
  let vm: string
  try {
    vm = validVmName(textOf(p.subarray(HelloBody.size), `${type} VM name`))
  } catch (e) {
    if (e instanceof StorageError) throw new FtProtocolError('BadPayload', `${type}: ${e.message}`)
    throw e
  }
  return {
    version: h.version,
    vm,
    mode: named(MODES, h.mode, 'mode'),
    lockGeneration: integer(h.lockGeneration, 'lock generation'),
    memoryBytes: integer(h.memoryBytes, 'memory bytes'),
    imageSha256: h.imageSha256,
    start: named(STARTS, h.start, 'start'),
    backupReads: named(READS, h.backupReads, 'backup reads'),
    instret: count(h.instret, 'instret'),
  }
}

/** How each message's payload is written and read (SPEC.md §Messages). */
const CODECS: { [T in FtType]: { encode(m: FtMessageOf<T>): Buffer; decode(p: Buffer): FtMessageOf<T> } } = {
  HELLO: { encode: encodeHello, decode: (p) => ({ type: 'HELLO', ...decodeHello(p, 'HELLO') }) },
  HELLO_OK: { encode: encodeHello, decode: (p) => ({ type: 'HELLO_OK', ...decodeHello(p, 'HELLO_OK') }) },
  HELLO_REFUSED: {
    encode: (m) => withTail(RefusedBody, { version: m.version, reason: code(REFUSALS, m.reason, 'refusal') }, textBytes(m.text)),
    decode: (p) => {
      const r = fixed(RefusedBody, p, 'HELLO_REFUSED', false)
      return { type: 'HELLO_REFUSED', version: r.version, reason: named(REFUSALS, r.reason, 'refusal'), text: textOf(p.subarray(RefusedBody.size), 'refusal text') }
    },
  },
  STATE: { encode: (m) => m.data, decode: (p) => ({ type: 'STATE', data: p }) },
  STATE_END: {
    encode: (m) => StateEndBody.encode({ instret: count(m.instret, 'instret'), hash: sha(m.hash, 'state hash') }),
    decode: (p) => {
      const s = fixed(StateEndBody, p, 'STATE_END')
      return { type: 'STATE_END', instret: count(s.instret, 'instret'), hash: s.hash }
    },
  },
  LOG: { encode: (m) => m.records, decode: (p) => ({ type: 'LOG', records: p }) },
  COLO: { encode: (m) => m.data, decode: (p) => ({ type: 'COLO', data: p }) },
  FEEDBACK: { encode: (m) => m.data, decode: (p) => ({ type: 'FEEDBACK', data: p }) },
  // the most frequent frame (a pair's backup sends hundreds a second): its three fields read and
  // written directly (AckBody's layout), not through the generic struct codec
  ACK: {
    encode: (m) => {
      const b = Buffer.allocUnsafe(AckBody.size)
      b.writeDoubleLE(count(m.received, 'received'), 0)
      b.writeDoubleLE(count(m.executed, 'executed'), 8)
      b.writeDoubleLE(count(m.readsDone, 'readsDone'), 16)
      return b
    },
    decode: (p) => {
      if (p.length !== AckBody.size) throw new FtProtocolError('BadLength', `ACK payload is ${p.length} bytes, ${AckBody.size} expected`)
      return { type: 'ACK', received: count(p.readDoubleLE(0), 'received'), executed: count(p.readDoubleLE(8), 'executed'), readsDone: count(p.readDoubleLE(16), 'readsDone') }
    },
  },
  HEARTBEAT: {
    encode: (m) => HeartbeatBody.encode({ ms: count(m.ms, 'heartbeat ms') }),
    decode: (p) => ({ type: 'HEARTBEAT', ms: count(fixed(HeartbeatBody, p, 'HEARTBEAT').ms, 'heartbeat ms') }),
  },
  BYE: {
    encode: (m) => ByeBody.encode({ reason: code(BYES, m.reason, 'BYE reason'), instret: count(m.instret, 'instret') }),
    decode: (p) => {
      const b = fixed(ByeBody, p, 'BYE')
      if (p.subarray(1, 8).some((x) => x !== 0)) throw new FtProtocolError('BadPayload', 'BYE bytes 1-7 are not 0')
      return { type: 'BYE', reason: named(BYES, b.reason, 'BYE reason'), instret: count(b.instret, 'instret') }
    },
  },
  ERROR: {
    encode: (m) => withTail(ErrorBody, { code: code(ERROR_CODES, m.code, 'error code') }, textBytes(m.text)),
    decode: (p) => {
      const e = fixed(ErrorBody, p, 'ERROR', false)
      return { type: 'ERROR', code: named(ERROR_CODES, e.code, 'error code'), text: textOf(p.subarray(ErrorBody.size), 'error text') }
    },
  },
}

/** Encodes one message as a whole frame. Throws FtProtocolError for a value it cannot carry. */
export function encodeFrame(m: FtMessage): Buffer {
  const payload = (CODECS[m.type] as { encode(m: FtMessage): Buffer }).encode(m)
  if (payload.length > MAX_PAYLOAD) throw new FtProtocolError('BadLength', `${m.type} payload is ${payload.length} bytes (at most ${MAX_PAYLOAD})`)
  const out = Buffer.allocUnsafe(FRAME_OVERHEAD + payload.length)
  // FrameHead, written directly (every frame passes here)
  out.writeUInt32LE(payload.length, 0)
  out[4] = FT_TYPE[m.type]
  out[5] = 0
  out.writeUInt16LE(0, 6)
  payload.copy(out, HEAD_BYTES)
  const end = HEAD_BYTES + payload.length
  out.writeUInt32LE(crc32c(out.subarray(0, end)), end)
  return out
}

/**
 * Checks a frame header (the first HEAD_BYTES of `buf`) as soon as it is in, before its payload:
 * a bad length, type, flags or reserved field is refused without waiting for up to 16 MiB.
 */
function checkHead(buf: Buffer): { type: FtType; length: number } {
  // FrameHead's fields, read directly (every frame passes here)
  const length = buf.readUInt32LE(0)
  if (length > MAX_PAYLOAD) throw new FtProtocolError('BadLength', `frame payload length ${length} is above the ${MAX_PAYLOAD}-byte bound`)
  const type = TYPE_NAME.get(buf[4])
  if (type === undefined) throw new FtProtocolError('BadType', `unknown frame type ${buf[4]}`)
  if (buf[5] !== 0) throw new FtProtocolError('BadFlags', `${type} frame has flags 0x${buf[5].toString(16)} (version ${FT_VERSION} defines none)`)
  const reserved = buf.readUInt16LE(6)
  if (reserved !== 0) throw new FtProtocolError('BadReserved', `${type} frame reserved field is ${reserved}, not 0`)
  return { type, length }
}

/** Decodes one whole frame (exactly its bytes). */
export function decodeFrame(frame: Buffer): FtMessage {
  if (frame.length < FRAME_OVERHEAD) throw new FtProtocolError('Truncated', `a frame is at least ${FRAME_OVERHEAD} bytes, got ${frame.length}`)
  const { type, length } = checkHead(frame)
  if (frame.length !== FRAME_OVERHEAD + length) throw new FtProtocolError('BadLength', `${type} frame is ${frame.length} bytes, its header says ${FRAME_OVERHEAD + length}`)
  return decodeChecked(frame, type, length)
}

/** A whole frame whose header checkHead has passed (`type`, `length`): its CRC checked, its payload decoded. */
function decodeChecked(frame: Buffer, type: FtType, length: number): FtMessage {
  const end = HEAD_BYTES + length
  const want = frame.readUInt32LE(end)
  const got = crc32c(frame.subarray(0, end))
  if (want !== got) throw new FtProtocolError('BadCrc', `${type} frame CRC-32C is 0x${want.toString(16)}, computed 0x${got.toString(16)}`)
  return CODECS[type].decode(frame.subarray(HEAD_BYTES, end))
}

/**
 * Splits a byte stream, cut anywhere, into messages. After a BYE any further byte is an error
 * (AfterBye); after an error every push throws it again. Payload buffers (LOG, STATE) may share
 * memory with the pushed chunks, which the caller must not reuse.
 */
export class FrameDecoder {
  private chunks: Buffer[] = []
  private length = 0
  /** the current frame's size and type, once its header is in */
  private need = 0
  private needType: FtType = 'HELLO'
  private failed: FtProtocolError | null = null
  private bye = false

  /** `onFrame` hears of each whole frame that passed its checks (type, bytes on the wire): counters, liveness */
  constructor(private readonly onFrame?: (type: FtType, bytes: number) => void) {}

  /** bytes held: a frame not yet complete */
  get buffered(): number {
    return this.length
  }

  /**
   * The messages completed by this chunk, in order. Throws FtProtocolError on a broken stream,
   * with the messages completed before the break in `decoded`.
   */
  push(chunk: Buffer): FtMessage[] {
    if (this.failed) throw this.failed
    const out: FtMessage[] = []
    try {
      if (chunk.length && this.bye) throw new FtProtocolError('AfterBye', `${chunk.length} bytes after BYE`)
      if (chunk.length) {
        this.chunks.push(chunk)
        this.length += chunk.length
      }
      for (;;) {
        if (this.need === 0) {
          if (this.length < HEAD_BYTES) break
          const h = checkHead(this.take(HEAD_BYTES, false))
          this.need = FRAME_OVERHEAD + h.length
          this.needType = h.type
        }
        if (this.length < this.need) break
        const m = decodeChecked(this.take(this.need, true), this.needType, this.need - FRAME_OVERHEAD)
        this.onFrame?.(m.type, this.need)
        this.need = 0
        out.push(m)
        if (m.type === 'BYE') {
          this.bye = true
          if (this.length) throw new FtProtocolError('AfterBye', `${this.length} bytes after BYE`)
        }
      }
    } catch (e) {
      if (!(e instanceof FtProtocolError)) throw e
      e.decoded = out
      this.failed = e
      this.chunks = []
      this.length = 0
      throw e
    }
    return out
  }

  /** The stream ended: throws Truncated when it ended inside a frame. */
  end(): void {
    if (this.failed) throw this.failed
    if (this.length) throw (this.failed = new FtProtocolError('Truncated', `the stream ended ${this.length} bytes into a frame`))
  }

  /** The first n bytes as one buffer; `consume` removes them. */
  private take(n: number, consume: boolean): Buffer {
    let out: Buffer
    if (this.chunks[0].length >= n) out = this.chunks[0].subarray(0, n)
    else {
      const all = Buffer.concat(this.chunks, this.length)
      this.chunks = [all]
      out = all.subarray(0, n)
    }
    if (consume) {
      const first = this.chunks[0]
      if (first.length === n) this.chunks.shift()
      else this.chunks[0] = first.subarray(n)
      this.length -= n
    }
    return out
  }
}

import { crc32c } from '../../disk-formats/crc32c.js'
import { defineStruct } from '../../disk-formats/struct.js'

/**
 * The event log of a recorded run (SPEC.md §Event log). Every non-deterministic input is a
 * record at an exact retired-instruction count:
 *
 *   file   = header record* [close]
 *   header = "TNDMVLOG" u32 version(2; 1 still read) u32 memoryBytes 32 imageSha256   (48 bytes)
 *   record = u8 kind  u8 arg  u16 extraLength  f64 instret  u32 value
 *            extra (extraLength bytes, padded to 4)  u32 crc32c(all the record before it)
 *            (20 bytes with no extra: every kind but NET)
 *
 * Values read by the guest (time, entropy, RTC) are replayed from the log; interrupts and disk
 * completions are delivered at the logged count; the disk's data comes from the disk itself.
 * The close mark (version 2) is the writer's last record: the log is complete, a follower stops
 * waiting for more. Readers never hand it to the machine.
 */
export const EVENT = {
  /** a 32-bit read of the timer (arg: 0 mtime low, 1 mtime high, 2 time CSR, 3 timeh CSR) */
  TIME: 1,
  /** a 32-bit read of the entropy register */
  ENTROPY: 2,
  /** a 32-bit read of the real-time clock (arg: 0 low, 1 high) */
  RTC: 3,
  /** an interrupt-pending bit changes (arg: irq number, value: 0 or 1) */
  IRQ: 4,
  /** disk requests complete (value: how many, in submission order) */
  DISK: 5,
  /** the end of the run (arg 0: the guest exited, value: its exit code; arg 1: stopped by the host) */
  END: 6,
  /** a frame arrives at the NIC (value: its length; extra: the frame) */
  NET: 7,
} as const
export type EventKind = (typeof EVENT)[keyof typeof EVENT] | (typeof FT_MARK)[keyof typeof FT_MARK]
export const EVENT_NAMES: Record<number, string> = { 1: 'time read', 2: 'entropy read', 3: 'clock read', 4: 'interrupt', 5: 'disk completion', 6: 'end of run', 7: 'network frame', 9: 'progress mark', 10: 'disk result', 11: 'disk data', 12: 'release mark' }
/** the largest frame a NET record carries (a bound on the extra length read from a log) */
export const MAX_FRAME = 2048

/**
 * Records of a fault-tolerant pair's log stream (src/client/ft/SPEC.md): the primary writes them,
 * the backup's machine uses DISKRESULT and DISKDATA; PROGRESS and RELEASED are marks for the
 * follower, never handed to the machine.
 */
export const FT_MARK = {
  /**
   * every record below this instruction count is logged (instret: the count; extra: the guest's
   * mtime there, u64, and the primary's clock in ms, f64)
   */
  PROGRESS: 9,
  /** a disk request's outcome, logged just before the DISK record that completes it (arg: SCSI status, value: its request number; extra: sense) */
  DISKRESULT: 10,
  /** read data shipped in the log (`--backup-reads log`), before its DISKRESULT (value: request number; extra: the next bytes) */
  DISKDATA: 11,
  /** outputs produced below a count have left the primary (extra: that count, f64) */
  RELEASED: 12,
} as const
/** the bytes of a DISKDATA record's extra at most (a read is split into as many as it takes) */
export const MAX_DISK_DATA = 60 * 1024
/** each kind's bound on the extra length read from a log */
const MAX_EXTRA: Record<number, number> = { [EVENT.NET]: MAX_FRAME, [FT_MARK.PROGRESS]: 16, [FT_MARK.DISKRESULT]: 252, [FT_MARK.DISKDATA]: MAX_DISK_DATA, [FT_MARK.RELEASED]: 8 }

/**
 * The close mark: the writer closed the log, nothing follows (arg 0, value: the records before it,
 * instret: the last record's). Not an event: a reader checks it and stops there.
 */
export const LOG_CLOSE = 8

export const LOG_MAGIC = 'TNDMVLOG'
/** written; version 1 (no close mark) is still read */
export const LOG_VERSION = 2
const READABLE_VERSIONS = [1, 2]

/** The log's header (SPEC.md §Determinism and the event log). */
export const LogHeader = defineStruct({
  magic: { offset: 0, type: { bytes: 8 } },
  version: { offset: 8, type: 'u32' },
  memoryBytes: { offset: 12, type: 'u32' },
  imageSha256: { offset: 16, type: { bytes: 32 } },
})
/**
 * A record's fixed part; its extra bytes (zero-padded to 4) follow, then the CRC-32C of all the
 * record before it.
 */
export const RecordHead = defineStruct({
  kind: { offset: 0, type: 'u8' },
  arg: { offset: 1, type: 'u8' },
  extraLength: { offset: 2, type: 'u16' },
  instret: { offset: 4, type: 'f64' },
  value: { offset: 12, type: 'u32' },
})
export const HEADER_BYTES = LogHeader.size
export const CRC_BYTES = 4
/** a record with no extra bytes */
export const RECORD_BYTES = RecordHead.size + CRC_BYTES

export interface LogEvent {
  kind: number
  arg: number
  instret: number
  value: number
  extra?: Buffer
}

/** A replay that cannot go on: the log and the guest disagree, or the log is damaged. */
export class ReplayError extends Error {
  constructor(
    message: string,
    readonly instret: number,
  ) {
    super(message)
    this.name = 'ReplayError'
  }
}

export function encodeHeader(memoryBytes: number, imageSha: Buffer): Buffer {
  return LogHeader.encode({ magic: Buffer.from(LOG_MAGIC, 'latin1'), version: LOG_VERSION, memoryBytes, imageSha256: imageSha })
}

const padded = (n: number) => (n + 3) & ~3

/** Bytes a record takes. */
export const recordBytes = (extraLength: number) => RECORD_BYTES + padded(extraLength)

/** RecordHead's offsets, for the encoder on the recording's hot path */
const AT = { kind: RecordHead.fields.kind.offset, arg: RecordHead.fields.arg.offset, extraLength: RecordHead.fields.extraLength.offset, instret: RecordHead.fields.instret.offset, value: RecordHead.fields.value.offset }
const F64 = new Float64Array(1)
const F64_BYTES = new Uint8Array(F64.buffer)
/** the host's byte order for F64_BYTES (the log's f64 is little-endian) */
const F64_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1
const NO_EXTRA = Buffer.alloc(0)

/**
 * Encodes one record at `into[at]` (room for recordBytes(extra.length) checked by the caller);
 * returns its size. A recording encodes one per device read or interrupt, in a process that has
 * barely started: the fields are stored byte by byte (no record object, no generic field writer,
 * no Buffer method's argument checks), which costs little before V8 has optimized anything.
 */
export function encodeRecord(into: Buffer, at: number, kind: number, arg: number, instret: number, value: number, extra: Buffer = NO_EXTRA): number {
  const len = extra.length
  into[at + AT.kind] = kind
  into[at + AT.arg] = arg
  into[at + AT.extraLength] = len
  into[at + AT.extraLength + 1] = len >>> 8
  F64[0] = instret
  const t = at + AT.instret
  if (F64_LE) {
    into[t] = F64_BYTES[0]
    into[t + 1] = F64_BYTES[1]
    into[t + 2] = F64_BYTES[2]
    into[t + 3] = F64_BYTES[3]
    into[t + 4] = F64_BYTES[4]
    into[t + 5] = F64_BYTES[5]
    into[t + 6] = F64_BYTES[6]
    into[t + 7] = F64_BYTES[7]
  } else for (let i = 0; i < 8; i++) into[t + i] = F64_BYTES[7 - i]
  const v = at + AT.value
  into[v] = value
  into[v + 1] = value >>> 8
  into[v + 2] = value >>> 16
  into[v + 3] = value >>> 24
  const start = at + RecordHead.size
  const end = start + padded(len)
  if (len) extra.copy(into, start)
  if (end > start + len) into.fill(0, start + len, end)
  // over a range, not a subarray: no Buffer made, and V8 optimizes this function in about half the time
  const crc = crc32c(into, 0, at, end)
  into[end] = crc
  into[end + 1] = crc >>> 8
  into[end + 2] = crc >>> 16
  into[end + 3] = crc >>> 24
  return end + CRC_BYTES - at
}

/** A record's fields read byte by byte, as encodeRecord writes them (a replay reads one per record). */
const u32At = (b: Buffer, o: number) => (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0
const extraLengthAt = (b: Buffer, at: number) => b[at + AT.extraLength] | (b[at + AT.extraLength + 1] << 8)
function instretAt(b: Buffer, at: number): number {
  const t = at + AT.instret
  for (let i = 0; i < 8; i++) F64_BYTES[F64_LE ? i : 7 - i] = b[t + i]
  return F64[0]
}

export function encodeEvent(e: LogEvent, into: Buffer, at: number): number {
  return encodeRecord(into, at, e.kind, e.arg, e.instret, e.value, e.extra)
}

/** What a replay expects of a log's header: the machine it was recorded on. */
export interface LogExpectation {
  memoryBytes: number
  imageSha: Buffer
}

/**
 * Checks a log's header (the first HEADER_BYTES of `b`): magic, version, then the machine.
 * Returns the version; throws a ReplayError naming the file.
 */
export function checkHeader(b: Buffer, file: string, expect?: LogExpectation): number {
  const notLog = () => new ReplayError(`'${file}' is not a Tandem VM event log (no ${LOG_MAGIC} header)`, 0)
  if (b.length < HEADER_BYTES) throw notLog()
  const h = LogHeader.decode(b)
  if (h.magic.toString('latin1') !== LOG_MAGIC) throw notLog()
  if (!READABLE_VERSIONS.includes(h.version)) throw new ReplayError(`'${file}': event log version ${h.version}, expected ${READABLE_VERSIONS.join(' or ')}`, 0)
  if (expect && h.memoryBytes !== expect.memoryBytes) throw new ReplayError(`'${file}' was recorded with ${h.memoryBytes} bytes of memory, this run has ${expect.memoryBytes}`, 0)
  if (expect && !h.imageSha256.equals(expect.imageSha)) throw new ReplayError(`'${file}' was recorded with a different guest image`, 0)
  return h.version
}

/** A record checked in place: its size, or why it is corrupt; null while it is incomplete. */
export type RecordCheck = { size: number; kind: number; instret: number; value: number } | { corrupt: string } | null

/**
 * Checks the record at `b[at]` (length, CRC, kind, order after `last`) without copying it. Every
 * reader goes through here, so a log is checked the same way whole or streamed.
 */
export function checkRecord(b: Buffer, at: number, end: number, last: number, version: number): RecordCheck {
  if (at + RECORD_BYTES > end) return null
  const kind = b[at + AT.kind]
  const extraLength = extraLengthAt(b, at)
  if (extraLength > (MAX_EXTRA[kind] ?? 0)) return { corrupt: `extra length ${extraLength}` }
  const size = recordBytes(extraLength)
  if (at + size > end) return null
  if (u32At(b, at + size - CRC_BYTES) !== crc32c(b, 0, at, at + size - CRC_BYTES)) return { corrupt: 'CRC mismatch' }
  const instret = instretAt(b, at)
  const known = EVENT_NAMES[kind] !== undefined || (kind === LOG_CLOSE && version >= 2)
  if (!Number.isSafeInteger(instret) || instret < last || !known) return { corrupt: `kind ${kind}, instruction ${instret}` }
  return { size, kind, instret, value: u32At(b, at + AT.value) }
}

/** The event of a record checkRecord passed (its extra bytes copied out of `b`). */
export function decodeEvent(b: Buffer, at: number): LogEvent {
  const extraLength = extraLengthAt(b, at)
  const e: LogEvent = { kind: b[at + AT.kind], arg: b[at + AT.arg], instret: instretAt(b, at), value: u32At(b, at + AT.value) }
  if (extraLength) e.extra = Buffer.from(b.subarray(at + RecordHead.size, at + RecordHead.size + extraLength))
  return e
}

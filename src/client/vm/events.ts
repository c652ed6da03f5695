import { readFile } from 'node:fs/promises'
import { crc32c } from '../../disk-formats/crc32c.js'
import { defineStruct } from '../../disk-formats/struct.js'

/**
 * The event log of a recorded run (SPEC.md §Event log). Every non-deterministic input is a
 * record at an exact retired-instruction count:
 *
 *   file   = header record*
 *   header = "TNDMVLOG" u32 version(1) u32 memoryBytes 32 imageSha256          (48 bytes)
 *   record = u8 kind  u8 arg  u16 extraLength  f64 instret  u32 value
 *            extra (extraLength bytes, padded to 4)  u32 crc32c(all the record before it)
 *            (20 bytes with no extra: every kind but NET)
 *
 * Values read by the guest (time, entropy, RTC) are replayed from the log; interrupts and disk
 * completions are delivered at the logged count; the disk's data comes from the disk itself.
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
export type EventKind = (typeof EVENT)[keyof typeof EVENT]
export const EVENT_NAMES: Record<number, string> = { 1: 'time read', 2: 'entropy read', 3: 'clock read', 4: 'interrupt', 5: 'disk completion', 6: 'end of run', 7: 'network frame' }
/** the largest frame a NET record carries (a bound on the extra length read from a log) */
export const MAX_FRAME = 2048

export const LOG_MAGIC = 'TNDMVLOG'
export const LOG_VERSION = 1

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
const CRC_BYTES = 4
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

export function encodeEvent(e: LogEvent, into: Buffer, at: number): number {
  const extra = e.extra ?? Buffer.alloc(0)
  RecordHead.encode({ kind: e.kind, arg: e.arg, extraLength: extra.length, instret: e.instret, value: e.value >>> 0 }, into, at)
  const start = at + RecordHead.size
  const end = start + padded(extra.length)
  extra.copy(into, start)
  into.fill(0, start + extra.length, end)
  into.writeUInt32LE(crc32c(into.subarray(at, end)), end)
  return end + CRC_BYTES - at
}

/** Collects events in memory; `bytes()` is the whole log. */
export class EventRecorder {
  private chunks: Buffer[] = []
  private cur = Buffer.alloc(RECORD_BYTES * 4096)
  private used = 0
  count = 0

  constructor(private readonly header: Buffer) {}

  add(kind: EventKind, arg: number, instret: number, value: number, extra?: Buffer): void {
    if (this.used + recordBytes(extra?.length ?? 0) > this.cur.length) {
      this.chunks.push(this.cur.subarray(0, this.used))
      this.cur = Buffer.alloc(this.cur.length)
      this.used = 0
    }
    this.used += encodeEvent({ kind, arg, instret, value, extra }, this.cur, this.used)
    this.count++
  }

  bytes(): Buffer {
    return Buffer.concat([this.header, ...this.chunks, this.cur.subarray(0, this.used)])
  }
}

/** Reads a log back, record by record, checking each one as it is reached. */
export class EventReplayer {
  private index = 0
  private offset = HEADER_BYTES
  private last = 0
  private peeked: { e: LogEvent; size: number } | null = null

  private constructor(
    private readonly buf: Buffer,
    readonly file: string,
  ) {}

  static async open(file: string, memoryBytes: number, imageSha: Buffer): Promise<EventReplayer> {
    let buf: Buffer
    try {
      buf = await readFile(file)
    } catch (e) {
      throw new ReplayError(`cannot read the replay log '${file}': ${(e as Error).message}`, 0)
    }
    if (buf.length < HEADER_BYTES) throw new ReplayError(`'${file}' is not a Tandem VM event log (no ${LOG_MAGIC} header)`, 0)
    const h = LogHeader.decode(buf)
    if (h.magic.toString('latin1') !== LOG_MAGIC) throw new ReplayError(`'${file}' is not a Tandem VM event log (no ${LOG_MAGIC} header)`, 0)
    if (h.version !== LOG_VERSION) throw new ReplayError(`'${file}': event log version ${h.version}, expected ${LOG_VERSION}`, 0)
    if (h.memoryBytes !== memoryBytes) throw new ReplayError(`'${file}' was recorded with ${h.memoryBytes} bytes of memory, this run has ${memoryBytes}`, 0)
    if (!h.imageSha256.equals(imageSha)) throw new ReplayError(`'${file}' was recorded with a different guest image`, 0)
    return new EventReplayer(buf, file)
  }

  /** The next event, checked (length, CRC, order), without consuming it; null at the end of the log. */
  peek(): LogEvent | null {
    if (this.peeked) return this.peeked.e
    const b = this.buf
    const at = this.offset
    if (at >= b.length) return null
    const corrupt = (why: string) => new ReplayError(`'${this.file}': record ${this.index} (byte ${at}) is corrupt (${why})`, this.last)
    if (at + RECORD_BYTES > b.length) return null // a partial record: the log was cut here
    const { kind, arg, extraLength, instret, value } = RecordHead.decode(b, at)
    if (extraLength > MAX_FRAME) throw corrupt(`extra length ${extraLength}`)
    const size = recordBytes(extraLength)
    if (at + size > b.length) return null
    if (b.readUInt32LE(at + size - CRC_BYTES) !== crc32c(b.subarray(at, at + size - CRC_BYTES))) throw corrupt('CRC mismatch')
    const e: LogEvent = { kind, arg, instret, value }
    if (extraLength) e.extra = Buffer.from(b.subarray(at + RecordHead.size, at + RecordHead.size + extraLength))
    if (!Number.isSafeInteger(e.instret) || e.instret < this.last || !EVENT_NAMES[e.kind]) throw corrupt(`kind ${e.kind}, instruction ${e.instret}`)
    this.peeked = { e, size }
    return e
  }

  next(): LogEvent | null {
    const e = this.peek()
    if (e && this.peeked) {
      this.offset += this.peeked.size
      this.last = e.instret
      this.index++
      this.peeked = null
    }
    return e
  }

  /** records consumed so far */
  get position(): number {
    return this.index
  }
}

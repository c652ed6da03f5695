import { closeSync, existsSync, fsyncSync, openSync, readFileSync, truncateSync, writeSync } from 'node:fs'
import { StorageError, fromSystemError } from '../../disk-formats/errors.js'

/** One line of the acknowledged-SET log: the VM answered OK to `SET key value`. */
export interface AckRecord {
  key: string
  value: string
  /** the load's sequence number: it increases over the log, across runs appending to it */
  seq: number
  /** ms since the epoch when the OK arrived */
  t: number
}

/** The value a load sends with sequence number `seq`: it names the key and the number. */
export const kvValue = (key: string, seq: number): string => `${key}@${seq}`

/** The sequence number of a value `kvValue(key, seq)` made, or undefined for any other value. */
export function valueSeq(key: string, value: string): number | undefined {
  if (!value.startsWith(key + '@')) return undefined
  const s = value.slice(key.length + 1)
  return /^\d{1,15}$/.test(s) ? Number(s) : undefined
}

export interface AckLogContents {
  records: AckRecord[]
  /** per key, its record with the highest seq */
  last: Map<string, AckRecord>
  maxSeq: number
  /** bytes of whole lines (a torn last line is past it) */
  wholeBytes: number
}

/**
 * Reads a log. A last line without its newline that does not parse is a line torn by a kill and
 * ignored; any other line that is not a record is Corrupt, naming the file and line.
 */
export function readAckLog(file: string): AckLogContents {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw fromSystemError(e, file, 'cannot read the acknowledged log')
  }
  const lines = text.split('\n')
  const records: AckRecord[] = []
  const last = new Map<string, AckRecord>()
  let maxSeq = 0
  let wholeBytes = 0
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] === '') {
      if (i < lines.length - 1) wholeBytes++
      continue
    }
    let r: AckRecord | undefined
    try {
      const v = JSON.parse(lines[i]) as Partial<AckRecord>
      if (typeof v.key === 'string' && typeof v.value === 'string' && Number.isSafeInteger(v.seq) && typeof v.t === 'number') r = v as AckRecord
    } catch {
      r = undefined
    }
    if (!r) {
      if (i === lines.length - 1) break // torn by a kill mid-write: never acknowledged to anyone
      throw new StorageError('Corrupt', `${file} line ${i + 1} is not an acknowledged SET ({"key","value","seq","t"})`, file)
    }
    wholeBytes += Buffer.byteLength(lines[i]) + 1
    records.push(r)
    maxSeq = Math.max(maxSeq, r.seq)
    const prev = last.get(r.key)
    if (!prev || r.seq > prev.seq) last.set(r.key, r)
  }
  return { records, last, maxSeq, wholeBytes: Math.min(wholeBytes, Buffer.byteLength(text)) }
}

/**
 * Appends records, each with one write(2) as its OK arrives: a killed client loses no line it
 * wrote (only a torn last line, never counted). fsync at close: a host crash may lose lines since.
 */
export class AckLog {
  private constructor(
    private readonly fd: number,
    readonly file: string,
    /** the next run's first seq: one above the log's highest */
    readonly nextSeq: number,
  ) {}

  /** Opens for appending; a torn last line a killed run left is cut off first. */
  static open(file: string): AckLog {
    let next = 1
    try {
      if (existsSync(file)) {
        const c = readAckLog(file)
        truncateSync(file, c.wholeBytes)
        next = c.maxSeq + 1
      }
      return new AckLog(openSync(file, 'a'), file, next)
    } catch (e) {
      throw fromSystemError(e, file, 'cannot open the acknowledged log')
    }
  }

  append(r: AckRecord): void {
    writeSync(this.fd, JSON.stringify(r) + '\n')
  }

  close(): void {
    try {
      fsyncSync(this.fd)
    } finally {
      closeSync(this.fd)
    }
  }
}

import { readFile } from 'node:fs/promises'
import { fileSize, openFile, preadFull } from '../../disk-formats/file-io.js'
import { realTimers, type Timers } from '../../server/net/timers.js'
import { EVENT, FT_MARK, HEADER_BYTES, LOG_CLOSE, RecordHead, ReplayError, checkHeader, checkRecord, decodeEvent, recordBytes, type LogEvent, type LogExpectation } from './event-format.js'

/**
 * A log read record by record as its bytes arrive: a whole file at once (`open`), a file another
 * process is still writing (`followEventLog`), or a socket (its data handler calls `push`).
 * Each record is checked (length, CRC, kind, order) before it is handed out, as it is reached.
 *
 * The log is complete (`ended`) once its producer ends the feed (`end()`), an END record or the close
 * mark (version 2) has arrived. Until then a partial record at the end is waited for: `peek()`
 * returns null and `more()` resolves when further records arrive.
 */
export class EventSource {
  private buf: Buffer = Buffer.alloc(0)
  /** file offset of buf[0] */
  private base = 0
  /** bytes of buf received */
  private fill = 0
  /** buf offset of the next record to hand out */
  private readAt = 0
  private index = 0
  private last = 0
  private peeked: { e: LogEvent; size: number } | null = null
  private version = 0
  /** every record before buf offset scanAt is checked; scanIndex of them in all; the last at scanLast */
  private scanAt = 0
  private scanIndex = 0
  private scanLast = 0
  /** the first corrupt record (at buf offset scanAt), found ahead of the reader */
  private damage: ReplayError | null = null
  /** buf offset of the close mark, once checked */
  private closeAt = -1
  private sawEnd = false
  private producerDone = false
  private feedError: ReplayError | null = null
  private headerError: ReplayError | null = null
  private waiters: { from: number; resolve: (more: boolean) => void; reject: (e: Error) => void }[] = []
  private headerWaiters: { resolve: () => void; reject: (e: Error) => void }[] = []

  /**
   * @param file names the log in messages
   * @param onWait called when the consumer waits for records (`more()`): a feed may read ahead now
   */
  constructor(
    readonly file: string,
    private readonly expect?: LogExpectation,
    private readonly onWait?: () => void,
  ) {}

  /** Reads a whole log file; its header must match the machine (as a replay checks it). */
  static async open(file: string, memoryBytes: number, imageSha: Buffer): Promise<EventSource> {
    let buf: Buffer
    try {
      buf = await readFile(file)
    } catch (e) {
      throw new ReplayError(`cannot read the replay log '${file}': ${(e as Error).message}`, 0)
    }
    const s = new EventSource(file, { memoryBytes, imageSha })
    s.push(buf)
    s.end()
    await s.header()
    return s
  }

  // ---- the producer's side -------------------------------------------------------------

  /** The next bytes of the log, in order (any split: half records, one byte at a time); `bytes` is kept, not copied, when nothing is buffered. */
  push(bytes: Buffer): void {
    if (this.producerDone || bytes.length === 0) return
    if (this.fill === 0 && this.buf.length === 0) {
      this.buf = bytes
      this.fill = bytes.length
    } else {
      if (this.fill + bytes.length > this.buf.length) this.compact(bytes.length)
      bytes.copy(this.buf, this.fill)
      this.fill += bytes.length
    }
    this.arrived()
  }

  /**
   * No more bytes will come (a partial record at the end is then a cut log: the records end before it).
   * With `cutFrom`, the records received at that instruction count or later are dropped too: a
   * fault-tolerant backup whose primary is gone replays to the last progress mark and no further.
   */
  end(cutFrom = Infinity): void {
    if (this.producerDone) return
    if (cutFrom !== Infinity && this.version > 0) {
      this.scan(Infinity)
      let at = this.readAt
      let n = this.index
      while (at < this.scanAt) {
        const h = RecordHead.decode(this.buf, at)
        if (h.instret >= cutFrom) break
        at += recordBytes(h.extraLength)
        n++
      }
      if (at < this.scanAt || this.damage || this.closeAt >= 0) {
        this.fill = this.scanAt = at
        this.scanIndex = n
        this.damage = null
        this.closeAt = -1
        this.sawEnd = false
        if (this.peeked && this.peeked.e.instret >= cutFrom) this.peeked = null
      }
    }
    this.producerDone = true
    this.arrived()
  }

  /** The feed failed: `more()` and `header()` reject with this, once the records received are used. */
  fail(e: Error): void {
    this.feedError = e instanceof ReplayError ? e : new ReplayError(`cannot read the replay log '${this.file}': ${e.message}`, this.last)
    this.producerDone = true
    this.arrived()
  }

  /** drops the records handed out; room for `extra` more bytes */
  private compact(extra: number): void {
    const keep = this.fill - this.readAt
    const next = Buffer.allocUnsafe(Math.max(2 * (keep + extra), 64 * 1024))
    this.buf.copy(next, 0, this.readAt, this.fill)
    this.buf = next
    this.base += this.readAt
    this.scanAt -= this.readAt
    if (this.closeAt >= 0) this.closeAt -= this.readAt
    this.fill = keep
    this.readAt = 0
  }

  private arrived(): void {
    if (this.version === 0 && !this.headerError && (this.fill >= HEADER_BYTES || this.producerDone)) {
      try {
        this.checkHeader()
      } catch (e) {
        this.headerError = e as ReplayError
      }
    }
    if (this.version > 0 || this.headerError) {
      for (const w of this.headerWaiters) this.headerError ? w.reject(this.headerError) : w.resolve()
      this.headerWaiters = []
    }
    if (!this.waiters.length) return
    if (this.version > 0) this.scan(Infinity)
    const keep: typeof this.waiters = []
    for (const w of this.waiters) {
      if (this.headerError) w.reject(this.headerError)
      else if (this.scanIndex > w.from || this.damage) w.resolve(true)
      else if (this.feedError) w.reject(this.feedError)
      else if (this.ended) w.resolve(false)
      else keep.push(w)
    }
    this.waiters = keep
  }

  // ---- the consumer's side -------------------------------------------------------------

  /** Resolves once the header has arrived and matches the machine; rejects with a ReplayError. */
  header(): Promise<void> {
    if (this.version > 0) return Promise.resolve()
    if (this.headerError) return Promise.reject(this.headerError)
    return new Promise((resolve, reject) => this.headerWaiters.push({ resolve, reject }))
  }

  private checkHeader(): void {
    if (this.fill < HEADER_BYTES && this.feedError) throw this.feedError
    this.version = checkHeader(this.buf.subarray(0, this.fill), this.file, this.expect)
    this.readAt = this.scanAt = HEADER_BYTES
  }

  /**
   * Checks records ahead of the reader, up to `window` bytes past it: a record is checked once,
   * and `horizon` knows the last one received.
   */
  private scan(window: number): void {
    const stop = Math.min(this.fill, this.readAt + window)
    while (this.scanAt < stop && !this.damage && this.closeAt < 0) {
      const r = checkRecord(this.buf, this.scanAt, this.fill, this.scanLast, this.version)
      if (r === null) return
      if ('corrupt' in r) {
        this.damage = new ReplayError(`'${this.file}': record ${this.scanIndex} (byte ${this.base + this.scanAt}) is corrupt (${r.corrupt})`, this.scanLast)
        return
      }
      if (r.kind === LOG_CLOSE) {
        if (r.value !== this.scanIndex) {
          this.damage = new ReplayError(`'${this.file}': the close mark counts ${r.value} records, the log has ${this.scanIndex}`, this.scanLast)
          return
        }
        this.closeAt = this.scanAt
        return
      }
      if (r.kind === EVENT.END) this.sawEnd = true
      this.scanAt += r.size
      this.scanIndex++
      this.scanLast = r.instret
    }
  }

  /** The next event, checked, without consuming it; null at the end of the records received so far. */
  peek(): LogEvent | null {
    if (this.peeked) return this.peeked.e
    if (this.headerError) throw this.headerError
    if (this.version === 0) return null
    const at = this.readAt
    if (at >= this.scanAt) this.scan(64 * 1024)
    if (at >= this.scanAt) {
      if (this.damage) throw this.damage
      return null
    }
    const e = decodeEvent(this.buf, at)
    const size = recordBytes(e.extra?.length ?? 0)
    if (e.kind === FT_MARK.PROGRESS || e.kind === FT_MARK.RELEASED) {
      // a mark for the follower, not an event: passed by
      this.readAt += size
      this.last = e.instret
      this.index++
      this.onMark?.(e)
      return this.peek()
    }
    this.peeked = { e, size }
    return e
  }

  /** Called with each PROGRESS and RELEASED mark as the reader passes it (a fault-tolerant backup). */
  onMark: ((e: LogEvent) => void) | null = null

  next(): LogEvent | null {
    const e = this.peek()
    if (e && this.peeked) {
      this.readAt += this.peeked.size
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

  /** No more records will arrive: the feed ended, or the END record or the close mark has arrived. */
  get ended(): boolean {
    if (this.producerDone || this.headerError) return true
    if (this.version > 0) this.scan(Infinity)
    return this.sawEnd || this.closeAt >= 0 || this.damage !== null
  }

  /**
   * Every record at an instruction count below this has arrived (Infinity once ended): a follower
   * may run the guest up to it, and deliver the records logged below it.
   */
  get horizon(): number {
    if (this.ended) return Infinity
    return this.scanLast
  }

  /**
   * Resolves true once a record beyond those received at the call arrives (or a corrupt one: peek
   * then throws), false once no more will (at once if the log is already complete); rejects with
   * the feed's error.
   */
  more(): Promise<boolean> {
    if (this.headerError) return Promise.reject(this.headerError)
    if (this.version > 0) this.scan(Infinity)
    const from = this.scanIndex
    if (this.damage) return Promise.resolve(true)
    if (this.ended) return this.feedError ? Promise.reject(this.feedError) : Promise.resolve(false)
    const p = new Promise<boolean>((resolve, reject) => this.waiters.push({ from, resolve, reject }))
    this.onWait?.()
    return p
  }

  /**
   * Resolves once every record at `instret` or below has arrived (horizon > instret) or the log is
   * complete; rejects with the feed's error. A follower awaits it before it delivers the records at
   * a count or executes the instruction at that count (whose read may be logged there).
   */
  async waitPast(instret: number): Promise<void> {
    while (!this.ended && this.horizon <= instret) await this.more()
  }

  /** bytes received and not yet consumed (what a feed bounds its read-ahead by) */
  get bufferedBytes(): number {
    return this.fill - this.readAt
  }
}

export interface FollowOptions {
  /** how often the file's size is looked at while there is nothing new (default 20 ms) */
  pollMs?: number
  /** read ahead at most this many bytes of records (default 1 MiB) */
  readAheadBytes?: number
  timers?: Timers
  /** stops following: the source ends where the file ends */
  signal?: AbortSignal
}

/**
 * Follows a log file another process is still writing: its records are read as they are appended
 * (the file's size is polled) until the log is complete (END, the close mark) or `signal` aborts.
 * Resolves once the header has arrived and matches; a file that does not exist is an error.
 */
export async function followEventLog(file: string, memoryBytes: number, imageSha: Buffer, o: FollowOptions = {}): Promise<EventSource> {
  const timers = o.timers ?? realTimers
  const pollMs = o.pollMs ?? 20
  const readAhead = o.readAheadBytes ?? 1 << 20
  let fh
  try {
    fh = await openFile(file, 'r')
  } catch (e) {
    throw new ReplayError(`cannot read the replay log '${file}': ${(e as Error).message}`, 0)
  }
  const idle: { timer: unknown; wake: (() => void) | null } = { timer: null, wake: null }
  const stop = () => idle.wake?.()
  const s = new EventSource(file, { memoryBytes, imageSha }, stop)
  let offset = 0
  o.signal?.addEventListener('abort', stop, { once: true })
  const pump = async () => {
    try {
      while (!s.ended && !o.signal?.aborted) {
        const room = readAhead - s.bufferedBytes
        const size = room > 0 ? await fileSize(fh, file) : offset
        if (size > offset) {
          const n = Math.min(size - offset, room)
          s.push(await preadFull(fh, file, offset, n))
          offset += n
          continue
        }
        if (o.signal?.aborted) break
        await new Promise<void>((resolve) => {
          idle.wake = resolve
          idle.timer = timers.setTimeout(resolve, pollMs)
        })
        timers.clearTimeout(idle.timer)
        idle.wake = null
      }
      s.end()
    } catch (e) {
      s.fail(e as Error)
    } finally {
      o.signal?.removeEventListener('abort', stop)
      await fh.close().catch(() => {})
    }
  }
  void pump()
  await s.header()
  return s
}

import type { FileHandle } from 'node:fs/promises'
import { datasync, openFile, pwriteFull } from '../../disk-formats/file-io.js'
import { realTimers, type Timers } from '../../server/net/timers.js'
import { LOG_CLOSE, MAX_FRAME, encodeRecord, recordBytes, type EventKind } from './event-format.js'

/**
 * Where a recording's events go, in order. `add` is synchronous (the machine calls it between
 * instructions); the rest is for the engine between run slices.
 */
export interface EventSink {
  add(kind: EventKind, arg: number, instret: number, value: number, extra?: Buffer): void
  /** events added */
  readonly count: number
  /** bytes added but not yet handed to the file or peer */
  readonly pendingBytes: number
  /**
   * Resolves once pendingBytes is at most half the sink's bound (at once when it already is);
   * rejects with a write error. An engine that awaits it between slices keeps memory bounded.
   */
  drain(): Promise<void>
  /** Resolves once every event added so far is written (not necessarily durable). */
  flush(): Promise<void>
  /** Ends the log with the close mark, writes it all, makes it durable; rejects with a write error. */
  close(): Promise<void>
}

/** the largest record: a chunk always has room for one */
const MAX_RECORD = recordBytes(MAX_FRAME)

/** Fills fixed-size chunks with encoded records; a full chunk is handed to `ship` (a file, later a socket). */
export abstract class ChunkedSink implements EventSink {
  count = 0
  private cur: Buffer
  private used = 0
  private lastInstret = 0
  protected closed = false

  constructor(protected readonly chunkBytes: number) {
    this.cur = Buffer.allocUnsafe(chunkBytes)
  }

  abstract readonly pendingBytes: number
  abstract drain(): Promise<void>
  abstract flush(): Promise<void>
  abstract close(): Promise<void>
  /** takes a chunk of whole records; the sink never writes into it again */
  protected abstract ship(chunk: Buffer): void

  add(kind: EventKind, arg: number, instret: number, value: number, extra?: Buffer): void {
    if (this.closed) throw new Error('event sink: add after close')
    this.put(kind, arg, instret, value, extra)
    this.count++
  }

  private put(kind: number, arg: number, instret: number, value: number, extra?: Buffer): void {
    const size = recordBytes(extra?.length ?? 0)
    if (this.used + size > this.cur.length) {
      this.cut()
      // a record bigger than what is left of the chunk (disk data): a buffer of its own
      if (size > this.cur.length) this.cur = Buffer.allocUnsafe(Math.max(this.chunkBytes, size))
    }
    this.used += encodeRecord(this.cur, this.used, kind, arg, instret, value, extra)
    this.lastInstret = instret
    this.onAdd()
  }

  /** called after each record is encoded */
  protected onAdd(): void {}

  /** bytes encoded but not yet shipped */
  protected get unshipped(): number {
    return this.used
  }

  /** Ships the records encoded so far; the rest of the chunk takes the next ones. */
  protected cut(): void {
    if (this.used) this.ship(this.cur.subarray(0, this.used))
    this.cur = this.cur.length - this.used >= MAX_RECORD ? this.cur.subarray(this.used) : this.newChunk()
    this.used = 0
  }

  /** A buffer for the next records (chunkBytes long); a sink may hand back one it has written. */
  protected newChunk(): Buffer {
    return Buffer.allocUnsafe(this.chunkBytes)
  }

  /** the memory the next records go to (an ArrayBuffer the sink may still be filling) */
  protected get filling(): ArrayBufferLike {
    return this.cur.buffer
  }

  /** Adds the close mark and ships the last records; later adds throw. */
  protected seal(): void {
    this.closed = true
    this.put(LOG_CLOSE, 0, this.lastInstret, this.count)
    this.cut()
  }
}

/** Keeps the whole log in memory (tests; a short recording); `bytes()` is the log so far. */
export class MemoryEventSink extends ChunkedSink {
  private readonly chunks: Buffer[]

  constructor(header: Buffer, chunkBytes = 64 * 1024) {
    super(chunkBytes)
    this.chunks = [header]
  }

  readonly pendingBytes = 0
  protected ship(chunk: Buffer): void {
    this.chunks.push(chunk)
  }
  async drain(): Promise<void> {}
  async flush(): Promise<void> {}
  async close(): Promise<void> {
    if (!this.closed) this.seal()
  }

  /** the log: header, records, and the close mark once closed */
  bytes(): Buffer {
    this.cut()
    return Buffer.concat(this.chunks)
  }
}

export interface FileSinkOptions {
  /** bytes per write (default 64 KiB) */
  chunkBytes?: number
  /** the most chunks waiting to be written before drain() waits (default 16) */
  maxChunks?: number
  /** a partial chunk is written this long after its first record (default 100 ms): how far a follower lags */
  flushMs?: number
  timers?: Timers
}

/**
 * Writes the log to a file while the run goes on: the header first, then chunks of records in
 * order, one write at a time (so the file is always a prefix of the log: a follower never sees a
 * hole), the close mark and an fdatasync at close. The first write error is kept: later events
 * are dropped, and drain, flush and close reject with it.
 */
export class FileEventSink extends ChunkedSink {
  private readonly queue: Buffer[] = []
  private queued = 0
  private offset = 0
  private writing = false
  private error: Error | null = null
  private waiters: { lowWater: number; resolve: () => void; reject: (e: Error) => void }[] = []
  private flushTimer: unknown = null
  /**
   * Chunk buffers of this sink's own whose records are all written, for the next records: the
   * sink's memory stays at a few chunks (a dropped one is freed only by a GC, and a recording
   * makes too little garbage for one to come soon).
   */
  private readonly spare: Buffer[] = []
  private readonly own = new WeakSet<ArrayBufferLike>()
  private readonly maxChunks: number
  private readonly flushMs: number
  private readonly timers: Timers

  private constructor(
    private readonly fh: FileHandle,
    readonly file: string,
    o: FileSinkOptions,
  ) {
    super(o.chunkBytes ?? 64 * 1024)
    this.maxChunks = o.maxChunks ?? 16
    this.flushMs = o.flushMs ?? 100
    this.timers = o.timers ?? realTimers
  }

  /** Creates (or truncates) `file` and writes `header` first. Throws a StorageError naming the file. */
  static async create(file: string, header: Buffer, o: FileSinkOptions = {}): Promise<FileEventSink> {
    const s = new FileEventSink(await openFile(file, 'w'), file, o)
    s.ship(header)
    return s
  }

  get pendingBytes(): number {
    return this.queued + this.unshipped
  }

  protected override onAdd(): void {
    if (this.flushTimer === null && !this.closed) this.flushTimer = this.timers.setTimeout(() => ((this.flushTimer = null), this.cut()), this.flushMs)
  }

  protected override newChunk(): Buffer {
    const b = this.spare.pop() ?? Buffer.allocUnsafeSlow(this.chunkBytes)
    this.own.add(b.buffer)
    return b
  }

  protected ship(chunk: Buffer): void {
    if (this.error) return
    this.queue.push(chunk)
    this.queued += chunk.length
    if (!this.writing) void this.pump()
  }

  private async pump(): Promise<void> {
    this.writing = true
    while (this.queue.length && !this.error) {
      const chunk = this.queue[0]
      try {
        await pwriteFull(this.fh, this.file, this.offset, chunk)
      } catch (e) {
        this.error = e as Error
        this.queue.length = 0
        this.queued = 0
        break
      }
      this.queue.shift()
      this.queued -= chunk.length
      this.offset += chunk.length
      // the last piece of one of the sink's buffers that it no longer fills: the buffer is free
      const mem = chunk.buffer
      if (this.own.has(mem) && this.queue[0]?.buffer !== mem && this.filling !== mem && this.spare.length < this.maxChunks) {
        this.own.delete(mem)
        this.spare.push(Buffer.from(mem, 0, this.chunkBytes))
      }
      this.wake()
    }
    this.writing = false
    this.wake()
  }

  /** settles the waiters whose mark is reached (all of them, rejected, after an error) */
  private wake(): void {
    const keep: typeof this.waiters = []
    for (const w of this.waiters) {
      if (this.error) w.reject(this.error)
      else if (this.queued <= w.lowWater) w.resolve()
      else keep.push(w)
    }
    this.waiters = keep
  }

  private until(lowWater: number): Promise<void> {
    if (this.error) return Promise.reject(this.error)
    if (this.queued <= lowWater) return Promise.resolve()
    return new Promise((resolve, reject) => this.waiters.push({ lowWater, resolve, reject }))
  }

  drain(): Promise<void> {
    const lowWater = (this.maxChunks * this.chunkBytes) / 2
    return this.pendingBytes <= lowWater ? (this.error ? Promise.reject(this.error) : Promise.resolve()) : this.until(lowWater)
  }

  flush(): Promise<void> {
    this.cut()
    return this.until(0)
  }

  async close(): Promise<void> {
    if (this.closed) return
    if (this.flushTimer !== null) this.timers.clearTimeout(this.flushTimer)
    this.flushTimer = null
    this.seal()
    try {
      await this.until(0)
      await datasync(this.fh, this.file)
    } finally {
      await this.fh.close()
    }
  }
}

import { EventEmitter } from 'node:events'
import { connect as tcpConnect, createServer, type Server, type Socket } from 'node:net'
import { realTimers, type Timers } from '../vm/timers.js'
import { FT_TYPES, FrameDecoder, FtProtocolError, encodeFrame, type FtErrorCode, type FtMessage, type FtMessageOf, type FtType } from './protocol.js'

/**
 * Heartbeat period: an idle sender sends HEARTBEAT this long after its last frame. 20 ms is the
 * architecture's idle PROGRESS period (ft-architecture §1.2); at 20 bytes a frame it costs 8 kbit/s.
 */
export const HEARTBEAT_MS = 20
/**
 * No frame for this long = the peer is lost. 300 ms is 15 heartbeat periods (a busy host's GC or
 * scheduling stall of ~100 ms does not trip it), and leaves 200 ms of a < 500 ms failover goal for
 * the claim on the lock record and go-live (ft-architecture §1.3–1.4).
 */
export const LOSS_MS = 300
/** send() returns false once the socket holds more than this (unsent bytes) */
export const HIGH_WATER_BYTES = 4 << 20
/** how long a closing channel waits for its last frame (ERROR, BYE) to go out before destroying the socket */
export const CLOSE_GRACE_MS = 1000

export interface FtChannelOptions {
  timers?: Timers
  heartbeatMs?: number
  lossMs?: number
  highWaterBytes?: number
}

/** How a channel ended: exactly one of these, once. */
export type FtEnd =
  /** the peer is gone: socket error or close, a bad frame either way, an ERROR from the peer, silence, or close() here */
  | { kind: 'lost'; reason: string; peerError?: { code: FtErrorCode; text: string } }
  /** a BYE, sent (`sent: true`, by bye()) or received: a clean end */
  | { kind: 'bye'; sent: boolean; bye: FtMessageOf<'BYE'> }

export interface FtCounts {
  bytes: number
  messages: number
  byType: Record<FtType, { bytes: number; messages: number }>
}

const counts = (): FtCounts => ({ bytes: 0, messages: 0, byType: Object.fromEntries(FT_TYPES.map((t) => [t, { bytes: 0, messages: 0 }])) as FtCounts['byType'] })

export interface FtChannel {
  on(event: 'message', fn: (m: FtMessage) => void): this
  on(event: 'lost', fn: (e: Extract<FtEnd, { kind: 'lost' }>) => void): this
  on(event: 'bye', fn: (e: Extract<FtEnd, { kind: 'bye' }>) => void): this
  on(event: 'end', fn: (e: FtEnd) => void): this
  once(event: 'message', fn: (m: FtMessage) => void): this
  once(event: 'lost', fn: (e: Extract<FtEnd, { kind: 'lost' }>) => void): this
  once(event: 'bye', fn: (e: Extract<FtEnd, { kind: 'bye' }>) => void): this
  once(event: 'end', fn: (e: FtEnd) => void): this
}

/**
 * One end of the FT log channel (SPEC.md §Channel) over a TCP socket with TCP_NODELAY. Messages
 * arrive as 'message' events (attach the listener in the turn the channel is handed over: no data
 * event comes before). The channel ends exactly once (`ended`; an 'end' event, and a 'lost' or
 * 'bye' one).
 */
export class FtChannel extends EventEmitter {
  /** resolves once, when the channel ends */
  readonly ended: Promise<FtEnd>
  /** resolves when the channel ends by a loss; never after a clean BYE */
  readonly lost: Promise<{ reason: string }>
  readonly sent = counts()
  readonly received = counts()
  private end: FtEnd | null = null
  private resolveEnded!: (e: FtEnd) => void
  private resolveLost!: (e: { reason: string }) => void
  private readonly decoder = new FrameDecoder((type, bytes) => {
    this.lastReceived = this.timers.now()
    this.count(this.received, type, bytes)
  })
  private readonly timers: Timers
  private readonly heartbeatMs: number
  private readonly lossMs: number
  private readonly highWater: number
  private readonly stop = new AbortController()
  private lastSent: number
  private lastReceived: number

  constructor(
    private readonly sock: Socket,
    o: FtChannelOptions = {},
  ) {
    super()
    this.timers = o.timers ?? realTimers
    this.heartbeatMs = o.heartbeatMs ?? HEARTBEAT_MS
    this.lossMs = o.lossMs ?? LOSS_MS
    this.highWater = o.highWaterBytes ?? HIGH_WATER_BYTES
    this.ended = new Promise((r) => (this.resolveEnded = r))
    this.lost = new Promise((r) => (this.resolveLost = r))
    this.lastSent = this.lastReceived = this.timers.now()
    sock.setNoDelay(true)
    sock.on('data', (d: Buffer) => this.onData(d))
    sock.on('end', () => this.finish({ kind: 'lost', reason: 'the peer closed the connection' }))
    sock.on('close', () => this.finish({ kind: 'lost', reason: 'the connection closed' }))
    sock.on('error', (e: NodeJS.ErrnoException) => this.finish({ kind: 'lost', reason: `socket error: ${e.code ?? e.message}` }))
    void this.heartbeats()
    void this.watch()
  }

  /** Connects to a backup's listener. Rejects with the socket's error (nothing to end yet). */
  static connect(o: FtChannelOptions & { host?: string; port: number }): Promise<FtChannel> {
    return new Promise((resolve, reject) => {
      const sock = tcpConnect({ host: o.host ?? '127.0.0.1', port: o.port })
      sock.once('error', reject)
      sock.once('connect', () => {
        sock.off('error', reject)
        resolve(new FtChannel(sock, o))
      })
    })
  }

  /** true once ended */
  get closed(): boolean {
    return this.end !== null
  }

  /** bytes written but not yet taken by the kernel */
  get bufferedBytes(): number {
    return this.sock.writableLength
  }

  /**
   * Sends a message. Returns false when the socket now holds more than the high-water mark: the
   * caller waits for `drained()` before sending more (the channel never drops a frame). After the
   * end, sends nothing and returns false. Throws FtProtocolError for a value a frame cannot carry.
   */
  send(m: FtMessage): boolean {
    const frame = encodeFrame(m)
    if (this.end) return false
    this.write(m.type, frame)
    return this.sock.writableLength <= this.highWater
  }

  /** Resolves once the socket's buffer is at most the high-water mark, or the channel ended. */
  drained(): Promise<void> {
    if (this.end || this.sock.writableLength <= this.highWater) return Promise.resolve()
    return new Promise((resolve) => {
      const done = () => {
        this.sock.off('drain', done)
        this.off('end', done)
        resolve()
      }
      this.sock.on('drain', done)
      this.on('end', done)
    })
  }

  /** The next message (or the next of `type`, skipping others); rejects with the end if it comes first. */
  next<T extends FtType>(type?: T): Promise<T extends FtType ? FtMessageOf<T> : FtMessage> {
    return new Promise((resolve, reject) => {
      if (this.end) return reject(endError(this.end))
      const on = (m: FtMessage) => {
        if (type !== undefined && m.type !== type) return
        this.off('message', on).off('end', end)
        resolve(m as T extends FtType ? FtMessageOf<T> : FtMessage)
      }
      const end = (e: FtEnd) => {
        this.off('message', on)
        reject(endError(e))
      }
      this.on('message', on).once('end', end)
    })
  }

  /** Sends BYE and ends the channel cleanly once it is written (or at once if already ended). */
  async bye(reason: FtMessageOf<'BYE'>['reason'], instret: number): Promise<void> {
    if (this.end) return
    const m: FtMessageOf<'BYE'> = { type: 'BYE', reason, instret }
    this.write('BYE', encodeFrame(m))
    this.finish({ kind: 'bye', sent: true, bye: m })
    await this.ended
  }

  /** Ends the channel here as a loss (`reason` is reported as given); nothing more is sent. */
  close(reason = 'closed here'): void {
    this.finish({ kind: 'lost', reason })
  }

  private write(type: FtType, frame: Buffer): void {
    this.sock.write(frame)
    this.lastSent = this.timers.now()
    this.count(this.sent, type, frame.length)
  }

  private count(c: FtCounts, type: FtType, bytes: number): void {
    c.bytes += bytes
    c.messages++
    c.byType[type].bytes += bytes
    c.byType[type].messages++
  }

  private onData(d: Buffer): void {
    if (this.end) return
    // bytes after lossMs of silence come too late, whether or not the watch has run yet (a process
    // resumed from SIGSTOP reads its socket before its timers): the peer may have taken over meanwhile
    if (this.timers.now() - this.lastReceived > this.lossMs) return this.finish({ kind: 'lost', reason: `no frame from the peer for ${this.lossMs} ms (data came after)` })
    let msgs: FtMessage[]
    let err: FtProtocolError | null = null
    try {
      msgs = this.decoder.push(d)
    } catch (e) {
      if (!(e instanceof FtProtocolError)) throw e
      err = e
      msgs = e.decoded
    }
    for (const m of msgs) {
      if (this.end) return
      if (m.type === 'ERROR') return this.finish({ kind: 'lost', reason: `the peer reported ${m.code}: ${m.text}`, peerError: { code: m.code, text: m.text } })
      if (m.type === 'BYE') return this.finish({ kind: 'bye', sent: false, bye: m })
      this.emit('message', m)
    }
    if (err && !this.end) {
      this.sendError(err.code, err.message)
      this.finish({ kind: 'lost', reason: `bad frame from the peer: ${err.code}: ${err.message}` })
    }
  }

  /** Best effort: an ERROR frame before closing (the peer learns why). */
  sendError(code: FtErrorCode, text: string): void {
    if (this.end) return
    this.write('ERROR', encodeFrame({ type: 'ERROR', code, text }))
  }

  private finish(e: FtEnd): void {
    if (this.end) return
    this.end = e
    this.stop.abort()
    // the last frames written (ERROR, BYE) go out first; a peer that does not read is cut after the grace
    closeSoon(this.sock, this.timers)
    this.resolveEnded(e)
    this.emit('end', e)
    if (e.kind === 'lost') {
      this.resolveLost({ reason: e.reason })
      this.emit('lost', e)
    } else this.emit('bye', e)
  }

  /** Sends HEARTBEAT whenever nothing was sent for heartbeatMs. */
  private async heartbeats(): Promise<void> {
    const signal = this.stop.signal
    while (!signal.aborted) {
      const wait = this.lastSent + this.heartbeatMs - this.timers.now()
      if (wait > 0) await this.timers.sleep(wait, signal)
      else this.send({ type: 'HEARTBEAT', ms: this.timers.now() })
    }
  }

  /** Ends the channel as lost when no frame arrived for lossMs. */
  private async watch(): Promise<void> {
    const signal = this.stop.signal
    while (!signal.aborted) {
      const wait = this.lastReceived + this.lossMs - this.timers.now()
      if (wait > 0) await this.timers.sleep(wait, signal)
      else this.finish({ kind: 'lost', reason: `no frame from the peer for ${this.lossMs} ms` })
    }
  }
}

/** Ends the socket after what was written; a peer that does not read is cut after CLOSE_GRACE_MS. */
function closeSoon(sock: Socket, timers: Timers): void {
  sock.end()
  const closed = new AbortController()
  sock.once('close', () => closed.abort())
  void timers.sleep(CLOSE_GRACE_MS, closed.signal).then(() => sock.destroy())
}

export class FtChannelEnded extends Error {
  override readonly name = 'FtChannelEnded'
  constructor(readonly end: FtEnd) {
    super(end.kind === 'lost' ? `FT channel lost: ${end.reason}` : `FT channel ended: BYE ${end.bye.reason}`)
  }
}
const endError = (e: FtEnd) => new FtChannelEnded(e)

export interface FtListener {
  on(event: 'channel', fn: (ch: FtChannel) => void): this
  once(event: 'channel', fn: (ch: FtChannel) => void): this
}

/**
 * A backup's listening socket: one primary at a time. A connection while a channel is open gets
 * ERROR Busy and is closed; once that channel ends, the next connection is taken.
 */
export class FtListener extends EventEmitter {
  /** the open channel, if any */
  current: FtChannel | null = null
  /** connections refused as busy */
  refused = 0
  /** every socket accepted and not yet closed (close() resets them) */
  private readonly socks = new Set<Socket>()
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {
    super()
  }

  static async listen(o: FtChannelOptions & { host?: string; port: number }): Promise<FtListener> {
    const server = createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(o.port, o.host ?? '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    const l = new FtListener(server, (server.address() as { port: number }).port)
    // an accept that fails (EMFILE) loses that connection only; the primary retries
    server.on('error', () => {})
    server.on('connection', (sock) => {
      l.socks.add(sock)
      sock.once('close', () => l.socks.delete(sock))
      if (l.current) {
        l.refused++
        sock.on('error', () => {})
        sock.write(encodeFrame({ type: 'ERROR', code: 'Busy', text: 'this backup already has a primary' }))
        closeSoon(sock, o.timers ?? realTimers)
        return
      }
      const ch = new FtChannel(sock, o)
      l.current = ch
      ch.once('end', () => {
        if (l.current === ch) l.current = null
      })
      l.emit('channel', ch)
    })
    return l
  }

  /** Stops listening, ends the open channel, if any (as lost: 'listener closed'), and resets every connection. */
  async close(): Promise<void> {
    this.current?.close('listener closed')
    const closed = new Promise<void>((r) => this.server.close(() => r()))
    for (const s of this.socks) s.destroy()
    await closed
  }
}

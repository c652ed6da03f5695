import { createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import { ByteQueue } from './byte-queue.js'
import { realTimers, type Timers } from './timers.js'

/** The peer went away or broke the framing: the connection ends, nothing else is affected. */
export class ProtocolError extends Error {}

/** Socket errors that only mean the peer is gone (or the connection is being closed by us). */
const PEER_GONE = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ERR_STREAM_WRITE_AFTER_END'])

/** A peer's reset or a broken pipe: logged at debug, never counted as a failure. */
export function isPeerGone(e: unknown): boolean {
  return PEER_GONE.has((e as NodeJS.ErrnoException)?.code ?? '')
}

/**
 * A socket read as exact-size chunks: TCP_NODELAY, backpressure, and one ProtocolError for every
 * way the peer can go away. `closed()` tells whether the socket is gone (a reset counts as gone).
 */
export function socketQueue(sock: Socket, limit?: number): { q: ByteQueue; closed: () => boolean } {
  let closed = false
  const q = new ByteQueue(
    () => sock.pause(),
    () => sock.resume(),
    limit,
  )
  sock.setNoDelay(true)
  sock.on('data', (d: Buffer) => q.push(d))
  sock.on('end', () => q.end(new ProtocolError('the peer closed the connection')))
  sock.on('close', () => {
    closed = true
    q.end(new ProtocolError('connection closed'))
  })
  sock.on('error', (e) => {
    if (!isPeerGone(e)) return q.end(e)
    closed = true
    q.end(new ProtocolError(`connection lost (${(e as NodeJS.ErrnoException).code})`))
  })
  return { q, closed: () => closed }
}

export interface TcpServiceOptions {
  /** the protocol, for logs: 'nbd', 'iscsi' */
  name: string
  log: Logger
  /** connections at once, established or not (0: no cap); one more is refused (`refuse`) */
  maxConnections?: number
  /** ms from accept until the connection must have called `established` (0: no limit) */
  handshakeMs?: number
  /**
   * Answers a connection over the cap, then ends it (default: close at once, nothing sent).
   * The service destroys it after REFUSE_MS whatever the peer does.
   */
  refuse?: (sock: Socket) => Promise<void>
  timers?: Timers
}

/** The limits `tandem serve` sets on each protocol. */
export type ConnectionLimits = Pick<TcpServiceOptions, 'maxConnections' | 'handshakeMs' | 'timers'>

/**
 * Runs one connection. Calls `established()` once its handshake or login is complete: from then
 * on the handshake limit no longer applies and a shutdown lets it finish its requests.
 */
export type ServeConnection = (sock: Socket, established: () => void) => Promise<void>

/** How long a refused connection may take to hear why (an iSCSI login reject) before it is cut. */
export const REFUSE_MS = 2000
/**
 * Refused connections being answered at once. One more evicts the oldest (closed without an
 * answer): a flood of idle sockets holds few descriptors, and an initiator whose login follows its
 * connect at once still hears why.
 */
const MAX_REFUSING = 16

interface Conn {
  sock: Socket
  established: boolean
  timer: unknown
}

/**
 * A TCP listener shared by NBD and iSCSI: a cap on connections, a time limit on handshakes, and a
 * bounded `close` that drains established connections.
 */
export class TcpService {
  private readonly server: Server
  private readonly conns = new Set<Conn>()
  private readonly refusing = new Set<Socket>()
  private readonly running = new Set<Promise<void>>()
  private readonly timers: Timers
  private closing = false
  /** connections refused since the cap was last reached (0: not at the cap) */
  private refused = 0

  constructor(
    serve: ServeConnection,
    private readonly o: TcpServiceOptions,
  ) {
    this.timers = o.timers ?? realTimers
    this.server = createServer((sock) => {
      const peer = { peer: sock.remoteAddress, port: sock.remotePort }
      sock.on('error', (e) => {
        if (isPeerGone(e)) o.log.debug({ ...peer, code: (e as NodeJS.ErrnoException).code }, `${o.name}: connection lost`)
      })
      if (this.closing) return void sock.destroy()
      if (o.maxConnections && this.conns.size >= o.maxConnections) return this.refuse(sock)
      if (this.refused > 0) {
        o.log.info({ refused: this.refused }, `${o.name}: below the connection limit again`)
        this.refused = 0
      }
      const c: Conn = { sock, established: false, timer: null }
      if (o.handshakeMs) c.timer = this.timers.setTimeout(() => this.handshakeExpired(c), o.handshakeMs)
      this.conns.add(c)
      const established = () => {
        c.established = true
        this.timers.clearTimeout(c.timer)
      }
      const run = serve(sock, established).finally(() => {
        this.timers.clearTimeout(c.timer)
        this.conns.delete(c)
        this.running.delete(run)
      })
      this.running.add(run)
    })
  }

  private handshakeExpired(c: Conn): void {
    if (c.established || c.sock.destroyed) return
    this.o.log.info({ peer: c.sock.remoteAddress, port: c.sock.remotePort, limitMs: this.o.handshakeMs }, `${this.o.name}: handshake not complete in time, closing the connection`)
    c.sock.destroy()
  }

  private refuse(sock: Socket): void {
    if (this.refused++ === 0) {
      this.o.log.warn({ maxConnections: this.o.maxConnections, peer: sock.remoteAddress }, `${this.o.name}: at the connection limit, refusing new connections`)
    }
    if (!this.o.refuse) return void sock.destroy()
    if (this.refusing.size >= MAX_REFUSING) {
      const oldest = this.refusing.values().next().value!
      this.refusing.delete(oldest)
      oldest.destroy()
    }
    this.refusing.add(sock)
    const cut = this.timers.setTimeout(() => sock.destroy(), Math.min(REFUSE_MS, this.o.handshakeMs || REFUSE_MS))
    sock.once('close', () => {
      this.timers.clearTimeout(cut)
      this.refusing.delete(sock)
    })
    this.o.refuse(sock).catch(() => sock.destroy())
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, host, () => {
        this.server.off('error', reject)
        const a = this.server.address()
        resolve(typeof a === 'object' && a ? a.port : port)
      })
    })
  }

  /** Connections open now (established or not), refused ones not counted. */
  get size(): number {
    return this.conns.size
  }

  /**
   * Stops accepting and cuts connections still in their handshake at once; asks established ones
   * to finish (their in-flight requests complete, the socket is ended), and destroys those still
   * there when `grace` resolves. Resolves when every connection's `serve` has returned.
   */
  async close(grace: Promise<void>): Promise<void> {
    this.closing = true
    // the callback of server.close waits for every connection: not awaited
    if (this.server.listening) this.server.close()
    for (const s of this.refusing) s.destroy()
    for (const c of this.conns) {
      this.timers.clearTimeout(c.timer)
      if (c.established) c.sock.end()
      else c.sock.destroy()
    }
    await Promise.race([Promise.all(this.running), grace])
    for (const c of this.conns) c.sock.destroy()
    await Promise.all(this.running)
  }
}

import { createServer, type Server, type Socket } from 'node:net'
import { ByteQueue } from './byte-queue.js'

/** The peer went away or broke the framing: the connection ends, nothing else is affected. */
export class ProtocolError extends Error {}

/**
 * A socket read as exact-size chunks: TCP_NODELAY, backpressure, and one ProtocolError for every
 * way the peer can go away. `closed()` tells whether the socket is gone.
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
  sock.on('error', (e) => q.end(e))
  return { q, closed: () => closed }
}

/** A TCP listener that tracks its connections, so `close` can drain them (shared by NBD and iSCSI). */
export class TcpService {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private readonly running = new Set<Promise<void>>()

  constructor(serve: (sock: Socket) => Promise<void>) {
    this.server = createServer((sock) => {
      this.sockets.add(sock)
      const run = serve(sock).finally(() => {
        this.sockets.delete(sock)
        this.running.delete(run)
      })
      this.running.add(run)
    })
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

  /** Stops accepting; asks clients to finish, then cuts those still there after two seconds. */
  async close(): Promise<void> {
    // the listener's callback comes only once every connection is gone: awaited last
    const stopped = new Promise<void>((r) => this.server.close(() => r()))
    for (const s of this.sockets) s.end()
    await Promise.race([Promise.all(this.running), new Promise((r) => setTimeout(r, 2000).unref())])
    for (const s of this.sockets) s.destroy()
    await Promise.all(this.running)
    await stopped
  }
}

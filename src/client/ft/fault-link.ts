import { connect, createServer, type Server, type Socket } from 'node:net'
import { realTimers, type Timers } from '../vm/timers.js'

export interface FaultLinkOptions {
  /** where connections go */
  target: { host?: string; port: number }
  /** where the link listens (default 127.0.0.1, an ephemeral port) */
  host?: string
  port?: number
  /** each chunk is held this long before it is passed on, order kept (default 0) */
  delayMs?: number
  timers?: Timers
}

/** One direction of one connection: chunks in order, each due at a time; `null` is the source's end. */
interface Pipe {
  from: Socket
  to: Socket
  queue: { due: number; data: Buffer | null }[]
  /** wakes the pump when a chunk arrives or the link resumes */
  wake: (() => void) | null
}

interface Conn {
  client: Socket
  upstream: Socket | null
  pipes: Pipe[]
  /** a partition: nothing passes either way and no close is passed on, for the connection's life */
  blackholed: boolean
}

/**
 * A user-space TCP proxy (no netem or iptables here; ft-architecture §1.6) that injects faults on a
 * link: a delay per chunk (order kept), a stall (nothing passes; held data and closes pass on
 * resume, like TCP retransmitting after a pause), a cut (both sides reset), a blackhole (a
 * partition: bytes vanish both ways and neither side sees the other close).
 */
export class FaultLink {
  /** per-chunk delay for chunks arriving from now on */
  delayMs: number
  /** connections accepted */
  connections = 0
  /** bytes passed on toward the target, and back toward the clients */
  upBytes = 0
  downBytes = 0
  /** bytes dropped by a blackhole */
  droppedBytes = 0
  private conns = new Set<Conn>()
  private stalled = false
  private holeNew = false
  private readonly timers: Timers

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly o: FaultLinkOptions,
  ) {
    this.delayMs = o.delayMs ?? 0
    this.timers = o.timers ?? realTimers
    server.on('connection', (s) => this.accept(s))
  }

  static async start(o: FaultLinkOptions): Promise<FaultLink> {
    // half-closes pass on as they are (each direction ends on its own)
    const server = createServer({ allowHalfOpen: true })
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    return new FaultLink(server, (server.address() as { port: number }).port, o)
  }

  /** Nothing passes either way until resume(); what arrives meanwhile is held, in order. */
  stall(): void {
    this.stalled = true
  }

  resume(): void {
    this.stalled = false
    for (const c of this.conns) for (const p of c.pipes) this.kick(p)
  }

  /** Resets every open connection, both sides (new ones still pass). */
  cut(): void {
    for (const c of [...this.conns]) this.drop(c)
  }

  /**
   * A partition: open connections and those accepted from now on pass nothing either way and pass
   * no close on, silently, until heal(). Bytes are lost, so a connection blackholed stays so for
   * its life (a byte stream with a hole cannot resume); heal() lets new connections through.
   */
  blackhole(): void {
    this.holeNew = true
    for (const c of this.conns) c.blackholed = true
  }

  heal(): void {
    this.holeNew = false
  }

  /** Stops listening and resets every connection. */
  async close(): Promise<void> {
    this.cut()
    await new Promise<void>((r) => this.server.close(() => r()))
  }

  private accept(client: Socket): void {
    this.connections++
    const c: Conn = { client, upstream: null, pipes: [], blackholed: this.holeNew }
    this.conns.add(c)
    client.on('error', () => {})
    if (c.blackholed) {
      // the target never hears of it: the client's bytes vanish
      client.on('data', (d: Buffer) => (this.droppedBytes += d.length))
      client.on('close', () => this.conns.delete(c))
      return
    }
    const upstream = connect({ host: this.o.target.host ?? '127.0.0.1', port: this.o.target.port, allowHalfOpen: true })
    c.upstream = upstream
    upstream.on('error', () => {})
    upstream.setNoDelay(true)
    client.setNoDelay(true)
    c.pipes = [this.pipe(c, client, upstream, 'up'), this.pipe(c, upstream, client, 'down')]
    let open = 2
    const gone = () => --open === 0 && this.conns.delete(c)
    client.on('close', gone)
    upstream.on('close', gone)
  }

  private pipe(c: Conn, from: Socket, to: Socket, dir: 'up' | 'down'): Pipe {
    const p: Pipe = { from, to, queue: [], wake: null }
    const arrive = (data: Buffer | null) => {
      if (c.blackholed) {
        if (data) this.droppedBytes += data.length
        return
      }
      p.queue.push({ due: this.timers.now() + this.delayMs, data })
      this.kick(p)
    }
    from.on('data', (d: Buffer) => arrive(d))
    from.on('end', () => arrive(null))
    // a reset (or error) on one side is passed on as a reset, unless partitioned or stalled (then held as an end)
    from.on('close', (hadError) => (hadError && !c.blackholed && !this.stalled ? this.drop(c) : arrive(null)))
    void this.pump(c, p, dir)
    return p
  }

  private kick(p: Pipe): void {
    const w = p.wake
    p.wake = null
    w?.()
  }

  /** Passes a pipe's chunks on, each at its due time, while the link is not stalled. */
  private async pump(c: Conn, p: Pipe, dir: 'up' | 'down'): Promise<void> {
    while (this.conns.has(c)) {
      const head = p.queue[0]
      if (!head || this.stalled || c.blackholed) {
        await new Promise<void>((r) => (p.wake = r))
        continue
      }
      const wait = head.due - this.timers.now()
      if (wait > 0) {
        await this.timers.sleep(wait)
        continue
      }
      p.queue.shift()
      if (head.data === null) {
        p.to.end()
        return
      }
      if (dir === 'up') this.upBytes += head.data.length
      else this.downBytes += head.data.length
      p.to.write(head.data)
    }
  }

  private drop(c: Conn): void {
    this.conns.delete(c)
    c.client.destroy()
    c.upstream?.destroy()
    for (const p of c.pipes) this.kick(p)
  }
}

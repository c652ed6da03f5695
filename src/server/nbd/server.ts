import { createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import type { Datastore } from '../datastore/index.js'
import type { Metrics } from '../metrics.js'
import { NbdConnection } from './connection.js'

/** The NBD server (fixed newstyle) over a datastore's exports. */
export class NbdServer {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private readonly running = new Set<Promise<void>>()

  constructor(ds: Datastore, log: Logger, metrics: Metrics) {
    this.server = createServer((sock) => {
      this.sockets.add(sock)
      metrics.connectionsTotal.inc({ protocol: 'nbd' })
      const run = new NbdConnection(sock, ds, log, metrics).run().finally(() => {
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

  /** Stops accepting, closes client connections once their in-flight requests are done. */
  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()))
    for (const s of this.sockets) s.end()
    await Promise.race([Promise.all(this.running), new Promise((r) => setTimeout(r, 2000).unref())])
    for (const s of this.sockets) s.destroy()
    await Promise.all(this.running)
  }
}

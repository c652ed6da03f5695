import type { Logger } from 'pino'
import type { Datastore } from '../datastore/index.js'
import type { Metrics } from '../metrics.js'
import { TcpService, type ConnectionLimits } from '../net/tcp-service.js'
import { NbdConnection } from './connection.js'
import type { NbdTls } from './tls.js'

/** The NBD server (fixed newstyle) over a datastore's exports; with `tls`, STARTTLS with TLS-PSK. */
export class NbdServer {
  private readonly tcp: TcpService

  /**
   * Over `limits.maxConnections` a new connection is closed at once with nothing sent: fixed
   * newstyle has no message for "busy" before the greeting, and hearing the client's first option
   * to answer it with an error would hold a descriptor for as long as the client takes.
   */
  constructor(ds: Datastore, log: Logger, metrics: Metrics, limits: ConnectionLimits = {}, tls?: NbdTls) {
    this.tcp = new TcpService(
      (sock, established) => {
        metrics.connectionsTotal.inc({ protocol: 'nbd' })
        return new NbdConnection(sock, ds, log, metrics, tls).run(established)
      },
      { name: 'nbd', log, ...limits },
    )
  }

  listen(port: number, host: string): Promise<number> {
    return this.tcp.listen(port, host)
  }

  /** See TcpService.close: established clients get until `grace` resolves. */
  close(grace: Promise<void>): Promise<void> {
    return this.tcp.close(grace)
  }
}

import type { Logger } from 'pino'
import type { Datastore } from '../datastore/index.js'
import type { Metrics } from '../metrics.js'
import { TcpService } from '../net/tcp-service.js'
import { NbdConnection } from './connection.js'
import type { NbdTls } from './tls.js'

/** The NBD server (fixed newstyle) over a datastore's exports; with `tls`, STARTTLS with TLS-PSK. */
export class NbdServer {
  private readonly tcp: TcpService

  constructor(ds: Datastore, log: Logger, metrics: Metrics, tls?: NbdTls) {
    this.tcp = new TcpService((sock) => {
      metrics.connectionsTotal.inc({ protocol: 'nbd' })
      return new NbdConnection(sock, ds, log, metrics, tls).run()
    })
  }

  listen(port: number, host: string): Promise<number> {
    return this.tcp.listen(port, host)
  }

  close(): Promise<void> {
    return this.tcp.close()
  }
}

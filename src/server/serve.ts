import { createServer, type Server as HttpServer } from 'node:http'
import { resolve } from 'node:path'
import { pino, type Logger } from 'pino'
import { Datastore } from './datastore/index.js'
import { createApp } from './http/app.js'
import { Metrics } from './metrics.js'
import { NbdServer } from './nbd/index.js'
import { IscsiServer } from './iscsi/index.js'
import { poller } from './net/poll.js'
import { openLockspaceView, type LockspaceView } from './locks.js'

export interface ServeOptions {
  datastore: string
  listen: string
  httpPort: number
  nbdPort: number
  iscsiPort: number
  logLevel?: string
  /** µs the event loop stays awake for a connection's next request after a QD1 reply (net/poll.ts); 0: off */
  pollUs?: number
  /** this server's host name in the datastore's lockspace (default `serve@<machine>`) */
  lockHost?: string
}

export interface RunningServer {
  ds: Datastore
  locks: LockspaceView
  httpPort: number
  nbdPort: number
  iscsiPort: number
  log: Logger
  close(): Promise<void>
}

/** Starts the NAS daemon: datastore, REST + metrics over HTTP, NBD. */
export async function serve(o: ServeOptions, log: Logger = pino({ level: o.logLevel ?? 'info' })): Promise<RunningServer> {
  if (o.pollUs !== undefined) poller.windowUs = o.pollUs
  const ds = await Datastore.open(resolve(o.datastore))
  const locks = await openLockspaceView(ds.dir, log.child({ component: 'locks' }), o.lockHost)
  ds.onWritable = (disk) => locks.holdDisk(disk)
  const metrics = new Metrics()
  const nbd = new NbdServer(ds, log.child({ component: 'nbd' }), metrics)
  const nbdPort = await nbd.listen(o.nbdPort, o.listen)
  const iscsi = new IscsiServer(ds, log.child({ component: 'iscsi' }), metrics)
  const iscsiPort = await iscsi.listen(o.iscsiPort, o.listen)
  const advertise = { host: o.listen === '0.0.0.0' || o.listen === '::' ? '127.0.0.1' : o.listen, nbdPort, iscsiPort }
  const app = createApp({ ds, locks, log: log.child({ component: 'http' }), metrics, advertise })
  const http: HttpServer = createServer(app)
  const httpPort = await new Promise<number>((res, rej) => {
    http.once('error', rej)
    http.listen(o.httpPort, o.listen, () => {
      const a = http.address()
      res(typeof a === 'object' && a ? a.port : o.httpPort)
    })
  })
  log.info({ datastore: ds.dir, listen: o.listen, httpPort, nbdPort, iscsiPort, pollUs: poller.windowUs }, 'tandem serve ready')
  let closing: Promise<void> | null = null
  return {
    ds,
    locks,
    httpPort,
    nbdPort,
    iscsiPort,
    log,
    close: () =>
      (closing ??= (async () => {
        await new Promise<void>((r) => http.close(() => r()))
        http.closeAllConnections()
        await nbd.close()
        await iscsi.close()
        await ds.close()
        await locks.close()
        log.info('tandem serve stopped')
      })()),
  }
}

import { createServer, type Server as HttpServer } from 'node:http'
import { resolve } from 'node:path'
import { pino, type Logger } from 'pino'
import { Datastore, PskKeys } from './datastore/index.js'
import { holdDatastore, type OwnerLock } from './datastore/owner-lock.js'
import { createApp } from './http/app.js'
import { API_TOKEN_FILE, AUTH_OFF_FOR_TESTS, isLoopback, loadOrCreateToken, type ApiAuth } from './http/auth.js'
import { FaultInjection } from './fault-injection.js'
import { Metrics } from './metrics.js'
import { NbdServer, NbdTls, type TlsMode } from './nbd/index.js'
import { IscsiServer } from './iscsi/index.js'
import { poller } from './net/poll.js'
import { Deadline, realTimers, type Timers } from './net/timers.js'
import { openLockspaceView, type LockspaceView } from './locks.js'
import { SERVE_DEFAULTS } from './serve-defaults.js'

export interface ServeOptions {
  datastore: string
  listen: string
  httpPort: number
  nbdPort: number
  iscsiPort: number
  logLevel?: string
  /** µs the event loop stays awake for a connection's next request after a QD1 reply (net/poll.ts); 0: off */
  pollUs?: number
  /** connections at once per protocol (NBD, iSCSI, HTTP); 0: no cap */
  maxConnections?: number
  /** ms an NBD client has to finish its handshake, an iSCSI initiator its login; 0: no limit */
  handshakeLimitMs?: number
  /** ms established clients get to finish at shutdown before they are cut */
  shutdownGraceMs?: number
  timers?: Timers
  /** NBD STARTTLS with the datastore's PSK keys (nbd/tls.ts); default optional */
  tls?: TlsMode
  /** this server's host name in the datastore's lockspace (default `serve@<machine>`) */
  lockHost?: string
  /** the REST API's bearer token file (default `<datastore>/.tandem/api-token`, created at first start) */
  apiTokenFile?: string
  /** AUTH_OFF_FOR_TESTS: an in-process test server without REST authentication (never the CLI's) */
  apiAuth?: typeof AUTH_OFF_FOR_TESTS
  /** disk faults switched at run time through PUT /api/v1/faults (tests, `tandem cluster`) */
  faultInjection?: boolean
}


export interface RunningServer {
  ds: Datastore
  /** the REST API's bearer token (null with AUTH_OFF_FOR_TESTS) */
  apiToken: string | null
  locks: LockspaceView
  httpPort: number
  nbdPort: number
  iscsiPort: number
  log: Logger
  /**
   * Stops accepting, cuts clients still in their handshake, gives established ones the grace
   * period to finish their requests, cuts the rest, then flushes and closes every disk (clearing
   * uncleanShutdown). Idempotent.
   */
  close(): Promise<void>
  /** Ends the grace period now (a second signal): clients are cut, disks still flushed. */
  hurry(): void
  /** What a close() in progress waits on (for diagnostics); '' before close, 'stopped' after. */
  readonly closeStage: string
}

/** A port that cannot be bound: one line naming the protocol, address and reason. */
export class ListenError extends Error {}

function listenError(what: string, host: string, port: number, e: unknown): ListenError {
  const code = (e as NodeJS.ErrnoException).code
  const why = code === 'EADDRINUSE' ? 'the port is in use' : code === 'EACCES' ? 'permission denied' : code === 'EADDRNOTAVAIL' ? 'no such local address' : (e as Error).message
  return new ListenError(`cannot listen for ${what} on ${host}:${port}: ${why}${code ? ` (${code})` : ''}`)
}

/** Starts the NAS daemon: datastore, REST + metrics over HTTP, NBD, iSCSI. */
export async function serve(o: ServeOptions, log: Logger = pino({ level: o.logLevel ?? 'info' })): Promise<RunningServer> {
  if (o.pollUs !== undefined) poller.windowUs = o.pollUs
  const timers = o.timers ?? realTimers
  const limits = { maxConnections: o.maxConnections ?? SERVE_DEFAULTS.maxConnections, handshakeMs: o.handshakeLimitMs ?? SERVE_DEFAULTS.handshakeLimitMs, timers }
  const grace = new Deadline(timers)
  // one server per datastore: a second one stops here, naming the first (pid, host)
  const owner = holdDatastore(resolve(o.datastore))
  let ds: Datastore
  try {
    ds = await Datastore.open(resolve(o.datastore))
  } catch (e) {
    owner.release()
    throw e
  }
  for (const r of ds.repairs) log.warn({ disk: r.disk, repaired: r.done }, 'datastore: repaired what a stopped operation left')
  /** what is open so far, closed in reverse when the start fails */
  const opened: (() => Promise<void>)[] = [async () => owner.release(), () => ds.close()]
  const listening = <T>(what: string, port: number, p: Promise<T>) => p.catch((e: unknown) => Promise.reject(listenError(what, o.listen, port, e)))
  try {
    const nbdKeys = await PskKeys.open(ds.dir)
    // every mutating request needs the token; off loopback every request does (auth.ts)
    const auth: ApiAuth =
      o.apiAuth === AUTH_OFF_FOR_TESTS ? AUTH_OFF_FOR_TESTS : { token: await loadOrCreateToken(resolve(o.apiTokenFile ?? resolve(ds.dir, API_TOKEN_FILE))), everyRequest: !isLoopback(o.listen) }
    const locks = await openLockspaceView(ds.dir, log.child({ component: 'locks' }), o.lockHost)
    opened.push(() => locks.close())
    ds.onWritable = (disk) => locks.holdDisk(disk)
    const metrics = new Metrics()
    const nbd = new NbdServer(ds, log.child({ component: 'nbd' }), metrics, limits, new NbdTls(o.tls ?? 'optional', nbdKeys))
    opened.push(() => nbd.close(grace.reached))
    const nbdPort = await listening('NBD', o.nbdPort, nbd.listen(o.nbdPort, o.listen))
    const iscsi = new IscsiServer(ds, log.child({ component: 'iscsi' }), metrics, limits, locks.device)
    opened.push(() => iscsi.close(grace.reached))
    const iscsiPort = await listening('iSCSI', o.iscsiPort, iscsi.listen(o.iscsiPort, o.listen))
    const advertise = { host: o.listen === '0.0.0.0' || o.listen === '::' ? '127.0.0.1' : o.listen, nbdPort, iscsiPort }
    const faults = o.faultInjection ? new FaultInjection() : undefined
    if (faults) ds.exportFilter = (disk, dev) => faults.wrap(disk, dev)
    const app = createApp({ ds, locks, nbdKeys, log: log.child({ component: 'http' }), metrics, advertise, auth, faults })
    const http: HttpServer = createServer(app)
    if (limits.maxConnections) http.maxConnections = limits.maxConnections
    const httpPort = await listening(
      'HTTP',
      o.httpPort,
      new Promise<number>((res, rej) => {
        http.once('error', rej)
        http.listen(o.httpPort, o.listen, () => {
          http.off('error', rej)
          const a = http.address()
          res(typeof a === 'object' && a ? a.port : o.httpPort)
        })
      }),
    )
    const { maxConnections, handshakeMs } = limits
    const restAuth = auth === AUTH_OFF_FOR_TESTS ? 'off' : auth.everyRequest ? 'every request' : 'mutating requests'
    log.info({ datastore: ds.dir, listen: o.listen, httpPort, nbdPort, iscsiPort, pollUs: poller.windowUs, maxConnections, handshakeMs, tls: o.tls ?? 'optional', restAuth }, 'tandem serve ready')
    return running({ apiToken: auth === AUTH_OFF_FOR_TESTS ? null : auth.token, owner, ds, locks, httpPort, nbdPort, iscsiPort, log, http, nbd, iscsi, grace, graceMs: o.shutdownGraceMs ?? SERVE_DEFAULTS.shutdownGraceMs })
  } catch (e) {
    grace.expire()
    for (const close of opened.reverse()) await close().catch(() => undefined)
    throw e
  }
}

function running(s: Omit<RunningServer, 'close' | 'hurry' | 'closeStage'> & { owner: OwnerLock; http: HttpServer; nbd: NbdServer; iscsi: IscsiServer; grace: Deadline; graceMs: number }): RunningServer {
  const { http, nbd, iscsi, grace, ds, locks, log } = s
  let closing: Promise<void> | null = null
  /** what close() waits on now */
  const waiting = new Set<string>()
  let stopped = false
  const step = <T>(what: string, p: Promise<T>): Promise<T> => {
    waiting.add(what)
    return p.finally(() => waiting.delete(what))
  }
  return {
    get closeStage() {
      return stopped ? 'stopped' : [...waiting].join(', ')
    },
    ds,
    apiToken: s.apiToken,
    locks,
    httpPort: s.httpPort,
    nbdPort: s.nbdPort,
    iscsiPort: s.iscsiPort,
    log,
    hurry: () => grace.expire(),
    close: () =>
      (closing ??= (async () => {
        grace.start(s.graceMs)
        // the callback of http.close waits for every connection: not awaited
        http.close()
        http.closeIdleConnections()
        const httpDone = new Promise<void>((r) => http.once('close', () => r()))
        await Promise.all([step('NBD connections', nbd.close(grace.reached)), step('iSCSI connections', iscsi.close(grace.reached)), step('HTTP connections', Promise.race([httpDone, grace.reached]).then(() => http.closeAllConnections()))])
        grace.expire()
        await step('the datastore', ds.close())
        await step('the lockspace', locks.close())
        s.owner.release()
        stopped = true
        log.info('tandem serve stopped')
      })()),
  }
}

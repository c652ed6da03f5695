import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { pino, type Logger } from 'pino'
import { StorageError } from '../../disk-formats/errors.js'
import { HostAgent } from './agent.js'
import type { HostDosOptions } from './host-dos.js'
import { createHostApp } from './http.js'

export interface RunHostOptions {
  name: string
  server: string
  iscsi?: string
  listen: string
  apiPort: number
  /** where a pair's backup started here listens for its primary (default: listen) */
  ftListen?: string
  logLevel?: string
  /** how to run `tandem` for a VM's child process */
  tandem: string[]
  /** the DoS guard on the VMs' switch ports (none: off) */
  dos?: HostDosOptions
  /** PUT /api/v1/faults: a clock jump on this host (tests, tandem cluster) */
  faultInjection?: boolean
}

/** The address others reach this host on: an unspecified listen address is shown as loopback. */
const reachable = (listen: string): string => (listen === '0.0.0.0' || listen === '::' ? '127.0.0.1' : listen)

/** The URL others reach an API on. */
function apiUrl(listen: string, port: number): string {
  const host = reachable(listen)
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`
}

/** Starts `tandem host`: the REST API listens first (its URL is registered), then the agent joins. */
export async function runHost(o: RunHostOptions): Promise<{ log: Logger; close(): Promise<void> }> {
  const log = pino({ level: o.logLevel ?? 'info' })
  const http = createServer()
  const port = await new Promise<number>((resolve, reject) => {
    http.once('error', (e: NodeJS.ErrnoException) => reject(new StorageError('IoError', `cannot listen for the host API on ${o.listen}:${o.apiPort}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}`)))
    http.listen(o.apiPort, o.listen, () => {
      const a = http.address()
      resolve(typeof a === 'object' && a ? a.port : o.apiPort)
    })
  })
  const api = apiUrl(o.listen, port)
  const joining = (_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'Unavailable', message: 'the host is joining the lockspace' } }))
  }
  http.on('request', joining)
  let agent: HostAgent
  try {
    const ftListen = o.ftListen ?? o.listen
    agent = await HostAgent.start({ name: o.name, server: o.server, iscsi: o.iscsi, api, tandem: o.tandem, log, ftListen, ftAdvertise: reachable(o.listen), dos: o.dos, faultInjection: o.faultInjection })
  } catch (e) {
    http.close()
    throw e
  }
  http.off('request', joining)
  http.on('request', createHostApp(agent, log.child({ component: 'http' })))
  log.info({ host: agent.name, api, apiPort: port, server: o.server, lease: agent.lease(), dos: o.dos ? { mode: o.dos.mode, bounds: o.dos.bounds } : 'off', ...(o.faultInjection ? { faultInjection: true } : {}) }, 'tandem host ready')
  return {
    log,
    async close() {
      http.close()
      http.closeIdleConnections()
      await agent.close()
      http.closeAllConnections()
      log.info('tandem host stopped')
    },
  }
}

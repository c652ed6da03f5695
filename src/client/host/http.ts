import express, { type NextFunction, type Request, type Response } from 'express'
import type { Logger } from 'pino'
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client'
import { jsonErrors, noRoute } from '../../server/http/errors.js'
import { parseStartRequest, type HostAgent, type VmState } from './agent.js'

const STATES: VmState[] = ['starting', 'running', 'stopping', 'exited', 'stopped', 'lost']

/** The host's Prometheus series, read from the agent when scraped. */
function hostMetrics(agent: HostAgent): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'tandem_host_' })
  new Gauge({
    name: 'tandem_host_lease_valid',
    help: '1 while this host holds a valid lease in the lockspace, else 0',
    registers: [registry],
    collect() {
      this.set(agent.lease().valid ? 1 : 0)
    },
  })
  new Gauge({
    name: 'tandem_host_vms',
    help: 'VMs this host knows, per state',
    labelNames: ['state'] as const,
    registers: [registry],
    collect() {
      const vms = agent.list()
      for (const s of STATES) this.set({ state: s }, vms.filter((v) => v.state === s).length)
    },
  })
  new Counter({
    name: 'tandem_host_vm_starts_total',
    help: 'VM start requests, per result: started, refused (the VM runs here or on another host), failed',
    labelNames: ['result'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const r of ['started', 'refused', 'failed'] as const) this.inc({ result: r }, agent.counts[r])
    },
  })
  new Counter({
    name: 'tandem_host_vms_fenced_total',
    help: 'VMs killed because this host lost its lease (or their watchdog died)',
    registers: [registry],
    collect() {
      this.reset()
      this.inc(agent.counts.fenced)
    },
  })
  new Counter({
    name: 'tandem_host_lease_renewals_total',
    help: 'Heartbeats written within the lease',
    registers: [registry],
    collect() {
      this.reset()
      this.inc(agent.counts.renewals)
    },
  })
  return registry
}

/** The host's REST API (`tandem host`): its VMs and /metrics; errors as tandem serve's, JSON. */
export function createHostApp(agent: HostAgent, log: Logger): express.Express {
  const app = express()
  const registry = hostMetrics(agent)
  app.disable('x-powered-by')
  app.use(express.json({ limit: '16kb' }))
  const wrap =
    (fn: (req: Request, res: Response) => Promise<void>) =>
    (req: Request, res: Response, next: NextFunction) =>
      fn(req, res).catch(next)
  app.get('/api/v1/health', (_req, res) => {
    res.json({ status: 'ok', host: agent.name, lease: agent.lease() })
  })
  app.get('/api/v1/vms', (_req, res) => {
    res.json({ host: agent.name, vms: agent.list() })
  })
  app.get('/api/v1/vms/:name', (req, res) => {
    res.json(agent.get(req.params.name as string))
  })
  app.post(
    '/api/v1/vms',
    wrap(async (req, res) => {
      const vm = await agent.startVm(parseStartRequest(req.body))
      res.status(201).location(`/api/v1/vms/${vm.name}`).json(vm)
    }),
  )
  app.post(
    '/api/v1/vms/:name/checkpoint',
    wrap(async (req, res) => {
      res.status(201).json(await agent.checkpointVm(req.params.name as string, req.body))
    }),
  )
  app.delete(
    '/api/v1/vms/:name',
    wrap(async (req, res) => {
      res.json(await agent.stopVm(req.params.name as string))
    }),
  )
  app.get(
    '/metrics',
    wrap(async (_req, res) => {
      res.type(registry.contentType).send(await registry.metrics())
    }),
  )
  app.use(noRoute)
  app.use(jsonErrors(log))
  return app
}

import express, { type NextFunction, type Request, type Response } from 'express'
import type { Logger } from 'pino'
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client'
import { jsonErrors, noRoute } from '../../server/http/errors.js'
import { parseStartRequest, type HostAgent, type VmFtInfo, type VmInfo, type VmState } from './agent.js'

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
  // a pair's figures, read from its sides' control sockets once per scrape
  let read: { at: number; vms: Promise<VmInfo[]> } | null = null
  const pairs = async () => {
    if (!read || performance.now() - read.at > 500) read = { at: performance.now(), vms: agent.listNow() }
    return (await read.vms).filter((v) => v.ft && v.state === 'running')
  }
  /** a gauge per running pair side, `value` of its figures (none while unknown) */
  const pairGauge = (name: string, help: string, value: (f: VmFtInfo) => number | null) =>
    new Gauge({
      name,
      help,
      labelNames: ['vm'] as const,
      registers: [registry],
      async collect() {
        this.reset()
        for (const v of await pairs()) {
          const x = value(v.ft!)
          if (x !== null) this.set({ vm: v.name }, x)
        }
      },
    })
  pairGauge('tandem_ft_lag_seconds', 'A pair\'s primary: how far its backup runs behind, on the primary\'s clock (the median of the last second\'s samples)', (f) => (f.lagMs === null ? null : f.lagMs / 1000))
  new Counter({
    name: 'tandem_ft_log_bytes_total',
    help: 'A pair\'s side: FT log bytes sent (primary) or received (backup)',
    labelNames: ['vm', 'side'] as const,
    registers: [registry],
    async collect() {
      this.reset()
      for (const v of await pairs()) if (v.ft!.logBytes !== null) this.inc({ vm: v.name, side: v.ft!.side }, v.ft!.logBytes)
    },
  })
  pairGauge('tandem_vm_cpu_limit_ratio', 'A pair\'s side: its CPU limit as a share of one core (1: no limit; the primary\'s lag control lowers it)', (f) => (f.cpuLimit === null ? null : f.cpuLimit / 100))
  new Gauge({
    name: 'tandem_ft_output_delay_seconds',
    help: 'A pair\'s primary: how long outputs were held until the backup acknowledged them, over recent releases, per quantile',
    labelNames: ['vm', 'quantile'] as const,
    registers: [registry],
    async collect() {
      this.reset()
      for (const v of await pairs()) {
        const d = v.ft!.outputDelay
        if (!d) continue
        this.set({ vm: v.name, quantile: '0.5' }, d.p50 / 1000)
        this.set({ vm: v.name, quantile: '0.99' }, d.p99 / 1000)
      }
    },
  })
  new Gauge({
    name: 'tandem_ft_checkpoint_pause_seconds',
    help: 'A checkpoint pair\'s primary: how long the VM stopped per epoch, over the last 400 epochs, per quantile (and the mean)',
    labelNames: ['vm', 'quantile'] as const,
    registers: [registry],
    async collect() {
      this.reset()
      for (const v of await pairs()) {
        const c = v.ft!.checkpoint
        if (!c?.pause) continue
        this.set({ vm: v.name, quantile: '0.5' }, c.pause.p50 / 1000)
        this.set({ vm: v.name, quantile: '0.99' }, c.pause.p99 / 1000)
        this.set({ vm: v.name, quantile: 'mean' }, (c.pauseMean ?? 0) / 1000)
      }
    },
  })
  pairGauge('tandem_ft_checkpoint_bytes_per_epoch', 'A checkpoint pair\'s side: STATE bytes per epoch over the last 400 epochs', (f) => (f.checkpoint ? f.checkpoint.bytesPerEpoch : null))
  new Counter({
    name: 'tandem_ft_checkpoint_pages_total',
    help: 'A checkpoint pair\'s primary: pages sent, by when: copied during the stop (stopped), sent while the VM ran (running); and how many of them went as diffs (diff)',
    labelNames: ['vm', 'when'] as const,
    registers: [registry],
    async collect() {
      this.reset()
      for (const v of await pairs()) {
        const c = v.ft!.checkpoint
        if (!c || c.pause === null) continue
        this.inc({ vm: v.name, when: 'stopped' }, c.pagesStopped)
        this.inc({ vm: v.name, when: 'running' }, c.pagesRunning)
        this.inc({ vm: v.name, when: 'diff' }, c.pagesDiff)
      }
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
  app.get(
    '/api/v1/vms',
    wrap(async (_req, res) => {
      res.json({ host: agent.name, vms: await agent.listNow() })
    }),
  )
  app.get(
    '/api/v1/vms/:name',
    wrap(async (req, res) => {
      res.json(await agent.getNow(req.params.name as string))
    }),
  )
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

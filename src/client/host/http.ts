import express, { type NextFunction, type Request, type Response } from 'express'
import type { Logger } from 'pino'
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client'
import { jsonErrors, noRoute } from '../../server/http/errors.js'
import { StorageError } from '../../disk-formats/errors.js'
import type { HostDos } from './host-dos.js'
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
  if (agent.dos) dosMetrics(agent.dos, registry)
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

/** The DoS guard's series (tandem_dos_*), per guarded VM. */
function dosMetrics(dos: HostDos, registry: Registry): void {
  type Row = ReturnType<HostDos['view']>['vms'][number]
  /** a series per guarded VM: a gauge, or a counter (set from the guard's totals) */
  const perVm = (name: string, help: string, kind: 'gauge' | 'counter', value: (v: Row) => number) => {
    const o = { name, help, labelNames: ['vm'] as const, registers: [registry] }
    if (kind === 'gauge') new Gauge({ ...o, collect() { this.reset(); for (const v of dos.view().vms) this.set({ vm: v.name }, value(v)) } })
    else new Counter({ ...o, collect() { this.reset(); for (const v of dos.view().vms) this.inc({ vm: v.name }, value(v)) } })
  }
  perVm('tandem_dos_suspended', 'A guarded VM: 1 while the DoS guard has it suspended (its inbound frames dropped), else 0', 'gauge', (v) => (v.suspended ? 1 : 0))
  perVm('tandem_dos_flagged', 'A guarded VM: 1 while its inbound traffic is flagged as a flood (over the bounds for the hold time, not yet quiet for the cooldown)', 'gauge', (v) => (v.flagged ? 1 : 0))
  perVm('tandem_dos_inbound_frames_per_second', 'A guarded VM: inbound frames a second over the guard\'s window', 'gauge', (v) => v.rate.pps)
  perVm('tandem_dos_inbound_bytes_per_second', 'A guarded VM: inbound bytes a second over the guard\'s window', 'gauge', (v) => v.rate.bps)
  perVm('tandem_dos_reply_ratio', 'A guarded VM: its outbound over inbound frames over the guard\'s window', 'gauge', (v) => v.rate.replyRatio)
  perVm('tandem_dos_inbound_frames_total', 'A guarded VM: inbound frames seen at its port (dropped ones too)', 'counter', (v) => v.framesIn)
  perVm('tandem_dos_dropped_frames_total', 'A guarded VM: inbound frames dropped at its port while suspended', 'counter', (v) => v.dropped)
  new Counter({
    name: 'tandem_dos_events_total',
    help: 'DoS guard events: detected (a VM over the bounds for the hold time), suspended, resumed',
    labelNames: ['kind'] as const,
    registers: [registry],
    collect() {
      this.reset()
      for (const [k, n] of Object.entries(dos.guard.counts)) this.inc({ kind: k }, n)
    },
  })
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
  app.post(
    '/api/v1/vms/:name/ft/restore',
    wrap(async (req, res) => {
      res.json(await agent.restoreVm(req.params.name as string, req.body))
    }),
  )
  app.delete(
    '/api/v1/vms/:name',
    wrap(async (req, res) => {
      res.json(await agent.stopVm(req.params.name as string))
    }),
  )
  app.get('/api/v1/dos', (_req, res) => {
    if (!agent.dos) throw new StorageError('NotFound', `host '${agent.name}' runs without a DoS guard (tandem host --dos-guard monitor|on)`)
    res.json({ host: agent.name, ...agent.dos.view() })
  })
  app.get('/api/v1/dos/events', (req, res) => {
    if (!agent.dos) throw new StorageError('NotFound', `host '${agent.name}' runs without a DoS guard (tandem host --dos-guard monitor|on)`)
    const since = req.query.since === undefined ? 0 : Number(req.query.since)
    if (!Number.isSafeInteger(since) || since < 0) throw new StorageError('InvalidArgument', '"since" must be an event\'s seq (an integer, 0 or more)')
    res.json({ host: agent.name, events: agent.dos.guard.events(since) })
  })
  app.get('/api/v1/faults', (_req, res) => {
    res.json(agent.faults())
  })
  app.put('/api/v1/faults', (req, res) => {
    const b = req.body as { clock?: { offsetMs?: unknown } } | undefined
    if (typeof b !== 'object' || b === null || typeof b.clock !== 'object' || b.clock === null || Object.keys(b).some((k) => k !== 'clock')) {
      agent.faults() // 404 first when fault injection is off
      throw new StorageError('InvalidArgument', 'the body must be {"clock": {"offsetMs": N}}: the host\'s wall clock N ms off the system\'s (0: none)')
    }
    res.json(agent.setClockOffset(b.clock.offsetMs))
  })
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

import { mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { requestJson } from '../api/http.js'
import type { VmInfo } from '../host/agent.js'
import { FaultLink } from '../ft/fault-link.js'
import { UdpSwitch } from '../net/udp-switch.js'
import { createNetns, loopbackNet, netnsUnavailable, runCommand, type ClusterNet } from './net.js'
import { startProc, type Proc } from './processes.js'
import type { Scenario } from './scenario.js'

export const DEFAULT_LEASE = { heartbeatMs: 200, leaseMs: 2500, fenceMarginMs: 700 }
export const DEFAULT_FT_LOSS_MS = 1500

export interface HostNode {
  name: string
  proc: Proc
  url: string
  /** the harness's proxies in front of the server, this host's storage paths */
  http: FaultLink
  iscsi: FaultLink
  /** pids of the VMs it started (each a process group) */
  vmPids: Set<number>
  /** with fault injection (a clock fault targets it): the file of its wall-clock offset, and the offset */
  wallFile: string | null
  clockOffsetMs: number
}

export interface ServerNode {
  proc: Proc
  url: string
  addr: string
  httpPort: number
  nbdPort: number
  iscsiPort: number
  datastore: string
}

const macOf = (i: number) => `02:00:00:00:10:${(i + 1).toString(16).padStart(2, '0')}`

/**
 * One scenario's cluster: a `tandem serve` (its datastore and lockspace under `dir`), a switch
 * (in the harness's process: its links take faults at run time), per host a `tandem host` reaching
 * the server through two FaultLink proxies (HTTP, iSCSI), and the VMs. Every program runs in a
 * process group of its own; `stop` ends them all and removes the network, and is idempotent.
 */
export class Cluster {
  server!: ServerNode
  switch!: UdpSwitch
  hosts = new Map<string, HostNode>()
  vms = new Map<string, { spec: NonNullable<Scenario['vms']>[number]; mac: string; primary: HostNode; backup: HostNode | null; info: VmInfo }>()
  /** the server's REST bearer token, once it runs */
  private token: string | null = null
  private procs: Proc[] = []
  private links: FaultLink[] = []
  private stopped = false

  private constructor(
    readonly scenario: Scenario,
    readonly net: ClusterNet,
    readonly dir: string,
    readonly tandem: string[],
    readonly log: (line: string) => void,
  ) {}

  get lease() {
    return { ...DEFAULT_LEASE, ...this.scenario.lease }
  }

  /** Makes the network (namespaces when asked, or when `auto` and root) and an empty cluster on it. */
  static async create(s: Scenario, dir: string, tandem: string[], log: (line: string) => void): Promise<Cluster> {
    mkdirSync(dir, { recursive: true })
    const mode = s.network ?? 'auto'
    const why = mode === 'loopback' ? 'loopback asked' : await netnsUnavailable()
    if (mode === 'netns' && why) throw new Error(`network "netns": ${why}`)
    const net = why ? loopbackNet() : await createNetns(['server', ...s.hosts.map((h) => h.name)])
    log(`network: ${net.mode}${why && mode !== 'loopback' ? ` (${why})` : ''}`)
    return new Cluster(s, net, dir, tandem, log)
  }

  start(name: string, args: string[], node?: string, env?: NodeJS.ProcessEnv): Proc {
    const e = { ...(this.token ? { TANDEM_API_TOKEN: this.token } : {}), ...env }
    const p = startProc(name, [...this.tandem, ...args], { wrap: node ? this.net.wrap(node) : [], logFile: join(this.dir, `${name.replace(/[^a-z0-9.-]/gi, '_')}.log`), env: e })
    this.procs.push(p)
    return p
  }

  /** Starts the server, its disks, the switch, the hosts and the VMs. */
  async up(): Promise<void> {
    const s = this.scenario
    const datastore = join(this.dir, 'datastore')
    mkdirSync(join(datastore, '.tandem'), { recursive: true })
    const l = this.lease
    const init = await runCommand(this.tandem[0], [...this.tandem.slice(1), 'lock', 'init', '--lockspace', join(datastore, '.tandem', 'lockspace'), '--hosts', '16', '--locks', '64', '--heartbeat-ms', String(l.heartbeatMs), '--lease-ms', String(l.leaseMs), '--fence-margin-ms', String(l.fenceMarginMs)])
    if (init.status !== 0) throw new Error(`lock init: ${init.stderr}`)
    const addr = this.net.addr('server')
    const proc = this.start('server', ['serve', '--datastore', datastore, '--listen', addr, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0', ...(s.server?.faultInjection ? ['--fault-injection'] : [])], 'server')
    const ports = await proc.waitLine((j) => (j.msg === 'tandem serve ready' ? (j as unknown as { httpPort: number; nbdPort: number; iscsiPort: number }) : undefined))
    this.server = { proc, addr, datastore, url: `http://${addr}:${ports.httpPort}`, httpPort: ports.httpPort, nbdPort: ports.nbdPort, iscsiPort: ports.iscsiPort }
    // off loopback (namespaces) the server wants its REST token on every request, health included:
    // this cluster's requests send it, and what it starts (hosts) has it in its environment; never
    // this process's environment, which clusters run side by side in one process would share
    this.token = readFileSync(join(datastore, '.tandem', 'api-token'), 'utf8').trim()
    for (const d of s.server?.disks ?? []) await this.serverRequest('POST', '/api/v1/disks', d)
    this.switch = await UdpSwitch.listen({ host: this.net.harnessAddr, port: 0, ageMs: 60_000, maxPeers: 1024 })
    this.log(`server ${this.server.url} (nbd ${ports.nbdPort}, iscsi ${ports.iscsiPort}); switch udp:${this.net.harnessAddr}:${this.switch.address.port}`)
    await Promise.all(s.hosts.map((h) => this.startHost(h.name)))
    for (const [i, v] of (s.vms ?? []).entries()) {
      const mac = v.mac ?? macOf(i)
      const primary = this.hosts.get(v.host)!
      const backup = v.ft ? this.hosts.get(v.ft)! : null
      const body = {
        name: v.name,
        guest: v.guest,
        mac,
        switch: this.switchUrl,
        ...(v.disk ? { disk: v.disk } : {}),
        ...(v.priority !== undefined ? { priority: v.priority } : {}),
        ...(backup ? { ft: { host: backup.url, backupReads: v.backupReads ?? 'disk' } } : {}),
      }
      for (let attempt = 1; ; attempt++) {
        let split: string | null
        try {
          const info = await requestJson<VmInfo>(primary.url, 'POST', '/api/v1/vms', body)
          this.vms.set(v.name, { spec: v, mac, primary, backup, info })
          this.log(`vm ${v.name} (${v.guest}) on ${v.host}${backup ? `, backup on ${backup.name}` : ''}: pid ${info.pid}, generation ${info.generation}`)
          split = backup ? await this.paired(v.name) : null
        } catch (e) {
          // a pair that could not form (its sides lost each other while starting): tried again below
          if (!backup) throw e
          split = `start refused: ${(e as Error).message.split('\n')[0].slice(0, 300)}`
        }
        if (!split) break
        if (attempt === 3) throw new Error(`pair ${v.name} did not form in 3 attempts: ${split}`)
        this.setupRetries.push(`${v.name}: ${split}`)
        this.log(`pair ${v.name} split while starting (${split}): stopping both sides, starting it again`)
        for (const h of [primary, backup!]) await requestJson(h.url, 'DELETE', `/api/v1/vms/${encodeURIComponent(v.name)}`).catch(() => undefined)
      }
    }
  }

  /** pairs restarted because they split while starting */
  setupRetries: string[] = []

  /** Waits until a pair's sides show as primary and backup: null, or the roles it split into (or stood at after 20 s). */
  private async paired(vm: string): Promise<string | null> {
    const split = ['live', 'alone', 'halted', 'handed-over']
    let roles = ''
    for (const end = Date.now() + 20_000; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
      const [p, b] = await Promise.all([this.vmInfo(vm, 'primary'), this.vmInfo(vm, 'backup')])
      roles = `primary side ${p?.ft?.role ?? p?.state ?? 'unreachable'}, backup side ${b?.ft?.role ?? b?.state ?? 'unreachable'}`
      if (p?.ft?.role === 'primary' && b?.ft?.role === 'backup') return null
      if (split.includes(p?.ft?.role ?? '') || split.includes(b?.ft?.role ?? '') || p?.state === 'exited' || b?.state === 'exited') return roles
    }
    return `${roles} after 20 s`
  }

  get switchUrl(): string {
    return `udp:${this.net.harnessAddr}:${this.switch.address.port}`
  }

  private async startHost(name: string): Promise<void> {
    const h = this.net.harnessAddr
    const [http, iscsi] = await Promise.all([
      FaultLink.start({ host: h, target: { host: this.server.addr, port: this.server.httpPort } }),
      FaultLink.start({ host: h, target: { host: this.server.addr, port: this.server.iscsiPort } }),
    ])
    this.links.push(http, iscsi)
    const clock = (this.scenario.timeline ?? []).some((f) => f.fault === 'clock' && f.target === `host:${name}`)
    const spec = this.scenario.hosts.find((x) => x.name === name)!
    const dos = spec.dosGuard && spec.dosGuard !== 'off' ? ['--dos-guard', spec.dosGuard, ...(spec.dosBounds ? ['--dos-bounds', spec.dosBounds] : [])] : []
    const proc = this.start(`host-${name}`, ['host', '--name', name, '--server', `http://${h}:${http.port}`, '--iscsi', `${h}:${iscsi.port}`, '--listen', this.net.addr(name), '--api-port', '0', ...(clock ? ['--fault-injection'] : []), ...dos], name, { TANDEM_FT_LOSS_MS: String(this.scenario.ftLossMs ?? DEFAULT_FT_LOSS_MS) })
    const node: HostNode = { name, proc, url: '', http, iscsi, vmPids: new Set(), wallFile: null, clockOffsetMs: 0 }
    const watch = () => {
      for (const line of proc.lines) {
        try {
          const j = JSON.parse(line) as { msg?: string; pid?: number }
          if (j.msg === 'VM started' && j.pid) node.vmPids.add(j.pid)
        } catch {
          /* not JSON */
        }
      }
    }
    proc.child.stdout!.on('data', () => setImmediate(watch))
    node.url = await proc.waitLine((j) => (j.msg === 'tandem host ready' ? String(j.api) : undefined))
    if (clock) node.wallFile = (await requestJson<{ clock: { file: string } }>(node.url, 'GET', '/api/v1/faults')).clock.file
    this.hosts.set(name, node)
  }

  /** A request to this cluster's server, with its token. */
  serverRequest<T>(method: string, path: string, body?: unknown): Promise<T> {
    return requestJson<T>(this.server.url, method, path, body, { token: this.token ?? undefined })
  }

  /** A VM side's state on its host (null when the host does not answer). */
  async vmInfo(vm: string, side: 'primary' | 'backup' = 'primary'): Promise<VmInfo | null> {
    const v = this.vms.get(vm)!
    const host = side === 'primary' ? v.primary : v.backup
    if (!host) return null
    return requestJson<VmInfo>(host.url, 'GET', `/api/v1/vms/${encodeURIComponent(vm)}`, undefined, { timeoutMs: 2000 }).catch(() => null)
  }

  /** Every pid a host's machine holds: its namespace's (netns), or the agent's group and its VMs' (loopback). */
  async hostGroups(name: string): Promise<{ pids: number[]; groups: number[] }> {
    const h = this.hosts.get(name)!
    if (this.net.mode === 'netns') return { pids: await this.net.pids(name), groups: [] }
    return { pids: [], groups: [h.proc.pid, ...h.vmPids] }
  }

  /**
   * Stops everything: the hosts (SIGTERM: they stop their VMs), then any group left (SIGCONT,
   * SIGKILL), the server last and cleanly (SIGTERM: its disks flushed and marked clean), the
   * proxies, the switch, the network.
   */
  async stop(): Promise<{ serverExit: { code: number | null; signal: string | null } | null }> {
    if (this.stopped) return { serverExit: null }
    this.stopped = true
    const within = <T>(p: Promise<T>, ms: number) => Promise.race([p, new Promise<null>((r) => setTimeout(() => r(null), ms).unref())])
    const others = this.procs.filter((p) => p !== this.server?.proc)
    for (const p of others) p.signal('SIGCONT')
    this.server?.proc.signal('SIGCONT')
    for (const n of this.net.mode === 'netns' ? [...this.hosts.keys(), 'server'] : []) await this.net.heal(n).catch(() => undefined)
    for (const l of this.links) {
      l.resume()
      l.heal()
    }
    for (const p of others) p.signal('SIGTERM')
    await Promise.all(others.map((p) => within(p.exited, 12_000)))
    for (const p of others) p.signal('SIGKILL')
    for (const h of this.hosts.values()) for (const pid of h.vmPids) signalGroup(pid, 'SIGKILL')
    let serverExit: { code: number | null; signal: string | null } | null = null
    if (this.server) {
      this.server.proc.signal('SIGTERM')
      serverExit = await within(this.server.proc.exited, 15_000)
      if (!serverExit) this.server.proc.signal('SIGKILL')
    }
    for (const p of this.procs) p.signal('SIGKILL')
    await Promise.all(this.links.map((l) => l.close().catch(() => undefined)))
    await this.switch?.close().catch(() => undefined)
    await this.net.destroy()
    return { serverExit }
  }
}

export function signalGroup(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, sig)
    return true
  } catch {
    try {
      process.kill(pid, sig)
      return true
    } catch {
      return false
    }
  }
}

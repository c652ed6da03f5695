import { requestJson } from '../api/http.js'
import { NO_FAULTS } from '../net/link-faults.js'
import { seededRandom } from '../net/random.js'
import { readHolders, uptimeMs } from './holders.js'
import { signalGroup, type Cluster } from './cluster.js'
import type { Fault, Scenario } from './scenario.js'
import type { Workloads } from './workloads.js'

/** A fault of the timeline with its time drawn from the run's seed, and what happened when it ran. */
export interface Scheduled {
  index: number
  fault: Fault
  /** ms after the workloads start, as drawn */
  atMs: number
  /** when it was applied and lifted (ms after the start), and what it hit */
  appliedMs: number | null
  liftedMs: number | null
  note: string
}

/** The timeline's times for a seed: fixed ones as written, [min, max] drawn uniformly (the same seed, the same times). */
export function drawTimeline(s: Scenario, seed: number): Scheduled[] {
  const rnd = seededRandom(seed)
  return (s.timeline ?? [])
    .map((fault, index) => ({ index, fault, atMs: Array.isArray(fault.atMs) ? Math.round(fault.atMs[0] + rnd() * (fault.atMs[1] - fault.atMs[0])) : fault.atMs, appliedMs: null, liftedMs: null, note: '' }))
    .sort((a, b) => a.atMs - b.atMs || a.index - b.index)
}

/** One line per fault: what a failing run prints so that it can be replayed. */
export function describe(f: Fault): string {
  const { fault, atMs: _, ...rest } = f as Fault & Record<string, unknown>
  void _
  return `${fault} ${Object.entries(rest).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(',') : v}`).join(' ')}`
}

/** Which pair a fault takes the primary of (its failover is then measured from it), if any. */
function pairHit(c: Cluster, f: Fault): string[] {
  const out: string[] = []
  for (const [name, v] of c.vms) {
    if (!v.backup) continue
    const p = v.primary.name
    if ((f.fault === 'kill' || f.fault === 'stop') && (f.target === `vm:${name}` || f.target === `vm:${name}:primary` || f.target === `host:${p}`)) out.push(name)
    if (f.fault === 'partition' && (f.node === p || (f.pair && f.pair.includes(p) && (f.pair.includes(v.backup.name) || f.pair.includes('server'))))) out.push(name)
  }
  return out
}

export interface FloodRun {
  startedAt: number | null
  endedAt: number | null
  frames: number
  pps: number
  error: string | null
}

export interface FaultRun {
  timeline: Scheduled[]
  /** per pair: when a fault took its primary (ms after the start) */
  primaryLost: Map<string, number>
  /** per lock: when its holder was stopped or killed (uptimeMs(): no host's clock jump moves it) */
  holderLost: Map<string, number>
  /** per flooded VM: what `tandem kv flood` reported (epoch ms, as the DoS guard's events) */
  floods: Map<string, FloodRun>
  done: Promise<void>
  cancel(): void
}

/**
 * Runs the timeline from `t0` (performance.now() at the workloads' start): each fault at its
 * time, lifted after its forMs. Errors of a fault are noted on it and do not stop the others.
 */
export function runTimeline(c: Cluster, w: Workloads, timeline: Scheduled[], t0: number, seed: number): FaultRun {
  const rnd = seededRandom(seed ^ 0x1f)
  const timers = new Set<NodeJS.Timeout | NodeJS.Timer>()
  const later = (ms: number, fn: () => unknown) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        timers.delete(t)
        void Promise.resolve()
          .then(fn)
          .finally(resolve)
      }, Math.max(0, ms))
      timers.add(t)
    })
  const now = () => Math.round(performance.now() - t0)
  const r: FaultRun = { timeline, primaryLost: new Map(), holderLost: new Map(), floods: new Map(), done: Promise.resolve(), cancel: () => timers.forEach((t) => clearTimeout(t as NodeJS.Timeout)) }

  const groupsOf = async (target: string): Promise<number[]> => {
    const [kind, name, side] = target.split(':')
    if (kind === 'server') return [c.server.proc.pid]
    if (kind === 'host') {
      const h = await c.hostGroups(name)
      return [...h.groups, ...h.pids.map((p) => -p)]
    }
    if (kind === 'vm') {
      const info = await c.vmInfo(name, side === 'backup' ? 'backup' : 'primary')
      if (!info?.pid) throw new Error(`${target}: no running process`)
      return [info.pid]
    }
    // lock-holder: the contender whose line is the records' last, written in the last 200 ms (waits up to 10 s for one)
    for (const end = Date.now() + 10_000; Date.now() < end; await new Promise((res) => setTimeout(res, 20))) {
      for (const l of w.lock) {
        const last = readHolders(l.records).at(-1)
        const p = last && uptimeMs() - last.mono < 200 ? l.current.get(last.host) : undefined
        if (p?.running()) {
          r.holderLost.set(l.lock, uptimeMs())
          return [p.pid]
        }
      }
    }
    throw new Error('lock-holder: nobody held the lock for 10 s')
  }
  /** a negative entry is a single pid (a namespace's), a positive one a process group */
  const signal = (list: number[], sig: NodeJS.Signals) => list.forEach((p) => (p < 0 ? process.kill(-p, sig) : signalGroup(p, sig)))

  const apply = async (s: Scheduled): Promise<void> => {
    const f = s.fault
    s.appliedMs = now()
    for (const vm of pairHit(c, f)) if (!r.primaryLost.has(vm)) r.primaryLost.set(vm, s.appliedMs)
    const lift = async (fn: () => unknown, forMs: number) => {
      await later(s.atMs + forMs - now(), async () => {
        await fn()
        s.liftedMs = now()
      })
    }
    switch (f.fault) {
      case 'kill': {
        const g = await groupsOf(f.target)
        signal(g, 'SIGKILL')
        s.note = `SIGKILL ${g.map((p) => (p < 0 ? `pid ${-p}` : `group ${p}`)).join(', ')}`
        return
      }
      case 'stop': {
        const g = await groupsOf(f.target)
        signal(g, 'SIGSTOP')
        s.note = `SIGSTOP ${g.map((p) => (p < 0 ? `pid ${-p}` : `group ${p}`)).join(', ')}`
        return lift(() => signal(g, 'SIGCONT'), f.forMs)
      }
      case 'partition': {
        if (f.pair?.includes('server')) {
          // a host cut off its storage only: its paths to the server pass the harness's proxies (both modes)
          const h = c.hosts.get(f.pair[0] === 'server' ? f.pair[1] : f.pair[0])!
          for (const l of [h.http, h.iscsi]) l.blackhole()
          s.note = `${h.name}'s storage paths (HTTP, iSCSI) blackholed`
          return lift(() => [h.http, h.iscsi].forEach((l) => l.heal()), f.forMs)
        }
        if (f.pair) {
          await c.net.cutPair(f.pair[0], f.pair[1])
          s.note = `blackhole routes between ${f.pair.join(' and ')}`
          return lift(() => c.net.healPair(f.pair![0], f.pair![1]), f.forMs)
        }
        const node = f.node!
        if (c.net.mode === 'netns') {
          await c.net.cut(node)
          s.note = `${node}'s link down`
          return lift(() => c.net.heal(node), f.forMs)
        }
        const links = node === 'server' ? [...c.hosts.values()].flatMap((h) => [h.http, h.iscsi]) : [c.hosts.get(node)!.http, c.hosts.get(node)!.iscsi]
        links.forEach((l) => l.blackhole())
        s.note = `loopback: ${node}'s storage paths (HTTP, iSCSI) blackholed`
        return lift(() => links.forEach((l) => l.heal()), f.forMs)
      }
      case 'link': {
        const base = f.delayMs ?? 0
        const jitter = f.jitterMs ?? 0
        const set = (ms: number) => {
          if (f.path === 'switch') c.switch.setFaults('all', { delayMs: ms, loss: f.loss ?? 0 })
          else for (const l of [c.hosts.get(f.path.slice(8))!.http, c.hosts.get(f.path.slice(8))!.iscsi]) l.delayMs = ms
        }
        set(base)
        const tick = jitter > 0 ? setInterval(() => set(base + Math.round(rnd() * jitter)), 100) : null
        s.note = `${f.path}: delay ${base} ms${jitter ? ` + up to ${jitter} ms` : ''}${f.loss ? `, loss ${f.loss}` : ''}`
        return lift(() => {
          if (tick) clearInterval(tick)
          if (f.path === 'switch') c.switch.setFaults('all', NO_FAULTS)
          else set(0)
        }, f.forMs)
      }
      case 'disk': {
        const body = { faults: [{ disk: f.disk, mode: f.mode, ms: f.ms ?? 0, op: f.op ?? 'any' }] }
        await c.serverRequest('PUT', '/api/v1/faults', body)
        s.note = `server: ${f.mode}${f.mode === 'delay' ? ` ${f.ms ?? 0} ms` : ''} on ${f.disk} (${f.op ?? 'any'})`
        return lift(() => c.serverRequest('PUT', '/api/v1/faults', { faults: [] }), f.forMs)
      }
      case 'flood': {
        const name = f.target.slice(3)
        const v = c.vms.get(name)!
        const pps = f.pps ?? 5000
        const run: FloodRun = { startedAt: null, endedAt: null, frames: 0, pps: 0, error: null }
        r.floods.set(name, run)
        const p = c.start(`flood-${name}`, ['kv', 'flood', '--switch', c.switchUrl, '--vm-mac', v.mac, '--pps', String(pps), '--size', String(f.size ?? 60), '--seconds', String(f.forMs / 1000)])
        s.note = `tandem kv flood at ${name}: ${f.size ?? 60}-byte frames at ${pps}/s for ${f.forMs} ms`
        const { code } = await p.exited
        const json = p.lines.flatMap((l) => {
          try {
            return [JSON.parse(l) as { msg?: string; at?: number; endedAt?: number; frames?: number; pps?: number }]
          } catch {
            return []
          }
        })
        const [started, ended] = [json.find((j) => j.msg === 'flood started'), json.find((j) => j.msg === 'flood ended')]
        Object.assign(run, { startedAt: started?.at ?? null, endedAt: ended?.endedAt ?? null, frames: ended?.frames ?? 0, pps: ended?.pps ?? 0 })
        if (code !== 0 || !ended) run.error = `kv flood exited ${code}: ${p.stderr().trim().slice(-300)}`
        s.liftedMs = now()
        // a VM its guard suspended is resumed after a quiet cooldown: wait for it (30 s at most), so the checkers see it
        const host = v.primary
        for (const end = performance.now() + 30_000; performance.now() < end; await new Promise((res) => setTimeout(res, 100))) {
          const evs = await requestJson<{ events: { vm: string; kind: string }[] }>(host.url, 'GET', '/api/v1/dos/events').catch(() => null)
          if (!evs || !evs.events.some((e) => e.vm === name && e.kind === 'suspended') || evs.events.some((e) => e.vm === name && e.kind === 'resumed')) break
        }
        return
      }
      case 'clock': {
        // the host's wall clock steps by jumpMs (and stays stepped: a jump is not lifted)
        const h = c.hosts.get(f.target.slice(5))!
        const offsetMs = h.clockOffsetMs + f.jumpMs
        await requestJson(h.url, 'PUT', '/api/v1/faults', { clock: { offsetMs } })
        h.clockOffsetMs = offsetMs
        s.note = `${h.name}'s wall clock ${f.jumpMs > 0 ? '+' : ''}${f.jumpMs} ms (${offsetMs} ms off the system's)`
        return
      }
    }
  }
  r.done = Promise.all(
    timeline.map((s) =>
      later(s.atMs - now(), () =>
        apply(s).catch((e: Error) => {
          s.note = `FAILED: ${e.message}`
        }),
      ),
    ),
  ).then(() => undefined)
  return r
}

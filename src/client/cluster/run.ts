import { mkdirSync, readFileSync, existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { readAckLog } from '../kv/ack-log.js'
import { checkDisks, checkLive, type Verdict } from './checkers.js'
import { readHolders, uptimeMs } from './holders.js'
import { Cluster } from './cluster.js'
import { describe, drawTimeline, runTimeline, type FaultRun, type Scheduled } from './faults.js'
import { indexHtml, junitXml, runHtml, type RunReport, type Series } from './report.js'
import type { Scenario } from './scenario.js'
import { startWorkloads, type Workloads } from './workloads.js'

export interface RunOptions {
  /** the scenario file as given (for the replay command) */
  file: string
  /** the first run's seed; run k uses seed + k */
  seed: number
  runs: number
  /** where reports go: DIR/index.html, DIR/junit.xml, DIR/run-K-seed-S/ */
  reportDir: string
  /** argv that runs the tandem CLI (process.execPath and its script) */
  tandem: string[]
  /** progress lines (default: stderr) */
  log?: (line: string) => void
  /** aborts between and within runs (SIGINT): the cluster is still stopped and removed */
  signal?: AbortSignal
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Every cleanup still owed (a SIGINT handler runs them before the process exits). */
export const pendingCleanups = new Set<() => Promise<unknown>>()

/**
 * Runs one scenario `runs` times, seeds seed..seed+runs-1; writes each run's report.html and
 * result.json, and DIR/index.html and DIR/junit.xml. A failing run logs its seed, its timeline
 * and the command that replays it.
 */
export async function runScenario(s: Scenario, o: RunOptions): Promise<RunReport[]> {
  const log = o.log ?? ((l: string) => process.stderr.write(l + '\n'))
  mkdirSync(o.reportDir, { recursive: true })
  const reports: RunReport[] = []
  for (let k = 0; k < o.runs && !o.signal?.aborted; k++) {
    const seed = o.seed + k
    const dir = join(o.reportDir, `run-${k + 1}-seed-${seed}`)
    log(`[${s.name}] run ${k + 1}/${o.runs}, seed ${seed}`)
    const r = await runOnce(s, { ...o, seed, dir, run: k + 1, log: (l) => log(`  ${l}`) })
    reports.push(r)
    writeFileSync(join(dir, 'report.html'), runHtml(r))
    writeFileSync(join(dir, 'result.json'), JSON.stringify(r, null, 2) + '\n')
    writeFileSync(join(o.reportDir, 'index.html'), indexHtml(s.name, reports))
    writeFileSync(join(o.reportDir, 'junit.xml'), junitXml(s.name, reports))
    for (const v of r.verdicts) log(`  ${v.ok ? 'PASS' : 'FAIL'} ${v.name}: ${v.detail}`)
    if (!r.ok) {
      log(`[${s.name}] run ${k + 1} FAILED with seed ${seed}${r.error ? `: ${r.error}` : ''}`)
      log(`  timeline (ms after the workloads start):`)
      for (const f of r.timeline) log(`    ${String(f.atMs).padStart(6)}  ${describe(f.fault)}${f.note ? `  (${f.note})` : ''}`)
      log(`  replay: ${r.replay}`)
    }
  }
  log(`[${s.name}] ${reports.filter((r) => r.ok).length} of ${reports.length} runs passed; report ${join(o.reportDir, 'index.html')}, ${join(o.reportDir, 'junit.xml')}`)
  return reports
}

async function runOnce(s: Scenario, o: RunOptions & { dir: string; run: number; log: (l: string) => void }): Promise<RunReport> {
  const started = Date.now()
  const timeline: Scheduled[] = drawTimeline(s, o.seed)
  const report: RunReport = {
    scenario: s.name,
    description: s.description,
    seed: o.seed,
    run: o.run,
    ok: false,
    network: '-',
    startedAt: new Date(started).toISOString(),
    wallMs: 0,
    spanMs: 1,
    timeline,
    verdicts: [],
    series: [],
    replay: `tandem cluster run ${o.file} --seed ${o.seed} --runs 1`,
  }
  let cluster: Cluster | null = null
  const cleanup = async () => {
    await cluster?.stop()
  }
  pendingCleanups.add(cleanup)
  try {
    cluster = await Cluster.create(s, o.dir, o.tandem, o.log)
    report.network = cluster.net.mode
    await cluster.up()
    report.setupRetries = cluster.setupRetries
    const c = cluster
    o.log(`cluster up in ${Date.now() - started} ms`)
    if (o.signal?.aborted) throw new Error('interrupted')
    const workloads = await startWorkloads(c, s.workloads, o.seed, false)
    // time 0: every kv load has its first acknowledgement (a busy machine takes seconds to start a client)
    for (const end = Date.now() + 30_000; Date.now() < end && !workloads.kv.every((k) => existsSync(k.log) && readFileSync(k.log, 'utf8').includes('\n')); ) await sleep(20)
    const t0 = performance.now()
    const t0Wall = Date.now()
    const t0Mono = uptimeMs()
    report.t0Wall = t0Wall
    const faults = runTimeline(c, workloads, timeline, t0, o.seed)
    const sampler = sample(c, t0, faults)
    await Promise.all([workloads.done, faults.done])
    // pairs whose primary a fault took: give the backup its bound to be seen live
    const bound = Math.max(0, ...(s.checkers ?? []).map((ch) => (ch.kind === 'failover' ? ch.withinMs : 0)))
    for (const vm of faults.primaryLost.keys()) {
      for (const end = performance.now() + bound + 2000; !sampler.liveAt.has(vm) && performance.now() < end; ) await sleep(50)
    }
    report.spanMs = Math.round(performance.now() - t0)
    sampler.stop()
    o.log(`workloads and faults done in ${report.spanMs} ms`)
    const checking = Date.now()
    for (const ch of s.checkers ?? []) {
      if (ch.kind === 'disks-clean') continue
      report.verdicts.push(await checkLive(ch, { cluster: c, workloads, faults, liveAt: sampler.liveAt }).catch((e: Error) => ({ name: ch.kind, ok: false, detail: `checker error: ${e.message}` })))
    }
    report.series = [...sampler.series.values(), ...workloadSeries(workloads, t0Wall, t0Mono)]
    o.log(`checked in ${Date.now() - checking} ms`)
    const stopping = Date.now()
    const { serverExit } = await c.stop()
    o.log(`cluster stopped in ${Date.now() - stopping} ms`)
    for (const ch of s.checkers ?? []) if (ch.kind === 'disks-clean') report.verdicts.push(await checkDisks(c, serverExit))
    report.ok = report.verdicts.length > 0 && report.verdicts.every((v) => v.ok)
  } catch (e) {
    report.error = (e as Error).message
    report.ok = false
  } finally {
    await cleanup().catch(() => undefined)
    pendingCleanups.delete(cleanup)
    report.wallMs = Date.now() - started
  }
  return report
}

/** Polls the pairs every 50 ms: each primary's lag (a series), and when each backup is seen live. */
function sample(c: Cluster, t0: number, faults: FaultRun) {
  const series = new Map<string, Series>()
  const liveAt = new Map<string, number>()
  let stopped = false
  const pairs = [...c.vms.values()].filter((v) => v.backup)
  void (async () => {
    let n = 0
    while (!stopped) {
      const t = Math.round(performance.now() - t0)
      await Promise.all(
        pairs.map(async (v) => {
          const name = v.spec.name
          if (!liveAt.has(name)) {
            const b = await c.vmInfo(name, 'backup')
            if (b?.ft?.role === 'live') liveAt.set(name, Math.round(performance.now() - t0))
          }
          if (n % 5 === 0 && !faults.primaryLost.has(name)) {
            const p = await c.vmInfo(name, 'primary')
            const lag = p?.ft?.lagMs
            if (typeof lag === 'number') {
              const s = series.get(name) ?? { name: `${name} FT lag`, unit: 'lag (ms)', points: [] }
              s.points.push([t, lag])
              series.set(name, s)
            }
          }
        }),
      )
      n++
      await sleep(50)
    }
  })()
  return { series, liveAt, stop: () => (stopped = true) }
}

/** kv acknowledgements per 250 ms and the longest wait between two (from acked.jsonl), lock generations over time. */
function workloadSeries(w: Workloads, t0Wall: number, t0Mono: number): Series[] {
  const out: Series[] = []
  for (const k of w.kv) {
    if (!existsSync(k.log)) continue
    const recs = readAckLog(k.log).records
    const bins = new Map<number, number>()
    for (const r of recs) bins.set(Math.floor((r.t - t0Wall) / 250), (bins.get(Math.floor((r.t - t0Wall) / 250)) ?? 0) + 1)
    const last = Math.max(0, ...bins.keys())
    out.push({ name: `${k.vm} SETs acknowledged per 250 ms`, unit: 'acks / 250 ms', points: Array.from({ length: last + 1 }, (_, i) => [i * 250, bins.get(i) ?? 0] as [number, number]) })
    // the wait since the previous acknowledgement: an outage shows as a spike (client-side latency bound)
    const gaps: [number, number][] = recs.slice(1).map((r, i) => [r.t - t0Wall, r.t - recs[i].t])
    out.push({ name: `${k.vm} wait since the previous ack`, unit: 'ack gap (ms)', points: gaps })
  }
  for (const l of w.lock) {
    const lines = readHolders(l.records)
    out.push({ name: `${l.lock} holder generation`, unit: 'lock generation', points: lines.map((h) => [h.mono - t0Mono, h.generation]) })
  }
  return out
}

/** `tandem cluster up`: the cluster of a scenario, running until SIGINT/SIGTERM; its URLs in DIR/cluster.json. */
export async function clusterUp(s: Scenario, o: { dir: string; tandem: string[]; log?: (l: string) => void; signal: AbortSignal }): Promise<void> {
  const log = o.log ?? ((l: string) => process.stderr.write(l + '\n'))
  const c = await Cluster.create(s, o.dir, o.tandem, log)
  const cleanup = () => c.stop()
  pendingCleanups.add(cleanup)
  try {
    await c.up()
    const state = {
      pid: process.pid,
      network: c.net.mode,
      namespaces: c.net.namespaces,
      server: c.server.url,
      nbd: `nbd://${c.server.addr}:${c.server.nbdPort}`,
      switch: c.switchUrl,
      hosts: Object.fromEntries([...c.hosts.values()].map((h) => [h.name, h.url])),
      vms: Object.fromEntries([...c.vms.entries()].map(([n, v]) => [n, { host: v.primary.name, backup: v.backup?.name ?? null, mac: v.mac, pid: v.info.pid }])),
    }
    writeFileSync(join(o.dir, 'cluster.json'), JSON.stringify(state, null, 2) + '\n')
    process.stdout.write(JSON.stringify(state) + '\n')
    log(`cluster up (${join(o.dir, 'cluster.json')}); tandem cluster down ${o.dir}, or SIGINT, stops it`)
    await new Promise<void>((r) => (o.signal.aborted ? r() : o.signal.addEventListener('abort', () => r())))
  } finally {
    await c.stop()
    pendingCleanups.delete(cleanup)
  }
}

/** `tandem cluster down DIR`: SIGTERM to the `cluster up` whose state DIR holds; waits for it to end. */
export async function clusterDown(dir: string, waitMs = 60_000): Promise<boolean> {
  const file = join(dir, 'cluster.json')
  if (!existsSync(file)) throw new Error(`no running cluster in ${dir} (no cluster.json)`)
  const { pid } = JSON.parse(readFileSync(file, 'utf8')) as { pid: number }
  const alive = () => {
    try {
      process.kill(pid, 0)
      return true
    } catch {
      return false
    }
  }
  if (!alive()) return false
  process.kill(pid, 'SIGTERM')
  for (const end = Date.now() + waitMs; alive() && Date.now() < end; ) await sleep(100)
  return !alive()
}

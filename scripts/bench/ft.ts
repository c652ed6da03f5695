/**
 * Fault-tolerant pairs (issue 17), each figure beside its published anchor (shared/reference/ft.md):
 * throughput FT over plain (the cpu guest; kvstore under `tandem kv load` at a fixed offered rate),
 * the output delay added per request (kv round trips plain / FT, the primary's held-output delay),
 * log bandwidth idle and under load, lag p50/p99 under load, failover time after a SIGKILL of the
 * primary (loss detection and go-live apart, at two loss timeouts), and both backup-read modes on a
 * disk. Plain and FT runs alternate; CPU time is the `vm run` processes' own (their summary's
 * cpuSeconds: the primary's plus the backup's for a pair). `npm run bench` prints it (BENCH_ONLY=ft);
 * BENCH_FT_PARTS=cpu,kv,idle,failover,disk picks parts, BENCH_FT_RATE the offered kv rate (2000/s),
 * BENCH_FT_FAILOVERS the runs per failover row (3).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { cpus, loadavg } from 'node:os'
import { parseUdpAddress } from '../../src/client/net/address.js'
import { UdpUplink } from '../../src/client/net/udp-uplink.js'
import { KvClient } from '../../src/client/kv/client.js'
import { percentiles, type Percentiles } from '../../src/client/ft/stats.js'

export const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
export const f = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : '-')
export const spread = (xs: number[], d: number) => `${f(median(xs), d)} [${f(Math.min(...xs), d)}–${f(Math.max(...xs), d)}]`
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
/** a signal to a process group that may have ended already */
const signalGroup = (p: { child: ChildProcess }, s: NodeJS.Signals) => {
  try {
    process.kill(-p.child.pid!, s)
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e
  }
}

const VM_MAC = '02:00:00:00:00:42'
/** requests outstanding: enough that the offered rate, not the round trip, sets an FT pair's pace */
export const KV_WINDOW = 256

export interface FtBenchOptions {
  dir: string
  reps: number
  /** dist/src/client/cli/tandem.cjs */
  cli: string
  env: NodeJS.ProcessEnv
}

interface Proc {
  child: ChildProcess
  out: () => string
  err: () => string
  /** performance.now() when each stderr line arrived */
  lines: { t: number; line: string }[]
  exited: Promise<{ code: number | null; signal: string | null }>
}

export interface Summary {
  seconds: number
  cpuSeconds: number
  mips: number
  instructions: number
  ft?: { role: string; outcome: string; logBytes: number; takeoverMs?: number; lag?: Percentiles; outputDelay?: Percentiles; colo?: import('../../src/client/ft/colo/run-colo.js').ColoStats }
}

export interface LoadSummary {
  acked: number
  seconds: number
  retries: number
  rttMs: { p50: number; p99: number; max: number }
}

/** A pair's two sides and their summaries. */
interface PairEnd {
  primary: Summary
  backup: Summary
}

export class Bench {
  private n = 0
  private ls = ''
  private sw: Proc | null = null
  /** every process started, killed (their groups) at teardown if still running */
  private readonly procs: Proc[] = []
  switchUrl = ''

  constructor(private readonly o: FtBenchOptions) {}

  /**
   * `node tandem.cjs ARGS` in its own process group (a SIGKILL of -pid takes it whole); `cpu`: on
   * that core only (taskset, which execs the command: the pid is node's).
   */
  proc(args: string[], cpu?: number): Proc {
    const argv = [...pinned(cpu), process.execPath, this.o.cli, ...args]
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: this.o.env, detached: true })
    let out = ''
    let err = ''
    let partial = ''
    const lines: Proc['lines'] = []
    child.stdout!.on('data', (d) => (out += d))
    child.stderr!.on('data', (d) => {
      const t = performance.now()
      err += d
      const parts = (partial + d).split('\n')
      partial = parts.pop()!
      for (const line of parts) lines.push({ t, line })
    })
    const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
    const p = { child, out: () => out, err: () => err, lines, exited }
    this.procs.push(p)
    return p
  }

  /** The first stderr line of `p` matching `re` (from line `from` on), with when it arrived. */
  async line(p: Proc, re: RegExp, ms = 20_000, from = 0): Promise<{ t: number; m: RegExpExecArray }> {
    const t0 = performance.now()
    for (let i = from; ; ) {
      for (; i < p.lines.length; i++) {
        const m = re.exec(p.lines[i].line)
        if (m) return { t: p.lines[i].t, m }
      }
      if (p.child.exitCode !== null || p.child.signalCode !== null) throw new Error(`exited before ${re}: ${p.err().slice(-600)}`)
      if (performance.now() - t0 > ms) throw new Error(`no ${re} in ${ms} ms: ${p.err().slice(-600)}`)
      await sleep(2)
    }
  }

  async summary(p: Proc, what: string): Promise<Summary> {
    const e = await p.exited
    try {
      return JSON.parse(p.out().trim().split('\n').at(-1)!) as Summary
    } catch {
      throw new Error(`${what} ended ${e.code ?? e.signal} without a summary: ${p.err().slice(-600)}`)
    }
  }

  async setup(): Promise<void> {
    rmSync(this.o.dir, { recursive: true, force: true })
    spawnSync('mkdir', ['-p', this.o.dir])
    this.ls = join(this.o.dir, 'lockspace')
    const r = spawnSync(process.execPath, [this.o.cli, 'lock', 'init', '--lockspace', this.ls, '--hosts', '128', '--locks', '128'], { encoding: 'utf8', env: this.o.env })
    if (r.status !== 0) throw new Error(`lock init: ${r.stderr}`)
    this.sw = this.proc(['switch', '--listen', '127.0.0.1:0'])
    await new Promise<void>((resolve, reject) => {
      const check = () => {
        const m = /"tandem switch ready".*"port":(\d+)|"port":(\d+).*"tandem switch ready"/.exec(this.sw!.out())
        if (m) return resolve(void (this.switchUrl = `udp:127.0.0.1:${m[1] ?? m[2]}`))
        if (this.sw!.child.exitCode !== null) return reject(new Error(`tandem switch: ${this.sw!.err()}`))
        setTimeout(check, 5)
      }
      check()
    })
  }

  async teardown(): Promise<void> {
    for (const p of this.procs) if (p !== this.sw && p.child.exitCode === null && p.child.signalCode === null) signalGroup(p, 'SIGKILL')
    this.sw?.child.kill('SIGTERM')
    await Promise.all(this.procs.map((p) => p.exited))
    rmSync(this.o.dir, { recursive: true, force: true })
  }

  /** A pair (fresh VM and host names in the shared lockspace): the backup listening, then the primary. */
  async pair(args: string[], o: { backup?: string[]; primary?: string[]; pin?: boolean } = {}): Promise<{ primary: Proc; backup: Proc }> {
    const k = ++this.n
    const common = ['vm', 'run', '--json', '--name', `ft${k}`, '--ft-lockspace', this.ls, ...args]
    const backup = this.proc([...common, '--ft-backup', '127.0.0.1:0', '--ft-host', `b${k}`, ...(o.backup ?? [])], o.pin ? 1 : undefined)
    const port = (await this.line(backup, /FT backup listening on 127\.0\.0\.1:(\d+)/)).m[1]
    const primary = this.proc([...common, '--ft-primary', `127.0.0.1:${port}`, '--ft-host', `p${k}`, ...(o.primary ?? [])], o.pin ? 0 : undefined)
    return { primary, backup }
  }

  /** Both sides to their end; the backup follows a primary's clean end (SIGKILL after 10 s). */
  async pairEnd(p: { primary: Proc; backup: Proc }): Promise<PairEnd> {
    const primary = await this.summary(p.primary, 'the primary')
    // a backup that took over (the pair split) runs on live: stopped like a VM
    if (p.backup.lines.some((l) => /going live/.test(l.line))) p.backup.child.kill('SIGTERM')
    const t = setTimeout(() => p.backup.child.kill('SIGKILL'), 10_000)
    const backup = await this.summary(p.backup, 'the backup').finally(() => clearTimeout(t))
    return { primary, backup }
  }

  vmRun(args: string[], cpu?: number): Summary {
    const argv = [...pinned(cpu), process.execPath, this.o.cli, 'vm', 'run', '--json', ...args]
    const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', env: this.o.env })
    if (r.status !== 0) throw new Error(`vm run ${args.join(' ')}: ${r.status} ${r.stderr.slice(-600)}`)
    return JSON.parse(r.stdout) as Summary
  }

  async kvLoad(args: string[]): Promise<LoadSummary> {
    const log = join(this.o.dir, `acked-${++this.n}.jsonl`)
    const p = this.proc(['kv', 'load', '--switch', this.switchUrl, '--vm-mac', VM_MAC, '--log', log, '--json', '--timeout', '10', ...args])
    const e = await p.exited
    rmSync(log, { force: true })
    if (e.code !== 0) throw new Error(`kv load ended ${e.code ?? e.signal}: ${p.err().slice(-600)}`)
    return JSON.parse(p.out()) as LoadSummary
  }

  kvArgs = () => ['--guest', 'kvstore', '--switch', this.switchUrl, '--mac', VM_MAC]

  /** A VM (or pair) serving kvstore: ready when the guest has printed its banner. */
  async kvReady(p: Proc): Promise<void> {
    await this.line(p, /kvstore/)
  }
}

/** Alternating rounds of a plain side and an FT side. */
export async function alternate<P, F>(reps: number, plain: () => Promise<P>, ft: () => Promise<F>): Promise<{ plain: P[]; ft: F[] }> {
  const r = { plain: [] as P[], ft: [] as F[] }
  for (let i = 0; i < reps; i++) {
    if (i % 2 === 0) r.plain.push(await plain()), r.ft.push(await ft())
    else r.ft.push(await ft()), r.plain.push(await plain())
  }
  return r
}

const mbit = (bytes: number, seconds: number) => (bytes * 8) / seconds / 1e6
const ms = (p: Percentiles | undefined, d = 1) => (p ? `p50 ${f(p.p50, d)} / p99 ${f(p.p99, d)} / max ${f(p.max, d)} ms (${p.count})` : '-')

/** A command prefix that runs it on core `cpu` only (none: anywhere). */
function pinned(cpu: number | undefined): string[] {
  return cpu === undefined ? [] : ['taskset', '-c', String(cpu)]
}

/** Whether `taskset` (util-linux) is here and this machine has a second core for the backup. */
function canPin(): boolean {
  return cpus().length >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0
}

/**
 * The cpu guest plain and as a pair, twice: each process free to use both cores (a plain run of the
 * translator takes ~1.9 of them for its 0.3 s: V8 compiles and collects on background threads, so
 * a pair — two such processes on the same two cores — is measured against a VM with twice its
 * machine); then one core per side, as on two one-core hosts (taskset: plain on core 0; the
 * primary on core 0, the backup on core 1).
 */
async function cpuGuest(b: Bench, reps: number): Promise<void> {
  await cpuGuestRound(b, reps, false)
  if (canPin()) {
    await cpuGuestRound(b, reps, true)
    await cpuThreeWays(b, reps, 'cpu')
    await cpuThreeWays(b, reps, 'cpu10')
  } else console.log('  one core per side: SKIP (needs taskset and two cores)')
}

/**
 * A guest (cpu, and cpu10: the cpu guest's work ten times, ~0.7 s, where start-up and the
 * translator's warm-up weigh little), one core per side, three ways in rotating order: plain alone
 * on core 0; plain on core 0 beside the same run on core 1 (what the backup is to the primary); the
 * pair (primary core 0, backup core 1). The two cores of this machine are not independent (a
 * CPU-bound process on one slows the other's by 10–20 %), so the second is the plain run a pair on
 * two such cores is to be held against; both ratios are printed. This machine's speed also drifts
 * by tens of percent over minutes, so besides the ratio of medians each round's own ratio is taken
 * (its three runs are seconds apart) and their median printed.
 */
async function cpuThreeWays(b: Bench, reps: number, name: 'cpu' | 'cpu10'): Promise<void> {
  const guest = ['--guest', name]
  const alone: Summary[] = []
  const beside: Summary[] = []
  const ft: PairEnd[] = []
  const ways: (() => Promise<void>)[] = [
    async () => void alone.push(b.vmRun(guest, 0)),
    async () => {
      const neighbour = b.proc(['vm', 'run', '--json', ...guest], 1)
      beside.push(b.vmRun(guest, 0))
      const e = await neighbour.exited
      if (e.code !== 0) throw new Error(`the neighbour ended ${e.code ?? e.signal}: ${neighbour.err().slice(-600)}`)
    },
    async () => void ft.push(await b.pairEnd(await b.pair(guest, { pin: true }))),
  ]
  for (let i = 0; i < reps; i++) for (let k = 0; k < ways.length; k++) await ways[(i + k) % ways.length]()
  const mips = (xs: Summary[]) => xs.map((s) => s.mips)
  const mf = ft.map((s) => s.primary.mips)
  const lag = ft.map((s) => s.primary.ft?.lag).filter((l): l is Percentiles => l !== undefined)
  const perRound = (plain: Summary[]) => mf.map((m, i) => m / plain[i].mips)
  console.log(`${name} guest (${f(alone[0].instructions / 1e6, 1)} M instructions), one core per side, ${reps} rounds rotating: plain alone, plain beside the same run on core 1, the pair`)
  console.log(`  MIPS   plain alone ${spread(mips(alone), 1)}   plain beside a neighbour ${spread(mips(beside), 1)}   FT ${spread(mf, 1)}`)
  console.log(`  throughput FT/plain alone ${f(median(mf) / median(mips(alone)), 2)}   FT/plain beside a neighbour ${f(median(mf) / median(mips(beside)), 2)}  (goal >= 0.95; VMware 0.94–0.99)`)
  console.log(`  per round  FT/plain alone ${spread(perRound(alone), 2)}   FT/plain beside a neighbour ${spread(perRound(beside), 2)}`)
  console.log(`  cpu    plain ${spread(alone.map((s) => s.cpuSeconds), 2)} s   FT primary+backup ${spread(ft.map((s) => s.primary.cpuSeconds + s.backup.cpuSeconds), 2)} s`)
  if (lag.length) console.log(`  lag    p50 ${spread(lag.map((l) => l.p50), 1)} ms   p99 ${spread(lag.map((l) => l.p99), 1)} ms   (goal p99 < 50 ms)`)
}

async function cpuGuestRound(b: Bench, reps: number, pin: boolean): Promise<void> {
  const r = await alternate(
    reps,
    async () => b.vmRun(['--guest', 'cpu'], pin ? 0 : undefined),
    async () => b.pairEnd(await b.pair(['--guest', 'cpu'], { pin })),
  )
  const wp = r.plain.map((s) => s.seconds)
  const wf = r.ft.map((s) => s.primary.seconds)
  const mp = r.plain.map((s) => s.mips)
  const mf = r.ft.map((s) => s.primary.mips)
  const cp = r.plain.map((s) => s.cpuSeconds)
  const cf = r.ft.map((s) => s.primary.cpuSeconds + s.backup.cpuSeconds)
  const logMbit = r.ft.map((s) => mbit(s.primary.ft!.logBytes, s.primary.seconds))
  const where = pin ? 'one core per side (plain on core 0; primary core 0, backup core 1)' : 'every process on both cores'
  console.log(`cpu guest (${f(r.plain[0].instructions / 1e6, 1)} M instructions), plain vm run vs the pair's primary, ${where}, ${reps} rounds alternating`)
  console.log(`  wall   plain ${spread(wp, 3)} s   FT ${spread(wf, 3)} s   MIPS plain ${spread(mp, 1)}  FT ${spread(mf, 1)}   throughput FT/plain ${f(median(mf) / median(mp), 2)}  (goal >= 0.95; VMware 0.94–0.99)`)
  console.log(`  cpu    plain ${spread(cp, 2)} s   FT primary+backup ${spread(cf, 2)} s   ratio ${f(median(cf) / median(cp), 2)}x (user+sys)   log ${f(median(logMbit), 3)} Mbit/s`)
  const lag = r.ft.map((s) => s.primary.ft?.lag).filter((l): l is Percentiles => l !== undefined)
  if (lag.length) console.log(`  lag    p50 ${spread(lag.map((l) => l.p50), 1)} ms   p99 ${spread(lag.map((l) => l.p99), 1)} ms   (a run of ~0.3 s: the backup's JIT warm-up is most of it)`)
}

interface KvRun {
  load: LoadSummary
  vm: Summary
  backup?: Summary
}

async function kvUnderLoad(b: Bench, reps: number, rate: number, seconds: number): Promise<void> {
  const load = ['--keys', '1000', '--rate', String(rate), '--window', String(KV_WINDOW), '--retry-ms', '500', '--duration', String(seconds)]
  const plain = async (): Promise<KvRun> => {
    const vm = b.proc(['vm', 'run', '--json', ...b.kvArgs()])
    await b.kvReady(vm)
    const l = await b.kvLoad(load)
    vm.child.kill('SIGTERM')
    return { load: l, vm: await b.summary(vm, 'kvstore') }
  }
  const ft = async (): Promise<KvRun> => {
    const p = await b.pair(b.kvArgs())
    await b.kvReady(p.primary)
    const l = await b.kvLoad(load)
    p.primary.child.kill('SIGTERM')
    const e = await b.pairEnd(p)
    return { load: l, vm: e.primary, backup: e.backup }
  }
  let splits = 0
  const ftUnsplit = async (): Promise<KvRun> => {
    for (;;) {
      const x = await ft()
      if (x.vm.ft!.outcome === 'paired' || splits >= reps) return x
      splits++
    }
  }
  const r = await alternate(reps, plain, ftUnsplit)
  const tput = (xs: KvRun[]) => xs.map((x) => x.load.acked / x.load.seconds)
  const tp = tput(r.plain)
  const tf = tput(r.ft)
  const cpuRate = (xs: KvRun[]) => xs.map((x) => (x.vm.cpuSeconds + (x.backup?.cpuSeconds ?? 0)) / x.vm.seconds)
  const cpuPerReq = (xs: KvRun[]) => xs.map((x) => ((x.vm.cpuSeconds + (x.backup?.cpuSeconds ?? 0)) / x.load.acked) * 1e3)
  console.log(`kvstore under kv load (offered ${rate}/s, window ${KV_WINDOW}, retry 500 ms, ${seconds} s, 1000 keys), plain vs FT pair, ${reps} rounds alternating`)
  console.log(`  acked/s    plain ${spread(tp, 0)}   FT ${spread(tf, 0)}   throughput FT/plain ${f(median(tf) / median(tp), 2)}  (goal >= 0.95; VMware 0.94–0.99)`)
  console.log(`  cpu        plain ${spread(cpuPerReq(r.plain), 3)} ms/request (${f(median(cpuRate(r.plain)) * 100, 0)} % of a core)   FT primary+backup ${spread(cpuPerReq(r.ft), 3)} ms/request (${f(median(cpuRate(r.ft)) * 100, 0)} % of a core)   ratio ${f(median(cpuPerReq(r.ft)) / median(cpuPerReq(r.plain)), 2)}x (user+sys)`)
  const p50 = (xs: KvRun[]) => xs.map((x) => x.load.rttMs.p50)
  const p99 = (xs: KvRun[]) => xs.map((x) => x.load.rttMs.p99)
  console.log(`  round trip p50 plain ${spread(p50(r.plain), 2)} ms   FT ${spread(p50(r.ft), 2)} ms   added ${f(median(p50(r.ft)) - median(p50(r.plain)), 2)} ms   (VMware: up to 20 ms long-distance; link RTT 0.09–0.15 ms)`)
  console.log(`  round trip p99 plain ${spread(p99(r.plain), 2)} ms   FT ${spread(p99(r.ft), 2)} ms   added ${f(median(p99(r.ft)) - median(p99(r.plain)), 2)} ms   retries plain ${median(r.plain.map((x) => x.load.retries))} FT ${median(r.ft.map((x) => x.load.retries))}`)
  const od = r.ft.map((x) => x.vm.ft!.outputDelay!)
  const lag = r.ft.map((x) => x.vm.ft!.lag!)
  console.log(`  output delay (primary, held until acked): p50 ${spread(od.map((x) => x.p50), 2)} ms   p99 ${spread(od.map((x) => x.p99), 2)} ms   max ${spread(od.map((x) => x.max), 1)} ms`)
  console.log(`  lag under load: p50 ${spread(lag.map((x) => x.p50), 2)} ms   p99 ${spread(lag.map((x) => x.p99), 2)} ms   max ${spread(lag.map((x) => x.max), 1)} ms   (goal p99 < 50 ms; VMware typically < 100 ms)`)
  if (splits) console.log(`  ${splits} FT run(s) split under load and were run again: the backup took over a running primary (no frame for the 300 ms loss timeout on this busy machine)`)
  const bw = r.ft.map((x) => mbit(x.vm.ft!.logBytes, x.vm.seconds))
  const perReq = r.ft.map((x) => x.vm.ft!.logBytes / x.load.acked)
  console.log(`  log under load: ${spread(bw, 2)} Mbit/s over the primary's run (${f(median(perReq), 0)} bytes per acked request)   (VMware: 1.5–18 Mbit/s on its workloads)`)
}

async function kvIdle(b: Bench, seconds: number): Promise<void> {
  const vm = b.proc(['vm', 'run', '--json', ...b.kvArgs()])
  await b.kvReady(vm)
  await sleep(seconds * 1000)
  vm.child.kill('SIGTERM')
  const plain = await b.summary(vm, 'kvstore')
  const p = await b.pair(b.kvArgs())
  await b.kvReady(p.primary)
  await sleep(seconds * 1000)
  p.primary.child.kill('SIGTERM')
  const e = await b.pairEnd(p)
  const cpu = e.primary.cpuSeconds + e.backup.cpuSeconds
  console.log(`kvstore idle (no requests) ${f(e.primary.seconds, 1)} s: log ${f(mbit(e.primary.ft!.logBytes, e.primary.seconds), 4)} Mbit/s (${e.primary.ft!.logBytes} bytes)   (VMware idle guest 0.5–1.5 Mbit/s, mostly timer interrupts)`)
  console.log(`  cpu plain ${f((plain.cpuSeconds / plain.seconds) * 100, 0)} % of a core   FT primary+backup ${f((cpu / e.primary.seconds) * 100, 0)} % of a core (user+sys)   primary's lag p50 ${f(e.primary.ft!.lag!.p50, 1)} p99 ${f(e.primary.ft!.lag!.p99, 1)} ms (${e.primary.ft!.lag!.count} samples)`)
}

interface Failover {
  /** kill to the backup's "lost" line */
  detectMs: number
  /** the backup's own ms from losing the peer to live */
  takeoverMs: number
  /** kill to the backup's "going live" line */
  liveMs: number
  /** kill to the first answer to a GET sent after the kill */
  answerMs: number
}

/**
 * The primary's process group killed during kv load: SIGKILL (a process crash: its host's kernel
 * resets the FT connection at once) or SIGSTOP (a host that stops dead: no reset, the channel falls
 * silent and the loss timeout decides). A probe sends a GET (no retry) every 5 ms: the first answer
 * to one sent after the kill can only come from the backup, live. Null when the pair split before
 * the kill (the backup claimed the VM: its loss timeout passed while this busy machine did not run
 * the primary).
 */
async function failoverOnce(b: Bench, lossMs: number, signal: 'SIGKILL' | 'SIGSTOP', killAfterMs: number): Promise<Failover | 'split' | 'halted'> {
  const p = await b.pair([...b.kvArgs(), '--ft-loss-ms', String(lossMs)])
  const split = () => p.backup.lines.some((l) => /the FT primary is lost/.test(l.line))
  try {
    await b.kvReady(p.primary)
  } catch (e) {
    if (!split()) throw e
  }
  if (split()) {
    signalGroup(p.primary, 'SIGKILL')
    signalGroup(p.backup, 'SIGKILL')
    await Promise.all([p.primary.exited, p.backup.exited])
    return 'split'
  }
  const loadP = b.kvLoad(['--keys', '100', '--rate', '400', '--duration', String((killAfterMs + 1000) / 1000)])
  loadP.catch(() => {}) // awaited below; a failure must not end the bench while the kill is timed
  const uplink = await UdpUplink.join(parseUdpAddress(b.switchUrl, 'switch'))
  const client = new KvClient({ port: uplink, vmMac: Buffer.from(VM_MAC.split(':').map((x) => parseInt(x, 16))), retryMs: 1000, timeoutMs: 1000 })
  let killT = Infinity
  let answerT = Infinity
  let probing = true
  const inflight: Promise<unknown>[] = []
  const probe = (async () => {
    while (probing) {
      const sent = performance.now()
      inflight.push(client.request('GET k1').then((r) => {
        if (sent > killT && answerT === Infinity) answerT = sent + r.rttMs
      }, () => {}))
      await sleep(5)
    }
  })()
  await sleep(killAfterMs)
  if (split()) {
    // the backup took over during the load, before the kill
    probing = false
    await probe
    await Promise.all(inflight)
    uplink.close()
    await loadP.catch(() => {})
    signalGroup(p.primary, 'SIGKILL')
    signalGroup(p.backup, 'SIGKILL')
    await Promise.all([p.primary.exited, p.backup.exited])
    return 'split'
  }
  const from = p.backup.lines.length
  killT = performance.now()
  signalGroup(p.primary, signal)
  const lost = await b.line(p.backup, /the FT primary is lost/, 10_000, from)
  const live = await b.line(p.backup, /going live|halted/, 10_000, from)
  if (/halted/.test(live.m[0])) {
    // the claim failed (e.g. the stopped primary holds the lockspace file's lock): the backup halts
    probing = false
    await probe
    await Promise.all(inflight)
    uplink.close()
    signalGroup(p.primary, 'SIGKILL')
    signalGroup(p.backup, 'SIGKILL')
    await Promise.all([p.primary.exited, p.backup.exited, loadP.catch(() => {})])
    return 'halted'
  }
  while (answerT === Infinity && performance.now() - killT < 5000) await sleep(5)
  probing = false
  await probe
  await Promise.all(inflight)
  uplink.close()
  if (signal === 'SIGSTOP') signalGroup(p.primary, 'SIGKILL')
  await loadP
  p.backup.child.kill('SIGTERM')
  const bs = await b.summary(p.backup, 'the backup')
  if (bs.ft?.outcome !== 'live') throw new Error(`the backup ended ${bs.ft?.outcome}, not live`)
  return { detectMs: lost.t - killT, takeoverMs: bs.ft.takeoverMs ?? NaN, liveMs: live.t - killT, answerMs: answerT - killT }
}

async function failover(b: Bench, runs: number): Promise<void> {
  console.log(`failover: the primary's process group killed during kv load (400/s), ${runs} runs each; a probe GET every 5 ms; ms from the kill, p50 / max   (goal < 500 ms; VMware: detection "a few seconds" + the lag)`)
  for (const signal of ['SIGKILL', 'SIGSTOP'] as const) {
    for (const lossMs of [300, 100]) {
      const got: Failover[] = []
      let splits = 0
      let halts = 0
      for (let i = 0; got.length < runs && splits + halts < runs; i++) {
        const r = await failoverOnce(b, lossMs, signal, 400 + ((i * 211) % 400))
        if (r === 'split') splits++
        else if (r === 'halted') halts++
        else got.push(r)
      }
      const row = (k: keyof Failover) => `${f(median(got.map((x) => x[k])), 0)} / ${f(Math.max(...got.map((x) => x[k])), 0)}`
      const split = splits ? `   ${splits} pair(s) split before the kill (the backup took over a running primary: the loss timeout passed without a frame on this busy machine)` : ''
      const halt = halts ? `   ${halts} backup(s) halted after the kill (the claim failed: the stopped primary held the lockspace file's lock)` : ''
      console.log(`  ${signal} --ft-loss-ms ${String(lossMs).padStart(3)}: detected ${row('detectMs')}   backup takeoverMs (claim, fence, live) ${row('takeoverMs')}   live ${row('liveMs')}   first answer ${row('answerMs')}   (runs: ${got.map((x) => f(x.answerMs, 0)).join(' ')})${split}${halt}`)
    }
  }
}

async function diskModes(b: Bench, dir: string, reps: number): Promise<void> {
  console.log(`backup reads from the disk vs from the log: a raw file (--disk: 8 MiB for diskio, 2 MiB for disklog), ${reps} rounds; plain / FT reads=disk / FT reads=log   (VMware: backup reading its disk cost ~1–4 % throughput, cut the log 12→3 and 18→8 Mbit/s)`)
  for (const guest of ['diskio', 'disklog']) {
    const file = join(dir, `${guest}.raw`)
    // disklog appends a synced record per block to the disk's end: 2 MiB is 2048 records
    const fresh = () => (rmSync(file, { force: true }), writeFileSync(file, ''), spawnSync('truncate', ['-s', guest === 'disklog' ? '2M' : '8M', file]))
    const sides: Record<string, { secs: number[]; cpu: number[]; mbit: number[]; bytes: number[] }> = {}
    const modes = ['plain', 'disk', 'log'] as const
    for (const m of modes) sides[m] = { secs: [], cpu: [], mbit: [], bytes: [] }
    for (let i = 0; i < reps; i++) {
      for (let k = 0; k < modes.length; k++) {
        const m = modes[(i + k) % modes.length]
        fresh()
        if (m === 'plain') {
          const s = b.vmRun(['--guest', guest, '--disk', file, '--name', `plain-${guest}`])
          sides[m].secs.push(s.seconds)
          sides[m].cpu.push(s.cpuSeconds)
          continue
        }
        const e = await b.pairEnd(await b.pair(['--guest', guest, '--disk', file, '--backup-reads', m]))
        sides[m].secs.push(e.primary.seconds)
        sides[m].cpu.push(e.primary.cpuSeconds + e.backup.cpuSeconds)
        sides[m].mbit.push(mbit(e.primary.ft!.logBytes, e.primary.seconds))
        sides[m].bytes.push(e.primary.ft!.logBytes)
      }
    }
    const p = median(sides.plain.secs)
    const row = (m: 'disk' | 'log') => `reads=${m} ${spread(sides[m].secs.map((x) => x * 1000), 0)} ms (FT/plain throughput ${f(p / median(sides[m].secs), 2)}, cpu ${f(median(sides[m].cpu), 2)} s, log ${f(median(sides[m].bytes) / 1024, 0)} KiB = ${f(median(sides[m].mbit), 1)} Mbit/s)`
    console.log(`  ${guest.padEnd(8)} plain ${spread(sides.plain.secs.map((x) => x * 1000), 0)} ms (cpu ${f(median(sides.plain.cpu), 2)} s)   ${row('disk')}   ${row('log')}`)
  }
}

export async function ftBench(o: FtBenchOptions): Promise<void> {
  const b = new Bench(o)
  await b.setup()
  const load0 = loadavg()[0]
  const t0 = performance.now()
  try {
    console.log(`Fault-tolerant pairs on loopback (backup and primary on this machine, a tandem switch between VMs and clients; CPU = the vm run processes' user+sys)`)
    const parts = (process.env.BENCH_FT_PARTS ?? 'cpu,kv,idle,failover,disk').split(',')
    if (parts.includes('cpu')) await cpuGuest(b, o.reps)
    if (parts.includes('kv')) await kvUnderLoad(b, o.reps, Number(process.env.BENCH_FT_RATE ?? 2000), 3)
    if (parts.includes('idle')) await kvIdle(b, 5)
    if (parts.includes('failover')) await failover(b, Number(process.env.BENCH_FT_FAILOVERS ?? 3))
    if (parts.includes('disk')) await diskModes(b, o.dir, o.reps)
  } finally {
    await b.teardown()
  }
  console.log(`  load average ${load0.toFixed(1)} → ${loadavg()[0].toFixed(1)} on ${cpus().length} cores; FT section ${((performance.now() - t0) / 1000).toFixed(0)} s`)
}

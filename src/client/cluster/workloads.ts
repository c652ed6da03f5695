import { join } from 'node:path'
import { runCommand } from './net.js'
import type { Cluster } from './cluster.js'
import type { Proc } from './processes.js'
import type { Workload } from './scenario.js'

export interface KvRun {
  vm: string
  log: string
  proc: Proc
  summary: Promise<{ code: number | null; json: Record<string, unknown> | null; stderr: string }>
}

export interface LockRun {
  lock: string
  lockspace: string
  records: string
  /** contender name -> its current `lock run` */
  current: Map<string, Proc>
  /** exits of every `lock run`: contender, status */
  exits: { contender: string; code: number | null; signal: string | null }[]
  done: Promise<void>
}

export interface FioRun {
  disk: string
  passes: { code: number | null; out: string }[]
  done: Promise<void>
}

export interface Workloads {
  kv: KvRun[]
  lock: LockRun[]
  fio: FioRun[]
  /** resolves when every workload ended */
  done: Promise<void>
}

/**
 * What a holder runs under `lock run`: one line `HOST GENERATION WALL MONO` every 20 ms for
 * HOLD_MS, appended to REC (O_APPEND: the file's order is the order of the writes). WALL is its
 * host's wall clock (the system's plus the host's offset, TANDEM_WALL_OFFSET_FILE, when a clock
 * fault may hit it), and it holds for HOLD_MS of that clock, as a program that times itself by
 * the wall clock would; MONO is /proc/uptime in ms (holders.ts).
 */
const HOLDER =
  'wall() { echo $(( $(date +%s%3N) + $(cat "$TANDEM_WALL_OFFSET_FILE" 2>/dev/null || echo 0) )); }; ' +
  'end=$(( $(wall) + HOLD_MS )); while [ "$(wall)" -lt "$end" ]; do read up _ < /proc/uptime; echo "$TANDEM_LOCK_HOST $TANDEM_LOCK_GENERATION $(wall) ${up%.*}${up#*.}0" >> "$REC"; sleep 0.02; done'

/** Starts every workload of the scenario (now is the run's time 0). */
export async function startWorkloads(c: Cluster, list: Workload[], seed: number, short: boolean): Promise<Workloads> {
  const w: Workloads = { kv: [], lock: [], fio: [], done: Promise.resolve() }
  const ends: Promise<unknown>[] = []
  for (const [i, x] of list.entries()) {
    if (x.kind === 'kv') {
      const vm = c.vms.get(x.vm)!
      const log = join(c.dir, `kv-${x.vm}.jsonl`)
      const proc = c.start(`kv-load-${x.vm}`, ['kv', 'load', '--switch', c.switchUrl, '--vm-mac', vm.mac, '--keys', String(x.keys ?? 64), '--rate', String(x.rate ?? 200), '--window', String(x.window ?? 8), '--duration', String(x.durationMs / 1000), '--log', log, '--timeout', '30', '--seed', String(seed + i), '--json'])
      const summary = proc.exited.then(({ code }) => {
        let json: Record<string, unknown> | null = null
        try {
          json = JSON.parse(proc.lines.at(-1) ?? '') as Record<string, unknown>
        } catch {
          /* no summary */
        }
        return { code, json, stderr: proc.stderr() }
      })
      w.kv.push({ vm: x.vm, log, proc, summary })
      ends.push(summary)
    }
    if (x.kind === 'lock') {
      const r = await lockLoop(c, x)
      w.lock.push(r)
      ends.push(r.done)
    }
    if (x.kind === 'fio') {
      const r = fioLoop(c, x, short)
      w.fio.push(r)
      ends.push(r.done)
    }
  }
  w.done = Promise.all(ends).then(() => undefined)
  return w
}

async function lockLoop(c: Cluster, x: Extract<Workload, { kind: 'lock' }>): Promise<LockRun> {
  const l = c.lease
  const lockspace = join(c.dir, `lockspace-${x.lock}`)
  const init = await runCommand(c.tandem[0], [...c.tandem.slice(1), 'lock', 'init', '--lockspace', lockspace, '--hosts', '16', '--locks', '16', '--heartbeat-ms', String(l.heartbeatMs), '--lease-ms', String(l.leaseMs), '--fence-margin-ms', String(l.fenceMarginMs)])
  if (init.status !== 0) throw new Error(`lock init: ${init.stderr}`)
  const records = join(c.dir, `holders-${x.lock}.txt`)
  const r: LockRun = { lock: x.lock, lockspace, records, current: new Map(), exits: [], done: Promise.resolve() }
  const end = Date.now() + x.durationMs
  const hosts = c.scenario.hosts.map((h) => c.hosts.get(h.name)!) // the scenario's order: c1 on the first host
  const contender = async (n: number) => {
    const name = `c${n + 1}`
    // contenders run on the hosts in turn: in their namespaces, when there are, and on their wall clock
    const host = hosts[n % hosts.length]
    const node = c.net.mode === 'netns' ? host.name : undefined
    const wall = host.wallFile ? { TANDEM_WALL_OFFSET_FILE: host.wallFile } : {}
    while (Date.now() < end) {
      const p = c.start(`lock-${x.lock}-${name}`, ['lock', 'run', x.lock, '--lockspace', lockspace, '--host', name, '--wait', String(Math.max(1, Math.ceil((end - Date.now()) / 1000))), '--', 'sh', '-c', HOLDER], node, { REC: records, HOLD_MS: String(x.holdMs ?? 300), ...wall })
      r.current.set(name, p)
      const e = await p.exited
      r.exits.push({ contender: name, code: e.code, signal: e.signal })
    }
  }
  r.done = Promise.all(Array.from({ length: x.contenders ?? 3 }, (_, n) => contender(n))).then(() => undefined)
  return r
}

function fioLoop(c: Cluster, x: Extract<Workload, { kind: 'fio' }>, short: boolean): FioRun {
  const r: FioRun = { disk: x.disk, passes: [], done: Promise.resolve() }
  const end = Date.now() + x.durationMs
  const size = `${x.sizeMiB ?? (short ? 4 : 16)}M`
  r.done = (async () => {
    do {
      const f = await runCommand('fio', ['--name=cluster', '--ioengine=nbd', `--uri=nbd://${c.server.addr}:${c.server.nbdPort}/${x.disk}`, '--rw=randwrite', `--bs=${x.bs ?? '4k'}`, `--size=${size}`, '--iodepth=4', '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', '--verify_state_save=0', `--randseed=${r.passes.length + 1}`, '--output-format=terse'], 600_000)
      r.passes.push({ code: f.status, out: (f.stdout + f.stderr).slice(-2000) })
      if (f.status !== 0) break
    } while (Date.now() < end)
  })()
  return r
}

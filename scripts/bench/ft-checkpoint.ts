/**
 * Checkpoint FT (issue 18 items 1, 2): the stop per epoch (mean, p99) at 25 and 100 ms epochs,
 * idle (kvstore waiting for requests) and under memsweep (one-word updates across 512 pages, a few
 * pages rewritten whole); STATE bytes per epoch with and without diffs against the same pages
 * whole; the share of pages sent while the VM ran; memsweep's sweeps per second against a plain
 * run. Anchors (shared/reference/ft.md): COLO's checkpoint pause 4.5 ms idle / 24 ms loaded (p99
 * 10–78 ms); Remus 40 Hz at 100–225 % overhead. CPU time is the `vm run` processes' (primary +
 * backup). `BENCH_ONLY=ft-checkpoint npm run bench`; BENCH_CKPT_REPS runs per row (default 1).
 */
import { spawn, spawnSync } from 'node:child_process'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { cpus, loadavg } from 'node:os'

export interface CkptBenchOptions {
  dir: string
  cli: string
  env: NodeJS.ProcessEnv
}

interface Run {
  code: number | null
  out: string
  err: string
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const f = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : '-')

function vmRun(cli: string, env: NodeJS.ProcessEnv, args: string[]) {
  const child = spawn(process.execPath, [cli, 'vm', 'run', '--json', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const done = new Promise<Run>((r) => child.on('exit', (code) => r({ code, out, err })))
  return { child, done, err: () => err }
}

async function pair(o: CkptBenchOptions, name: string, guest: string, primaryArgs: string[], idleMs: number | null) {
  const dir = join(o.dir, name)
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  const ls = join(dir, 'lockspace')
  spawnSync(process.execPath, [o.cli, 'lock', 'init', '--lockspace', ls, '--hosts', '8', '--locks', '16'], { env: o.env })
  const common = ['--guest', guest, '--name', 'vm1', '--ft-lockspace', ls, '--ft-loss-ms', '3000']
  const backup = vmRun(o.cli, o.env, [...common, '--ft-backup', '127.0.0.1:0', '--ft-host', 'hb'])
  let port = 0
  for (let i = 0; i < 1200 && !port; i++) {
    port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(backup.err())?.[1] ?? 0)
    await sleep(50)
  }
  if (!port) throw new Error(`the backup did not listen within 60 s: ${backup.err()}`)
  const primary = vmRun(o.cli, o.env, [...common, '--ft-primary', `127.0.0.1:${port}`, '--ft-host', 'hp', '--ft-mode', 'checkpoint', ...primaryArgs])
  if (idleMs !== null) {
    await sleep(idleMs)
    primary.child.kill('SIGTERM')
  }
  const [p, b] = await Promise.all([primary.done, backup.done])
  const ps = JSON.parse(p.out)
  const bs = JSON.parse(b.out)
  return { ps, bs, sweeps: Number(/memsweep: sweeps (\d+)/.exec(p.err)?.[1] ?? NaN), same: ps.stateHash === bs.stateHash }
}

export async function ftCheckpointBench(o: CkptBenchOptions): Promise<void> {
  const reps = Number(process.env.BENCH_CKPT_REPS ?? 1)
  console.log(`\n== checkpoint FT (issue 18): ${cpus().length} cores, load ${loadavg()[0].toFixed(1)} at the start; ${reps} run(s) per row ==`)
  const plain: number[] = []
  const plainCpu: number[] = []
  for (let i = 0; i < reps; i++) {
    const r = await vmRun(o.cli, o.env, ['--guest', 'memsweep']).done
    plain.push(Number(/memsweep: sweeps (\d+)/.exec(r.err)?.[1]))
    plainCpu.push(JSON.parse(r.out).cpuSeconds)
  }
  const plainRate = plain.reduce((a, b) => a + b, 0) / plain.length / 3
  console.log(`plain memsweep: ${f(plainRate, 0)} sweeps/s, cpu ${f(plainCpu[0], 2)} s for 3 s`)
  console.log('row                     pause mean  p50    p99    max (ms)  epochs  B/epoch    whole B/epoch  fewer  running share  sweeps/s (vs plain)  cpu P+B s  same end')
  const rows: [string, string, string[], number | null][] = [
    ['idle 25 ms', 'kvstore', ['--ft-epoch-ms', '25', '--net', 'udp:127.0.0.1:0'], 3000],
    ['idle 100 ms', 'kvstore', ['--ft-epoch-ms', '100', '--net', 'udp:127.0.0.1:0'], 3000],
    ['memsweep 25 ms diffs', 'memsweep', ['--ft-epoch-ms', '25'], null],
    ['memsweep 25 ms whole', 'memsweep', ['--ft-epoch-ms', '25', '--no-ft-diff'], null],
    ['memsweep 100 ms diffs', 'memsweep', ['--ft-epoch-ms', '100'], null],
    ['memsweep 100 ms whole', 'memsweep', ['--ft-epoch-ms', '100', '--no-ft-diff'], null],
  ]
  for (const [label, guest, args, idle] of rows) {
    for (let i = 0; i < reps; i++) {
      const r = await pair(o, `${label.replace(/\W+/g, '-')}-${i}`, guest, args, idle)
      const c = r.ps.ft.checkpoint
      const share = c.pagesRunning / Math.max(1, c.pagesRunning + c.pagesStopped)
      const rate = r.sweeps / 3
      console.log(
        `${label.padEnd(24)}${f(c.pauseMean, 2).padStart(10)}${f(c.pause.p50, 2).padStart(7)}${f(c.pause.p99, 2).padStart(7)}${f(c.pause.max, 1).padStart(7)}${String(c.epochs).padStart(12)}${f(c.bytesPerEpoch, 0).padStart(9)}${f(c.wholeBytesPerEpoch, 0).padStart(15)}${f(c.wholeBytesPerEpoch / c.bytesPerEpoch, 1).padStart(7)}x${f(share * 100, 0).padStart(11)} %` +
          `${guest === 'memsweep' ? `${f(rate, 0).padStart(11)} (${f(rate / plainRate, 2)})` : '-'.padStart(11) + '       '}${f(r.ps.cpuSeconds + r.bs.cpuSeconds, 2).padStart(14)}  ${r.same ? 'yes' : 'NO'}`,
      )
    }
  }
  console.log('pause: the VM stopped per epoch (drain, dirty pages, hot copies, device state); "fewer": whole B/epoch over B/epoch; running share: pages sent after the VM resumed, of all pages sent')
}

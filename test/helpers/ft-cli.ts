import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { Test } from 'tap'
import { CLI, rng, tandem, tmp } from './peers.js'
import { startSwitch } from './switch-process.js'

export interface VmProcess {
  child: ChildProcess
  stderr: () => string
  stdout: () => string
  exited: Promise<{ code: number | null; signal: string | null }>
}

/**
 * `tandem vm run ARGS` as a child process (its own process group: a SIGKILL takes it whole); killed
 * at teardown. `wrap` runs it under a command that execs it (e.g. `ip netns exec NS`).
 */
export function vmProcess(t: { teardown(fn: () => unknown): void }, args: string[], o: { wrap?: string[] } = {}): VmProcess {
  const cmd = [...(o.wrap ?? []), process.execPath, CLI, 'vm', 'run', ...args]
  const child = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let out = ''
  let err = ''
  child.stdout!.on('data', (d) => (out += d))
  child.stderr!.on('data', (d) => (err += d))
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return { child, stderr: () => err, stdout: () => out, exited }
}

/** Resolves when `p`'s stderr matches `re` (its match), rejects if it exits first or after `ms`. */
export function waitFor(p: VmProcess, re: RegExp, ms = 20_000): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(new Error(`no ${re} within ${ms} ms: ${p.stderr()}`)), ms)
    const check = () => {
      const m = re.exec(p.stderr())
      if (m) done(null, m)
    }
    const done = (e: Error | null, m?: RegExpExecArray) => {
      clearTimeout(timer)
      p.child.stderr!.off('data', check)
      if (e) reject(e)
      else resolve(m!)
    }
    p.child.stderr!.on('data', check)
    void p.exited.then((x) => done(new Error(`exited (${x.code ?? x.signal}) before ${re}: ${p.stderr()}`)))
    check()
  })
}

/** A fresh file lockspace in `dir` (short lease: the tests' hosts come and go; `args`: more `lock init` options). */
export function initLockspace(dir: string, args: string[] = []): string {
  const ls = join(dir, 'lockspace')
  const r = tandem(['lock', 'init', '--lockspace', ls, '--hosts', '8', '--locks', '16', ...args])
  if (r.status !== 0) throw new Error(`lock init: ${r.stderr}`)
  return ls
}

/** A pair of `vm run` processes: the backup listening on an ephemeral port, then the primary. */
export async function startPair(t: { teardown(fn: () => unknown): void }, o: { args: string[]; lockspace: string; name?: string; backupArgs?: string[]; primaryArgs?: string[] }) {
  const name = o.name ?? 'vm1'
  // unless a test sets it: a loss timeout a busy machine's scheduling does not reach (a killed side is seen at once: its socket closes)
  const loss = o.args.includes('--ft-loss-ms') ? [] : ['--ft-loss-ms', '1500']
  const common = ['--json', '--name', name, '--ft-lockspace', o.lockspace, ...loss, ...o.args]
  const backup = vmProcess(t, [...common, '--ft-backup', '127.0.0.1:0', '--ft-host', 'host-b', ...(o.backupArgs ?? [])])
  const port = Number((await waitFor(backup, /FT backup listening on 127\.0\.0\.1:(\d+)/))[1])
  const primary = vmProcess(t, [...common, '--ft-primary', `127.0.0.1:${port}`, '--ft-host', 'host-p', ...(o.primaryArgs ?? [])])
  return { backup, primary, port }
}

/** `tandem kv ARGS` as a child: resolves with its exit and output. */
export function kv(args: string[]): { done: Promise<{ code: number | null; out: string; err: string }>; kill: (s: NodeJS.Signals) => void } {
  const c = spawn(process.execPath, [CLI, 'kv', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  c.stdout.on('data', (d) => (out += d))
  c.stderr.on('data', (d) => (err += d))
  return { done: new Promise((r) => c.on('exit', (code) => r({ code, out, err }))), kill: (s) => c.kill(s) }
}

/** the kv runs' VM MAC */
export const KV_VM_MAC = '02:00:00:00:00:42'

/**
 * One run of the SIGKILL matrix (issue 17): a kvstore pair on a fresh switch and lockspace under
 * `tandem kv load`; at a seeded moment the `victim`'s process group is SIGKILLed; the other side
 * goes live (or runs on alone); the load ends and `tandem kv check` finds every acknowledged key.
 * `args` go to both sides (e.g. `--ft-mode colo`), `primaryArgs` to the primary only (e.g.
 * `--ft-mode checkpoint`: its backup follows).
 */
export async function killRun(t: Test, i: number, r: () => number, o: { vmMac?: string; args?: string[]; primaryArgs?: string[]; victim?: 'primary' | 'backup' } = {}): Promise<void> {
  const victim = o.victim ?? 'primary'
  const mac = o.vmMac ?? KV_VM_MAC
  const dir = tmp(t, 'tandem-ft-kill-')
  const ls = initLockspace(dir)
  const sw = await startSwitch(t)
  const net = ['--guest', 'kvstore', '--switch', sw.url, '--mac', mac, ...(o.args ?? [])]
  const { backup, primary } = await startPair(t, { args: net, lockspace: ls, primaryArgs: o.primaryArgs })
  await waitFor(primary, /kvstore/)
  const acked = join(dir, 'acked.jsonl')
  const load = kv(['load', '--switch', sw.url, '--vm-mac', mac, '--keys', '40', '--rate', '400', '--duration', '2', '--log', acked, '--timeout', '10', '--json'])
  // the host dies at a seeded moment of the load
  const killAt = 200 + Math.floor((r() / 2 ** 32) * 1300)
  await new Promise((res) => setTimeout(res, killAt))
  const [dead, survivor] = victim === 'primary' ? [primary, backup] : [backup, primary]
  process.kill(-dead.child.pid!, 'SIGKILL')
  const on = await waitFor(survivor, victim === 'primary' ? /going live|took over/ : /running alone/, 10_000).then(() => true, () => false)
  t.ok(on, `run ${i}: the ${victim === 'primary' ? 'backup went live' : 'primary runs alone'} after the kill at ${killAt} ms${on ? '' : `: backup ${backup.stderr().slice(-600)} | primary ${primary.stderr().slice(-400)}`}`)
  const l = await load.done
  t.equal(l.code, 0, `run ${i}: kv load finished: ${l.err.slice(-300)}`)
  const c = await kv(['check', '--switch', sw.url, '--vm-mac', mac, '--log', acked, '--timeout', '10']).done
  t.equal(c.code, 0, `run ${i}: kv check: ${c.out}${c.err}`)
  survivor.child.kill('SIGTERM')
  await survivor.exited
}

/**
 * The SIGKILL matrix: `killRun` FT_KILL_RUNS times (default `runs`; the issues ask for 50) from one
 * seed, each run's failure reported and the next run made.
 */
export async function killMatrix(t: Test, seed: number, runs: number, o: Parameters<typeof killRun>[3] = {}): Promise<void> {
  const n = Number(process.env.FT_KILL_RUNS ?? runs)
  const r = rng(seed)
  for (let i = 0; i < n; i++) await killRun(t, i, r, o).catch((e: Error) => t.fail(`run ${i}: ${e.message}`))
  t.comment(`${n} runs (FT_KILL_RUNS=50 for the issue's 50)`)
}

import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { CLI, run, shmTmp } from './peers.js'
import { startServe } from './server.js'

/**
 * Lease settings of the tests' lockspace: short, so takeovers take seconds, yet generous for a
 * machine where other jobs stall processes for hundreds of ms (a host renews every 200 ms and
 * fences itself 1.8 s after its last renewal).
 */
export const LEASE = { heartbeatMs: 200, leaseMs: 2500, fenceMarginMs: 700 }

/** A `tandem serve` process on a tmpfs datastore (fast fdatasync: lockspace writes do not queue behind other jobs' disk I/O) whose lockspace has LEASE's timings. */
export async function leaseServer(t: { teardown(fn: () => unknown): void }, o: { wrap?: string[]; listen?: string } = {}) {
  const dir = shmTmp(t, 'tandem-hosts-')
  mkdirSync(join(dir, '.tandem'))
  const init = await run(process.execPath, [CLI, 'lock', 'init', '--lockspace', join(dir, '.tandem', 'lockspace'), '--hosts', '8', '--locks', '32', '--heartbeat-ms', String(LEASE.heartbeatMs), '--lease-ms', String(LEASE.leaseMs), '--fence-margin-ms', String(LEASE.fenceMarginMs)])
  if (init.status !== 0) throw new Error(`lock init: ${init.stderr}`)
  const s = await startServe(t, dir, o.listen ? ['--listen', o.listen] : [], { wrap: o.wrap })
  return { ...s, dir, url: `http://${o.listen ?? '127.0.0.1'}:${s.httpPort}` }
}

export interface HostProcess {
  child: ChildProcess
  /** its process group (the host runs detached: a test can kill or stop the whole group) */
  pgid: number
  url: string
  stderr(): string
  logs: string[]
  exited: Promise<{ code: number | null; signal: string | null }>
}

/**
 * Runs `tandem host NAME` against `server` on a free API port, in a process group of its own;
 * killed at teardown (its VMs too). `wrap` runs it under a command that execs it (`ip netns exec NS`).
 */
export async function startHost(t: { teardown(fn: () => unknown): void }, name: string, server: string, args: string[] = [], o: { wrap?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<HostProcess> {
  const cmd = [...(o.wrap ?? []), process.execPath, CLI, 'host', '--name', name, '--server', server, '--api-port', '0', ...args]
  const child = spawn(cmd[0], cmd.slice(1), { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } })
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  const logs: string[] = []
  const vmPids = new Set<number>()
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      logs.push(line)
      try {
        const j = JSON.parse(line) as { msg: string; api?: string; vm?: string; pid?: number }
        if (j.msg === 'tandem host ready') resolve(j.api!)
        if (j.msg === 'VM started' && j.pid) vmPids.add(j.pid)
      } catch {
        /* not a log line */
      }
    })
    void exited.then(({ code, signal }) => reject(new Error(`tandem host ${name} exited ${code ?? signal}: ${err}`)))
  })
  t.teardown(() => {
    for (const pid of [child.pid!, ...vmPids]) {
      try {
        process.kill(-pid, 'SIGCONT')
        process.kill(-pid, 'SIGKILL')
      } catch {
        /* gone */
      }
    }
  })
  return { child, pgid: child.pid!, url, stderr: () => err, logs, exited }
}

/** Is the process running (not gone, not a zombie waiting to be reaped)? */
export function running(pid: number): boolean {
  const stat = `/proc/${pid}/stat`
  if (!existsSync(stat)) return false
  try {
    const s = readFileSync(stat, 'utf8')
    return s.slice(s.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

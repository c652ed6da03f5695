import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { inspect } from 'node:util'
import { createInterface } from 'node:readline'
import { pino } from 'pino'
import { serve, type RunningServer, type ServeOptions } from '../../src/server/serve.js'
import { CLI, tmp } from './peers.js'

/**
 * A `tandem serve` in this process on free ports and a fresh datastore, stopped at teardown.
 * `opts` adds serve options (e.g. `tls`).
 */
export async function startServer(
  t: { teardown(fn: () => unknown): void },
  opts: Partial<Pick<ServeOptions, 'tls' | 'faultInjection'>> = {},
): Promise<RunningServer & { dir: string; uri: (e: string) => string }> {
  const dir = tmp(t, 'tandem-ds-')
  const s = await serve({ datastore: dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0, shutdownGraceMs: 1000, ...opts }, pino({ level: 'silent' }))
  // a failed close is a failure of the test; its error printed whole (tap's "error thrown in
  // teardown" once showed no message, CI 2026-12-02)
  t.teardown(() => {
    // ci45-47: a close that never settled while nothing kept the process alive (an unref'd timer,
    // a promise nobody resolves): the process exited mid-teardown ("test unfinished"). Say so.
    const ranDry = () => console.log(`# startServer: the process ran out of work while the server's close was pending on ${s.closeStage || '?'}; resources left: ${process.getActiveResourcesInfo().join(', ') || 'none'}`)
    process.once('beforeExit', ranDry)
    return s.close().finally(() => process.off('beforeExit', ranDry)).catch((e: unknown) => {
      console.error('startServer: the server\'s close failed:', e)
      // and into the TAP stream as comments, which CI's excerpt of the output keeps (stderr it did not, 2026-12-03)
      console.log(inspect(e).split('\n').map((l) => `# startServer: the server's close failed: ${l}`).join('\n'))
      throw e
    })
  })
  return Object.assign(s, { dir, uri: (e: string) => `nbd://127.0.0.1:${s.nbdPort}/${e}` })
}

/** The headers that carry a server's REST token (none for a server started with auth off). */
export const bearer = (token: string | null | undefined): Record<string, string> => (token ? { authorization: `Bearer ${token}` } : {})

export interface LogLine {
  level: number
  msg: string
  [k: string]: unknown
}

export interface ServeProcess {
  child: ChildProcess
  exited: Promise<{ code: number | null; signal: string | null }>
  /** every JSON log line written so far */
  logs: LogLine[]
  stderr(): string
  /** the ports, once it logs that it is ready; rejects if it exits first */
  ready: Promise<{ httpPort: number; nbdPort: number; iscsiPort: number }>
  /** resolves with the exit, or null when it is still running after `ms` */
  exitWithin(ms: number): Promise<{ code: number | null; signal: string | null } | null>
}

/**
 * Runs the built `tandem serve` as a real process on free ports (options in `args` come later and
 * win), killed at teardown. `wrap` runs it under another command that execs it (e.g.
 * `prlimit --nofile=256:256`), so signals still reach the server.
 */
export function spawnServe(t: { teardown(fn: () => unknown): void }, dir: string, args: string[] = [], o: { wrap?: string[]; env?: NodeJS.ProcessEnv } = {}): ServeProcess {
  const argv = [process.execPath, CLI, 'serve', '--datastore', dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0', ...args]
  const cmd = [...(o.wrap ?? []), ...argv]
  const child = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } })
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  const logs: LogLine[] = []
  const ready = new Promise<{ httpPort: number; nbdPort: number; iscsiPort: number }>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const j = JSON.parse(line) as LogLine
        logs.push(j)
        if (j.msg === 'tandem serve ready') resolve({ httpPort: j.httpPort as number, nbdPort: j.nbdPort as number, iscsiPort: j.iscsiPort as number })
      } catch {
        /* not a log line */
      }
    })
    void exited.then(({ code, signal }) => reject(new Error(`serve exited ${code ?? signal}: ${err}`)))
  })
  ready.catch(() => undefined)
  return {
    child,
    exited,
    logs,
    stderr: () => err,
    ready,
    exitWithin: (ms) => Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), ms).unref())]),
  }
}

/** A started `tandem serve` process (spawnServe, ready). */
export async function startServe(t: { teardown(fn: () => unknown): void }, dir: string, args: string[] = [], o: { wrap?: string[]; env?: NodeJS.ProcessEnv } = {}) {
  const p = spawnServe(t, dir, args, o)
  const ports = await p.ready
  const tokenFile = args.includes('--api-token-file') ? args[args.indexOf('--api-token-file') + 1] : join(dir, '.tandem', 'api-token')
  return { ...p, ...ports, token: readFileSync(tokenFile, 'utf8').trim() }
}

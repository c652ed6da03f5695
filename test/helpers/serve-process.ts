import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { CLI } from './peers.js'

export interface ServeProcess {
  child: ChildProcess
  nbdPort: number
  httpPort: number
  iscsiPort: number
  exited: Promise<{ code: number | null; signal: string | null }>
}

/**
 * Starts `tandem serve` as a real process on free ports, killed at teardown; resolves when it logs
 * that it is ready. (Same call as main's test/helpers/server.ts startServe, which replaces it at merge.)
 */
export function startServe(t: { teardown(fn: () => unknown): void }, dir: string): Promise<ServeProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'serve', '--datastore', dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    })
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const j = JSON.parse(line)
        if (j.msg === 'tandem serve ready') resolve({ child, nbdPort: j.nbdPort, httpPort: j.httpPort, iscsiPort: j.iscsiPort, exited })
      } catch {
        /* not a log line */
      }
    })
    void exited.then(({ code }) => reject(new Error(`serve exited ${code}: ${err}`)))
  })
}

/** A process's resident set in bytes, as the kernel counts it (/proc/PID/status VmRSS). */
export function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`no VmRSS for process ${pid}`)
  return Number(m[1]) * 1024
}

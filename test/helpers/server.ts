import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { pino } from 'pino'
import { serve, type RunningServer } from '../../src/server/serve.js'
import { CLI, tmp } from './peers.js'

/** A `tandem serve` in this process on free ports and a fresh datastore, stopped at teardown. */
export async function startServer(t: { teardown(fn: () => unknown): void }): Promise<RunningServer & { dir: string; uri: (e: string) => string }> {
  const dir = tmp(t, 'tandem-ds-')
  const s = await serve({ datastore: dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0 }, pino({ level: 'silent' }))
  t.teardown(() => s.close())
  return Object.assign(s, { dir, uri: (e: string) => `nbd://127.0.0.1:${s.nbdPort}/${e}` })
}

export interface ServeProcess {
  child: ChildProcess
  httpPort: number
  nbdPort: number
  iscsiPort: number
  exited: Promise<{ code: number | null; signal: string | null }>
}

/** Starts `tandem serve` as a real process on free ports; resolves when it logs that it is ready. */
export function spawnServe(dir: string): Promise<ServeProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'serve', '--datastore', dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const j = JSON.parse(line)
        if (j.msg === 'tandem serve ready') resolve({ child, httpPort: j.httpPort, nbdPort: j.nbdPort, iscsiPort: j.iscsiPort, exited })
      } catch {
        /* not a log line */
      }
    })
    void exited.then(({ code }) => reject(new Error(`serve exited ${code}: ${err}`)))
  })
}

import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { CLI } from './peers.js'

export interface ServeProcess {
  child: ChildProcess
  nbdPort: number
  httpPort: number
  /** every JSON log line so far */
  logs: Record<string, unknown>[]
  exited: Promise<{ code: number | null; signal: string | null }>
}

/** Starts `tandem serve` as a real process on free ports; resolves when it logs that it is ready. */
export function startServe(dir: string): Promise<ServeProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'serve', '--datastore', dir, '--http-port', '0', '--nbd-port', '0', '--iscsi-port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
    const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('exit', (code, signal) => r({ code, signal })))
    const logs: Record<string, unknown>[] = []
    let err = ''
    child.stderr!.on('data', (d) => (err += d))
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const j = JSON.parse(line) as Record<string, unknown>
        logs.push(j)
        if (j.msg === 'tandem serve ready') resolve({ child, nbdPort: j.nbdPort as number, httpPort: j.httpPort as number, logs, exited })
      } catch {
        /* not a log line */
      }
    })
    void exited.then(({ code }) => reject(new Error(`serve exited ${code}: ${err}`)))
  })
}

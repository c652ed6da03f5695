import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { CLI } from './peers.js'

export interface SwitchProcess {
  child: ChildProcess
  port: number
  /** `udp:127.0.0.1:PORT` */
  url: string
  /** its log lines, parsed */
  logs: Record<string, unknown>[]
  exited: Promise<{ code: number | null; signal: string | null }>
}

/** Runs `tandem switch --listen 127.0.0.1:0 ARGS` and waits for its ready line; killed at teardown. */
export async function startSwitch(t: { teardown(fn: () => unknown): void }, args: string[] = []): Promise<SwitchProcess> {
  const child = spawn(process.execPath, [CLI, 'switch', '--listen', '127.0.0.1:0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  // 'close', not 'exit': by then its stdout is read to the end, so `logs` holds its last line (ci35 read
  // the logs on 'exit' and missed 'tandem switch stopped')
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) => child.on('close', (code, signal) => r({ code, signal })))
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let stderr = ''
  child.stderr!.on('data', (d) => (stderr += d))
  const logs: Record<string, unknown>[] = []
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      const l = JSON.parse(line) as Record<string, unknown>
      logs.push(l)
      if (l.msg === 'tandem switch ready') resolve(l.port as number)
    })
    void exited.then((e) => reject(new Error(`tandem switch exited ${e.code}: ${stderr}`)))
  })
  return { child, port, url: `udp:127.0.0.1:${port}`, logs, exited }
}

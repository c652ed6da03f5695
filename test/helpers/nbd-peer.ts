import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { shStatus } from './peers.js'

/** A port free right now (the peer binds it next; loopback only). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0))
    })
  })
}

/** Runs a peer NBD server (export `d`) until teardown; resolves to its port when it accepts connections. */
export async function peerServer(t: { teardown(fn: () => unknown): void }, cmd: string, args: (port: number) => string[]): Promise<number> {
  const port = await freePort()
  const child: ChildProcess = spawn(cmd, args(port), { stdio: ['ignore', 'ignore', 'pipe'] })
  const exited = new Promise<void>((r) => child.on('exit', () => r()))
  t.teardown(async () => {
    child.kill('SIGTERM')
    await exited
  })
  for (let i = 0; i < 200; i++) {
    if (shStatus('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/d`]).status === 0) return port
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`${cmd} did not come up on ${port}`)
}

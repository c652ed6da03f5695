import { spawn, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { needs, shStatus } from './peers.js'

/** t.test options: skipped without tgtd/tgtadm or without root (tgtd needs it). */
export function needsTgtd(): { skip?: string } {
  const n = needs('tgtd', 'tgtadm')
  if (n.skip) return n
  return process.getuid?.() === 0 ? {} : { skip: 'tgtd needs root' }
}

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0))
    })
  })
}

/**
 * A tgtd (the Linux SCSI target framework's daemon) on a free loopback port exporting `file` as
 * LUN 1 of `iqn`; killed at teardown. Returns the LU's iscsi:// URI.
 */
export async function startTgtd(t: { teardown(fn: () => unknown): void }, file: string, iqn = 'iqn.2026-11.test:tgt'): Promise<string> {
  const port = await freePort()
  const ctl = String(200 + (port % 500))
  const tgtd: ChildProcess = spawn('tgtd', ['-f', '-C', ctl, '--iscsi', `portal=127.0.0.1:${port}`], { stdio: 'ignore' })
  const exited = new Promise<void>((r) => tgtd.on('exit', () => r()))
  t.teardown(async () => {
    tgtd.kill('SIGKILL')
    await exited
  })
  const adm = (...a: string[]) => shStatus('tgtadm', ['-C', ctl, '--lld', 'iscsi', ...a])
  for (let i = 0; i < 100 && adm('--op', 'show', '--mode', 'target').status !== 0; i++) await new Promise((r) => setTimeout(r, 50))
  for (const args of [
    ['--op', 'new', '--mode', 'target', '--tid', '1', '-T', iqn],
    ['--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', file],
    ['--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL'],
  ]) {
    const r = adm(...args)
    if (r.status !== 0) throw new Error(`tgtadm ${args.join(' ')}: ${r.stderr}`)
  }
  return `iscsi://127.0.0.1:${port}/${iqn}/1`
}

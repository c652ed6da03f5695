import { spawn, type ChildProcess } from 'node:child_process'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const WATCHDOG = join(dirname(fileURLToPath(import.meta.url)), 'watchdog.js')

/** The watchdog's exit status when it fired (killed the command's group); 0 is a normal end. */
export const WATCHDOG_FIRED = 3

/**
 * `lock run`'s end of the pipe to its fencing watchdog (watchdog.ts). The watchdog may end at
 * any moment (it fired, or it was killed); a write to it then must not crash `lock run` (EPIPE):
 * every pipe error and every unexpected end of the watchdog is one call of `onLost`, after which
 * the command can no longer be fenced from outside and must be stopped by the caller.
 */
export class WatchdogLink {
  private readonly dog: ChildProcess
  private done = false
  /** called at most once: why fencing is gone */
  onLost: (reason: string) => void = () => {}

  constructor() {
    this.dog = spawn(process.execPath, [WATCHDOG], { detached: true, stdio: ['pipe', 'ignore', 'inherit'] })
    this.dog.unref()
    this.dog.stdin!.on('error', (e: NodeJS.ErrnoException) => this.pipeFailed(`the pipe to the watchdog failed (${e.code ?? e.message})`))
    this.dog.on('error', (e) => this.lost(`the watchdog could not run (${e.message})`))
    this.dog.on('exit', (code, signal) => {
      if (code === WATCHDOG_FIRED) this.lost('the watchdog found the lease expired and killed the command')
      else if (code !== 0) this.lost(`the watchdog ended (${signal ?? `exit status ${code}`})`)
      else this.done = true // the command's group is gone: nothing left to fence
    })
  }

  get pid(): number | undefined {
    return this.dog.pid
  }

  /**
   * The pipe broke: the watchdog is gone. Its exit says why (it fired: the lease expired) and
   * usually comes a moment after the write that found the pipe broken (a host resumed after a
   * pause past its lease writes a deadline first), so the pipe's own reason waits for it, briefly.
   */
  private pipeFailed(reason: string): void {
    if (this.dog.exitCode !== null || this.dog.signalCode !== null) return // its exit reports
    const timer = setTimeout(() => this.lost(reason), 100)
    timer.unref()
    this.dog.once('exit', () => clearTimeout(timer))
  }

  private lost(reason: string): void {
    if (this.done) return
    this.done = true
    this.onLost(reason)
  }

  private send(line: string): void {
    const s = this.dog.stdin
    if (!this.done && s && s.writable) s.write(line + '\n')
  }

  /** The lease must be renewed by `deadlineMs` (performance.now() time) or the command is killed. */
  deadline(deadlineMs: number): void {
    this.send(`D ${process.hrtime.bigint() + BigInt(Math.floor((deadlineMs - performance.now()) * 1e6))}`)
  }

  /** The command's process group. */
  group(pgid: number): void {
    this.send(`P ${pgid}`)
  }

  /** The command ended and the lock is being released: the watchdog exits. */
  stop(): void {
    this.send('S')
    this.done = true
    this.dog.stdin?.end()
  }
}

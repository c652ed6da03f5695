import { spawn, type ChildProcess } from 'node:child_process'
import { constants as osConstants } from 'node:os'
import { WatchdogLink } from '../locks/watchdog-link.js'

/** How much of a VM's console (stdout and stderr) the host keeps: the tail, for `GET /api/v1/vms/:name`. */
const CONSOLE_TAIL = 16 << 10

export interface VmExit {
  code: number | null
  signal: NodeJS.Signals | null
  /** the exit status as a shell shows it: the code, or 128 + the signal's number */
  status: number
}

/**
 * One VM's child process, in a process group of its own, under a fencing watchdog of its own
 * (locks/watchdog.ts, as `tandem lock run` runs its command): the watchdog is a separate process,
 * so when the host is killed or paused it still SIGKILLs the VM's group at the lease's fence
 * deadline — before any other host may take the VM's lock.
 */
export class VmProcess {
  readonly child: ChildProcess
  readonly exited: Promise<VmExit>
  private readonly dog: WatchdogLink
  private tail: Buffer[] = []
  private tailBytes = 0
  private readonly watchers = new Set<() => void>()

  /**
   * `deadline`: the fence deadline (performance.now() ms) the lease holds until now; `onLost`:
   * the watchdog fired or died (the VM is then SIGKILLed here too: nothing runs unfenced).
   */
  constructor(argv: string[], env: NodeJS.ProcessEnv, deadline: number, onLost: (reason: string) => void) {
    this.dog = new WatchdogLink()
    this.dog.onLost = (reason) => {
      this.kill('SIGKILL')
      onLost(reason)
    }
    this.dog.deadline(deadline)
    this.child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env })
    if (this.child.pid) this.dog.group(this.child.pid)
    for (const s of [this.child.stdout!, this.child.stderr!]) s.on('data', (d: Buffer) => this.keep(d))
    this.exited = new Promise<VmExit>((resolve) => {
      this.child.on('error', (e) => {
        this.keep(Buffer.from(`could not run ${argv[0]}: ${e.message}\n`))
        resolve({ code: 127, signal: null, status: 127 })
      })
      this.child.on('exit', (code, signal) => resolve({ code, signal, status: code ?? 128 + (signal ? osConstants.signals[signal] : 0) }))
    }).finally(() => this.dog.stop())
  }

  get pid(): number | undefined {
    return this.child.pid
  }

  /** The lease was renewed: the VM may run until `deadline` (performance.now() ms). */
  deadline(deadline: number): void {
    this.dog.deadline(deadline)
  }

  /** Signals the VM's whole process group; a group already gone is not an error. */
  kill(sig: NodeJS.Signals): void {
    try {
      if (this.child.pid) process.kill(-this.child.pid, sig)
    } catch {
      /* gone */
    }
  }

  /** The last bytes of the VM's console (its stdout and stderr, interleaved as they came). */
  console(): string {
    return Buffer.concat(this.tail).toString('utf8')
  }

  /**
   * Resolves with the first match of `re` in the console (its tail, as it grows); rejects when the
   * process ends first or after `ms`.
   */
  waitForOutput(re: RegExp, ms: number): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const m = re.exec(this.console())
        if (m) done(null, m)
      }
      const timer = setTimeout(() => done(new Error(`no ${re} in its output within ${ms} ms`)), ms)
      const done = (e: Error | null, m?: RegExpExecArray) => {
        clearTimeout(timer)
        this.watchers.delete(check)
        if (e) reject(e)
        else resolve(m!)
      }
      this.watchers.add(check)
      void this.exited.then((x) => done(new Error(`it exited (status ${x.status}) before ${re} appeared`)))
      check()
    })
  }

  private keep(d: Buffer): void {
    this.tail.push(d)
    this.tailBytes += d.length
    while (this.tailBytes - this.tail[0].length >= CONSOLE_TAIL) this.tailBytes -= this.tail.shift()!.length
    for (const w of this.watchers) w()
  }
}

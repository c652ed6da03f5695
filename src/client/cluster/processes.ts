import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { createInterface } from 'node:readline'

/** A program the harness started, in a process group of its own (a signal to -pid reaches all of it). */
export interface Proc {
  name: string
  child: ChildProcess
  pid: number
  /** stdout lines so far */
  lines: string[]
  stderr(): string
  exited: Promise<{ code: number | null; signal: string | null }>
  /** resolves with the first stdout line (parsed JSON) `pick` accepts; rejects when the program exits first or after `ms` */
  waitLine<T>(pick: (line: Record<string, unknown>) => T | undefined, ms?: number): Promise<T>
  /** signals the process group; false when it is gone */
  signal(sig: NodeJS.Signals): boolean
  running(): boolean
}

/**
 * Starts `argv` (under `wrap`, e.g. `ip netns exec NS`, which execs it) in a new process group;
 * stdout and stderr also go to `logFile`.
 */
export function startProc(name: string, argv: string[], o: { wrap?: string[]; logFile?: string; env?: NodeJS.ProcessEnv } = {}): Proc {
  const cmd = [...(o.wrap ?? []), ...argv]
  const child = spawn(cmd[0], cmd.slice(1), { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...o.env } })
  const log = o.logFile ? createWriteStream(o.logFile, { flags: 'a' }) : null
  const lines: string[] = []
  let err = ''
  const waiters = new Set<() => void>()
  child.stderr!.on('data', (d: Buffer) => {
    err += d
    if (err.length > 1 << 20) err = err.slice(-(1 << 19))
    log?.write(d)
  })
  createInterface({ input: child.stdout! }).on('line', (l) => {
    lines.push(l)
    log?.write(l + '\n')
    for (const w of waiters) w()
  })
  let done = false
  const exited = new Promise<{ code: number | null; signal: string | null }>((r) =>
    child.on('exit', (code, signal) => {
      done = true
      log?.end()
      r({ code, signal })
      for (const w of waiters) w()
    }),
  )
  child.on('error', () => {})
  const pid = child.pid ?? -1
  return {
    name,
    child,
    pid,
    lines,
    stderr: () => err,
    exited,
    running: () => !done,
    signal(sig) {
      try {
        process.kill(-pid, sig)
        return true
      } catch {
        return false
      }
    },
    waitLine<T>(pick: (line: Record<string, unknown>) => T | undefined, ms = 60_000): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        let seen = 0
        const check = () => {
          for (; seen < lines.length; seen++) {
            let j: Record<string, unknown>
            try {
              j = JSON.parse(lines[seen]) as Record<string, unknown>
            } catch {
              continue
            }
            const v = pick(j)
            if (v !== undefined) return finish(null, v)
          }
          if (done) finish(new Error(`${name} exited before it was ready: ${err.trim().slice(-600)}`))
        }
        const timer = setTimeout(() => finish(new Error(`${name} not ready within ${ms} ms: ${err.trim().slice(-600)}`)), ms)
        const finish = (e: Error | null, v?: T) => {
          clearTimeout(timer)
          waiters.delete(check)
          if (e) reject(e)
          else resolve(v as T)
        }
        waiters.add(check)
        check()
      })
    },
  }
}

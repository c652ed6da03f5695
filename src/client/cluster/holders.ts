import { existsSync, readFileSync } from 'node:fs'

/**
 * The lock-contention workload's record: each holder appends `HOST GENERATION WALL MONO` while it
 * holds the lock: WALL is its host's wall clock (epoch ms: a clock jump on the host shows), MONO
 * the machine's monotonic clock (uptimeMs), which the checkers measure with.
 */
export interface HolderLine {
  host: string
  generation: number
  /** the holder's host's wall clock, epoch ms */
  t: number
  /** uptimeMs() when it wrote the line */
  mono: number
}

/** `HOST GENERATION WALL MONO` lines; a torn last line (a holder killed mid-write) is left out. */
export function readHolders(file: string): HolderLine[] {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => /^(\S+) (\d+) (-?\d+) (\d+)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ host: m[1], generation: Number(m[2]), t: Number(m[3]), mono: Number(m[4]) }))
}

/**
 * The machine's monotonic clock in ms (/proc/uptime, 10 ms steps): what the holders' shell loops
 * and the harness both read, and no host's clock jump moves.
 */
export function uptimeMs(): number {
  return Math.round(Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000)
}


import { existsSync, readFileSync } from 'node:fs'

/** The lock-contention workload's record: each holder appends `HOST GENERATION MS` while it holds the lock. */
export interface HolderLine {
  host: string
  generation: number
  t: number
}

/** `HOST GENERATION MS` lines; a torn last line (a holder killed mid-write) is left out. */
export function readHolders(file: string): HolderLine[] {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8')
    .split('\n')
    .map((l) => /^(\S+) (\d+) (\d+)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ host: m[1], generation: Number(m[2]), t: Number(m[3]) }))
}


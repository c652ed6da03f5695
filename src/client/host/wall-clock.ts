import { readFileSync, writeFileSync } from 'node:fs'

/**
 * A host's wall clock, shifted: a clock jump for fault injection (`tandem host --fault-injection`,
 * `PUT /api/v1/faults {"clock": {"offsetMs": N}}`, `tandem cluster`'s `clock` fault). Once
 * installed, every wall-clock read of this process — Date.now(), new Date(), Date() and what reads
 * them (log timestamps, a VM's RTC) — sees the system's wall clock plus the offset, as after a step
 * of the host's clock. Monotonic time (performance.now(), process.hrtime: leases, heartbeats, fence
 * deadlines, timers) does not move: nothing that keeps Tandem's locks safe reads the wall clock.
 *
 * The offset lives in a file (one integer, ms) that the host agent writes; every `tandem` process
 * started with TANDEM_WALL_OFFSET_FILE set (the host's VMs, programs the harness runs "on" that
 * host) installs it at start and follows the file's changes (polled every 50 ms).
 */
export const WALL_OFFSET_ENV = 'TANDEM_WALL_OFFSET_FILE'
/** a jump of more than a year either way is refused */
export const MAX_OFFSET_MS = 366 * 24 * 3600 * 1000

const SystemDate = Date
let offsetMs = 0
let installed = false

/** The offset in force in this process (0 until installed). */
export const wallOffsetMs = (): number => offsetMs

/** Replaces the global Date by one that reads the system's wall clock plus the offset (idempotent). */
export function installWallOffset(ms = 0): void {
  offsetMs = ms
  if (installed) return
  installed = true
  const now = () => SystemDate.now() + offsetMs
  function ShiftedDate(this: unknown, ...args: unknown[]): unknown {
    if (!new.target) return new SystemDate(now()).toString()
    return Reflect.construct(SystemDate, args.length === 0 ? [now()] : args, new.target)
  }
  Object.setPrototypeOf(ShiftedDate, SystemDate)
  ShiftedDate.prototype = SystemDate.prototype
  ShiftedDate.now = now
  globalThis.Date = ShiftedDate as unknown as DateConstructor
}

/** Sets this process's offset (installing the shifted clock first if need be). */
export function setWallOffset(ms: number): void {
  installWallOffset(ms)
}

/** The offset a file holds: an integer of ms within ±MAX_OFFSET_MS; 0 for a missing or unreadable file. */
export function readWallOffset(file: string): number {
  try {
    const n = Number(readFileSync(file, 'utf8').trim())
    return Number.isSafeInteger(n) && Math.abs(n) <= MAX_OFFSET_MS ? n : 0
  } catch {
    return 0
  }
}

export function writeWallOffset(file: string, ms: number): void {
  writeFileSync(file, `${ms}\n`)
}

/** Installs the offset of `file` and follows its changes until the process ends (the poll does not keep it alive). */
export function followWallOffset(file: string, pollMs = 50): () => void {
  installWallOffset(readWallOffset(file))
  // read every pollMs (a few bytes), not fs.watchFile: its first stat, taken after it starts, is
  // its baseline, so a change made in between was never seen
  const timer = setInterval(() => (offsetMs = readWallOffset(file)), pollMs)
  timer.unref()
  return () => clearInterval(timer)
}

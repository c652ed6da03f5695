import { setImmediate as nextTurn, setTimeout as delay } from 'node:timers/promises'

/**
 * The engine's only way to wait or read elapsed time, injected so that tests run on a fake clock
 * (test/helpers/timers.ts). The guest's own time (mtime, the RTC) comes from `HostClock`.
 */
export interface Timers {
  /** Resolves after `ms`, or as soon as `signal` aborts (then early; it never rejects). */
  sleep(ms: number, signal?: AbortSignal): Promise<void>
  /** Resolves on a later turn of the event loop, after pending I/O callbacks have run. */
  yield(): Promise<void>
  /** Monotonic milliseconds (fractional). */
  now(): number
}

/**
 * Waits for `p` (its value is not used), at most `ms` on `timers`; the timer is cancelled as soon as
 * `p` settles, so that a pending sleep keeps no process alive for its length.
 */
export async function waitAtMost(timers: Timers, p: Promise<unknown>, ms: number): Promise<void> {
  const waited = new AbortController()
  try {
    await Promise.race([p, timers.sleep(ms, waited.signal)])
  } finally {
    waited.abort()
  }
}

export const realTimers: Timers = {
  sleep: (ms, signal) => (signal?.aborted ? Promise.resolve() : delay(ms, undefined, { signal }).catch(() => undefined)),
  yield: () => nextTurn(),
  now: () => performance.now(),
}

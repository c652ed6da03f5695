/**
 * Fault-test host: joins a lockspace and, until SIGTERM, takes random locks of a small set,
 * "uses" each for a few milliseconds and releases it. Every use is a record in its own log:
 *   E|U|L <lock> <generation> <host> <t_ns>   enter / use / leave, t = CLOCK_MONOTONIC taken
 *                                             *before* checking the lease is still valid
 *   F <host> <t_ns> <reason>                  fenced
 * Usage: worker.js LOCKSPACE HOST LOG LOCKS [DELAY_MS] [HOLD_MS]   (LOCKSPACE: a file or iscsi://…)
 *   DELAY_MS: slow-storage filter, random 0..DELAY_MS per I/O; HOLD_MS: up to this long between uses (default 3)
 */
import { appendFileSync } from 'node:fs'
import { LockManager, delayedStorage } from '../../src/disk-formats/lock-region/index.js'
import { openLockStorage } from '../../src/client/locks/index.js'

const [path, host, log, nLocks, delayText, holdText] = process.argv.slice(2)
const holdMs = Number(holdText ?? 3)
const delay = Number(delayText ?? 0)
const locks = Array.from({ length: Number(nLocks) }, (_, i) => `L${i}`)
const out = (line: string) => appendFileSync(log, line + '\n')
let stop = false
process.on('SIGTERM', () => (stop = true))

const file = await openLockStorage(path)
const storage = delay > 0 ? delayedStorage(file, () => Math.random() * delay) : file
while (!stop) {
  const mgr = new LockManager(storage, host)
  let fenced = false
  mgr.onFence = (reason) => {
    fenced = true
    out(`F ${host} ${process.hrtime.bigint()} ${reason.replace(/\s+/g, '_')}`)
  }
  await mgr.join()
  while (!stop && !fenced) {
    const name = locks[Math.floor(Math.random() * locks.length)]
    let held
    try {
      held = await mgr.acquire(name, { waitMs: 50, pollMs: 5 })
    } catch {
      // back off on a real timer: a retry loop of pure promises would starve timers and signals
      await new Promise((r) => setTimeout(r, 1 + Math.random() * 4))
      continue
    }
    const use = (kind: string) => {
      const t = process.hrtime.bigint()
      if (!mgr.valid()) return false
      out(`${kind} ${name} ${held.generation} ${host} ${t}`)
      return true
    }
    let ok = use('E')
    const uses = 1 + Math.floor(Math.random() * 3)
    for (let i = 0; ok && i < uses; i++) {
      await new Promise((r) => setTimeout(r, Math.random() * holdMs))
      ok = use('U')
    }
    if (ok) use('L')
    if (mgr.valid()) await mgr.release(name).catch(() => undefined)
  }
  if (stop) await mgr.leave().catch(() => undefined)
  else mgr.halt()
}
await file.close()

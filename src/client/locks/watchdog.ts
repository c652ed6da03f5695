/**
 * The fencing watchdog of `tandem lock run` (sanlock's wdmd, in small). It runs as its own
 * process, in its own process group, so it keeps going when `lock run` is paused (SIGSTOP),
 * hung or killed. Input lines on stdin:
 *   P <pgid>            the command's process group
 *   D <deadline_ns>     CLOCK_MONOTONIC deadline (process.hrtime) by which the lease must be renewed
 *   S                   stop: the command finished and the lock was released
 * When the deadline passes without a newer one, it SIGKILLs the command's process group and exits
 * with status 3 (WATCHDOG_FIRED in watchdog-link.ts); every other end is status 0.
 * If stdin closes (`lock run` died) the last deadline still holds.
 */
import { createInterface } from 'node:readline'

let pgid = 0
let deadline = 0n
let stopped = false

function fire(): void {
  if (stopped || pgid === 0 || deadline === 0n) return
  if (process.hrtime.bigint() < deadline) return
  try {
    process.kill(-pgid, 'SIGKILL')
    process.stderr.write(`tandem lock watchdog: lease expired; killed process group ${pgid}\n`)
  } catch {
    /* already gone */
  }
  process.exit(3)
}

createInterface({ input: process.stdin }).on('line', (line) => {
  const [k, v] = line.split(' ')
  if (k === 'P') pgid = Number(v)
  else if (k === 'D') deadline = BigInt(v)
  else if (k === 'S') {
    stopped = true
    process.exit(0)
  }
})
process.stdin.on('end', () => {
  if (pgid === 0) process.exit(0)
})
// Poll often: the margin between the deadline and the earliest takeover is hundreds of ms.
setInterval(() => {
  fire()
  if (pgid !== 0) {
    try {
      process.kill(-pgid, 0)
    } catch {
      process.exit(0) // the command is gone: nothing left to fence
    }
  }
}, 10)

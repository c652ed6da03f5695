/**
 * Spawned by the benchmark (BENCH_ONLY=cpu-limit): in one process, a warm-up run of the cpu guest,
 * then `reps` rounds of runs at each level (rotating), each for `n` instructions. Prints one JSON
 * line per run: the level, MIPS, wall seconds, CPU seconds (user+sys) and seconds the limiter slept.
 * Usage: node cpu-limit-runs.js N REPS PCT...
 */
import { readFileSync } from 'node:fs'
import { CpuLimiter, Machine, guestPath, realTimers, type Timers } from '../../src/client/vm/index.js'

const [n, reps, ...levels] = process.argv.slice(2).map(Number)
const image = readFileSync(guestPath('cpu'))
const run = async (pct: number | undefined) => {
  let slept = 0
  const timers: Timers = {
    ...realTimers,
    sleep: async (ms, signal) => {
      const t0 = performance.now()
      await realTimers.sleep(ms, signal)
      slept += (performance.now() - t0) / 1000
    },
  }
  const m = new Machine({ image, memory: 64 << 20, maxInstructions: n, limiter: pct === undefined ? undefined : new CpuLimiter(pct, timers) })
  const c0 = process.cpuUsage()
  const s = await m.run()
  const c = process.cpuUsage(c0)
  return { pct, mips: s.mips, seconds: s.seconds, cpu: (c.user + c.system) / 1e6, slept }
}
await run(undefined) // the JIT's warm-up, which a limited run would overlap with its sleeps
for (let i = 0; i < reps; i++) {
  for (let k = 0; k < levels.length; k++) process.stdout.write(JSON.stringify(await run(levels[(i + k) % levels.length])) + '\n')
}

/**
 * VM checkpoints (issue 16): for 64 MiB, 256 MiB and 1 GiB of guest memory (the guest's own 16 MiB
 * plus the rest filled with random pages: every page must be written), a checkpoint of `memdirty`
 * taken while it writes memory: the stun (VM stopped to VM running), the background write (MiB of
 * guest memory per second, CPU time of the process), pages copied on first write, and the guest's
 * slowdown — memdirty's run time with a checkpoint written beside it over its run time alone.
 * `npm run bench` prints it (BENCH_ONLY=checkpoint).
 */
import { randomFillSync } from 'node:crypto'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { Machine } from '../../src/client/vm/machine.js'
import { takeCheckpoint } from '../../src/client/vm/checkpoint.js'
import { guestPath } from '../../src/client/vm/guests.js'

const MiB = 1 << 20
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** memdirty with RAM beyond its own 16 MiB filled with random pages */
function vm(image: Buffer, memory: number, fill: Uint8Array): Machine {
  const m = new Machine({ image, memory })
  m.mem.bytes.set(fill.subarray(0, memory - (16 << 20)), 16 << 20)
  return m
}

export async function checkpointBench(dir: string, reps: number): Promise<void> {
  const image = readFileSync(guestPath('memdirty'))
  const fill = new Uint8Array(1024 * MiB - 16 * MiB)
  for (let at = 0; at < fill.length; at += 64 * 1024) randomFillSync(fill, at, 64 * 1024)
  console.log(`VM checkpoints (memdirty writing; RAM beyond the guest's 16 MiB random; file on ${dir}; ${reps} each, medians [min–max])`)
  console.log(`  ${'memory'.padEnd(9)}${'stun ms'.padEnd(24)}${'write MiB/s'.padEnd(14)}${'write s'.padEnd(9)}${'cpu s'.padEnd(8)}${'COW pages'.padEnd(11)}guest slowdown (run time with / alone)`)
  for (const size of [64 * MiB, 256 * MiB, 1024 * MiB]) {
    const stun: number[] = []
    const rate: number[] = []
    const writeS: number[] = []
    const cpuS: number[] = []
    const cow: number[] = []
    const slow: number[] = []
    for (let i = 0; i < reps; i++) {
      // alone
      const a = vm(image, size, fill)
      const alone = (await a.run()).seconds
      // with a checkpoint taken at 1 M instructions, written while it runs on
      const m = vm(image, size, fill)
      const t0 = performance.now()
      const running = m.run()
      await m.requestPause(1_000_000)
      m.resume()
      const cpu0 = process.cpuUsage()
      const s = await takeCheckpoint(m, { file: join(dir, 'bench.ckpt') })
      const cpu = process.cpuUsage(cpu0)
      const r = await running
      const withCkpt = (performance.now() - t0) / 1000
      stun.push(s.stunMs)
      rate.push(s.writeMiBps)
      writeS.push(s.writeMs / 1000)
      cpuS.push((cpu.user + cpu.system) / 1e6)
      cow.push(s.cowPages)
      slow.push(Math.min(withCkpt, r.seconds) / alone)
      rmSync(join(dir, 'bench.ckpt'), { force: true })
    }
    const f = (xs: number[], d: number) => `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}]`
    console.log(`  ${`${size / MiB} MiB`.padEnd(9)}${f(stun, 3).padEnd(24)}${median(rate).toFixed(0).padEnd(14)}${median(writeS).toFixed(2).padEnd(9)}${median(cpuS).toFixed(2).padEnd(8)}${String(median(cow)).padEnd(11)}${f(slow, 2)}`)
  }
}

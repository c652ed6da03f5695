/**
 * VM checkpoints (issue 16): for 64 MiB, 256 MiB and 1 GiB of guest memory (the guest's own 16 MiB
 * plus the rest filled with random pages: every page must be written), a checkpoint of `memdirty`
 * taken at 1 M instructions while it writes memory: the stun (VM stopped to VM running), the
 * background write (MiB of guest memory per second, CPU time of the process), pages copied on
 * first write, and the guest's slowdown — its instructions from 1 M to the window's end with a
 * checkpoint written beside them over the same instructions alone (memdirty ends early in the
 * write; a row of `cpu` runs inside a 1 GiB write all along): in wall time, and in CPU time of the VM's
 * thread (Linux: /proc/thread-self/schedstat), which the rest of a busy machine does not change;
 * with the time that thread waited for a core (with / alone), which it does.
 * `npm run bench` prints it (BENCH_ONLY=checkpoint).
 */
import { randomFillSync } from 'node:crypto'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { Machine } from '../../src/client/vm/machine.js'
import { takeCheckpoint } from '../../src/client/vm/checkpoint.js'
import { guestPath } from '../../src/client/vm/guests.js'

const MiB = 1 << 20
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** the checkpoint is taken at this instruction; the guest's window starts there */
const FROM = 1_000_000
const SCHEDSTAT = '/proc/thread-self/schedstat'

/** this thread's time on a core and waiting for one, ms (0 where the kernel does not say) */
function threadTimes(): { cpu: number; wait: number } {
  if (!existsSync(SCHEDSTAT)) return { cpu: 0, wait: 0 }
  const [cpu, wait] = readFileSync(SCHEDSTAT, 'utf8').split(' ').map((x) => Number(x) / 1e6)
  return { cpu, wait }
}

interface Window {
  wallMs: number
  cpuMs: number
  waitMs: number
}

/** A row: a guest, its memory, and the end of the window measured (instructions). */
interface Row {
  guest: 'memdirty' | 'cpu'
  memory: number
  to: number
}

/**
 * The guest with RAM beyond its own 16 MiB filled with random pages, stopped after `to`
 * instructions; `window()` gives instructions FROM to `to` of its run, once it has run them.
 */
function vm(image: Buffer, row: Row, fill: Uint8Array): { m: Machine; window: () => Window } {
  const marks = new Map<number, { wall: number; cpu: number; wait: number }>()
  const m = new Machine({ image, memory: row.memory, maxInstructions: row.to, observe: { every: FROM, fn: (at) => marks.set(at.hart.instret, { wall: performance.now(), ...threadTimes() }) } })
  m.mem.bytes.set(fill.subarray(0, row.memory - (16 << 20)), 16 << 20)
  const window = () => {
    const a = marks.get(FROM)
    const b = marks.get(row.to)
    if (!a || !b) throw new Error(`${row.guest} did not run ${row.to} instructions`)
    return { wallMs: b.wall - a.wall, cpuMs: b.cpu - a.cpu, waitMs: b.wait - a.wait }
  }
  return { m, window }
}

/**
 * memdirty (8.16 M instructions: the window ends at 8 M, early in the write) at each size; then
 * `cpu` for 59 M instructions inside a 1 GiB write: the slowdown the write causes all along.
 */
const ROWS: Row[] = [
  { guest: 'memdirty', memory: 64 * MiB, to: 8_000_000 },
  { guest: 'memdirty', memory: 256 * MiB, to: 8_000_000 },
  { guest: 'memdirty', memory: 1024 * MiB, to: 8_000_000 },
  { guest: 'cpu', memory: 1024 * MiB, to: 60_000_000 },
]

export async function checkpointBench(dir: string, reps: number): Promise<void> {
  const fill = new Uint8Array(1024 * MiB - 16 * MiB)
  for (let at = 0; at < fill.length; at += 64 * 1024) randomFillSync(fill, at, 64 * 1024)
  console.log(`VM checkpoints (RAM beyond the guest's 16 MiB random; file on ${dir}; ${reps} each, medians [min–max]; guest: its instructions 1 M (the checkpoint) to the window's end, with the write / alone)`)
  console.log(`  ${'guest'.padEnd(9)}${'memory'.padEnd(9)}${'window'.padEnd(9)}${'stun ms'.padEnd(24)}${'write MiB/s'.padEnd(14)}${'write s'.padEnd(9)}${'cpu s'.padEnd(8)}${'COW pages'.padEnd(11)}${'guest wall'.padEnd(20)}${'guest thread CPU'.padEnd(20)}thread's wait for a core ms (with / alone)`)
  for (const row of ROWS) {
    const image = readFileSync(guestPath(row.guest))
    const stun: number[] = []
    const rate: number[] = []
    const writeS: number[] = []
    const cpuS: number[] = []
    const cow: number[] = []
    const slow: number[] = []
    const slowCpu: number[] = []
    const waitWith: number[] = []
    const waitAlone: number[] = []
    for (let i = 0; i < reps; i++) {
      const a = vm(image, row, fill)
      await a.m.run()
      const alone = a.window()
      // with a checkpoint taken at FROM, written while it runs on
      const w = vm(image, row, fill)
      const running = w.m.run()
      await w.m.requestPause(FROM)
      w.m.resume()
      const cpu0 = process.cpuUsage()
      const s = await takeCheckpoint(w.m, { file: join(dir, 'bench.ckpt') })
      const cpu = process.cpuUsage(cpu0)
      await running
      const withCkpt = w.window()
      stun.push(s.stunMs)
      rate.push(s.writeMiBps)
      writeS.push(s.writeMs / 1000)
      cpuS.push((cpu.user + cpu.system) / 1e6)
      cow.push(s.cowPages)
      slow.push(withCkpt.wallMs / alone.wallMs)
      slowCpu.push(withCkpt.cpuMs / alone.cpuMs)
      waitWith.push(withCkpt.waitMs)
      waitAlone.push(alone.waitMs)
      rmSync(join(dir, 'bench.ckpt'), { force: true })
    }
    const f = (xs: number[], d: number) => `${median(xs).toFixed(d)} [${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}]`
    console.log(
      `  ${row.guest.padEnd(9)}${`${row.memory / MiB} MiB`.padEnd(9)}${`${row.to / 1e6} M`.padEnd(9)}${f(stun, 3).padEnd(24)}${median(rate).toFixed(0).padEnd(14)}${median(writeS).toFixed(2).padEnd(9)}${median(cpuS).toFixed(2).padEnd(8)}${String(median(cow)).padEnd(11)}${f(slow, 2).padEnd(20)}${f(slowCpu, 2).padEnd(20)}${median(waitWith).toFixed(0)} / ${median(waitAlone).toFixed(0)}`,
    )
  }
}

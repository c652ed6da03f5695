/**
 * The checkpoint file's background write rate: `writeCheckpoint` of a guest memory with a given
 * share of non-zero pages, on the file system of `dir` (fdatasync included), while a ticker on
 * the event loop stands in for the VM and records the longest wait it had between turns (on a
 * loaded machine that is mostly the scheduler's: the writer yields after every 1 MiB chunk). Then
 * the restore side: `readCheckpoint` and `loadMemory` into a new VM's RAM.
 * `npm run bench` with BENCH_ONLY=checkpoint-file prints it for 64 MiB, 256 MiB and 1 GiB.
 */
import { randomFillSync } from 'node:crypto'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { readCheckpoint, writeCheckpoint } from '../../src/client/vm/checkpoint-file.js'

const PAGE = 4096
const MiB = 1 << 20

export interface CheckpointWriteMeasure {
  memoryBytes: number
  /** share of pages that are not zero */
  nonZero: number
  /** guest memory covered per wall-clock second, MiB/s */
  memoryMiBps: number
  /** file bytes written per wall-clock second, MiB/s */
  fileMiBps: number
  wallMs: number
  /** CPU time of this process (all threads, user + system) during the write */
  cpuMs: number
  fileBytes: number
  /** the longest the event loop (the VM) waited for a turn during the write */
  maxTurnGapMs: number
  /** reading it back into new RAM: wall and CPU */
  readMs: number
  readCpuMs: number
}

/** Guest memory of `memoryBytes` whose pages are random with probability `nonZero`, else zero. */
export function benchMemory(memoryBytes: number, nonZero: number): Uint8Array {
  const mem = new Uint8Array(memoryBytes)
  const pages = memoryBytes / PAGE
  // every ⌈1/nonZero⌉-th page's worth of pages, spread evenly
  let acc = 0
  for (let p = 0; p < pages; p++) {
    acc += nonZero
    if (acc >= 1) {
      acc -= 1
      randomFillSync(mem, p * PAGE, PAGE)
    }
  }
  return mem
}

/** One background write of `mem` to `dir/bench.ckpt`, then its restore; the file is removed afterwards. */
export async function measureCheckpointWrite(dir: string, mem: Uint8Array, nonZero: number): Promise<CheckpointWriteMeasure> {
  const file = join(dir, 'bench.ckpt')
  let running = true
  let last = performance.now()
  let maxGap = 0
  const tick = () => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    if (running) setImmediate(tick)
  }
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  setImmediate(tick)
  const res = await writeCheckpoint(file, {
    memoryBytes: mem.length,
    imageSha256: Buffer.alloc(32),
    instret: 0,
    name: 'bench',
    state: Buffer.alloc(4096),
    pages: mem.length / PAGE,
    page: (i) => mem.subarray(i * PAGE, (i + 1) * PAGE),
  })
  const wallMs = performance.now() - t0
  running = false
  const cpu = process.cpuUsage(cpu0)
  const cpu1 = process.cpuUsage()
  const t1 = performance.now()
  const ck = await readCheckpoint(file, { memoryBytes: mem.length })
  await ck.loadMemory(new Uint8Array(mem.length), { zeroed: true })
  const readMs = performance.now() - t1
  const readCpu = process.cpuUsage(cpu1)
  rmSync(file, { force: true })
  return {
    memoryBytes: mem.length,
    nonZero,
    memoryMiBps: mem.length / MiB / (wallMs / 1000),
    fileMiBps: res.bytes / MiB / (wallMs / 1000),
    wallMs,
    cpuMs: (cpu.user + cpu.system) / 1000,
    fileBytes: res.bytes,
    maxTurnGapMs: maxGap,
    readMs,
    readCpuMs: (readCpu.user + readCpu.system) / 1000,
  }
}

/** Prints the write rate for 64 MiB, 256 MiB and 1 GiB at 10 % and 100 % non-zero pages (median of `reps`). */
export async function checkpointFileBench(dir: string, reps: number): Promise<void> {
  console.log(`checkpoint file: background write (writeCheckpoint to ${dir}, fdatasync and rename included; median of ${reps}), then restore (read into new RAM, page cache warm)`)
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  for (const size of [64 * MiB, 256 * MiB, 1024 * MiB]) {
    for (const nonZero of [0.1, 1]) {
      const mem = benchMemory(size, nonZero)
      const runs: CheckpointWriteMeasure[] = []
      for (let i = 0; i < reps; i++) runs.push(await measureCheckpointWrite(dir, mem, nonZero))
      const m = runs.find((r) => r.wallMs === median(runs.map((x) => x.wallMs)))!
      const label = `  ${size / MiB} MiB, ${nonZero * 100}% non-zero pages`.padEnd(36)
      console.log(
        `${label} ${m.memoryMiBps.toFixed(0).padStart(5)} MiB/s of memory   ${m.fileMiBps.toFixed(0).padStart(4)} MiB/s to the file (${(m.fileBytes / MiB).toFixed(1)} MiB)   wall ${m.wallMs.toFixed(0)} ms   cpu ${m.cpuMs.toFixed(0)} ms   longest VM wait ${m.maxTurnGapMs.toFixed(1)} ms   restore ${m.readMs.toFixed(0)} ms (cpu ${m.readCpuMs.toFixed(0)} ms)`,
      )
    }
  }
}

/**
 * BENCH_ONLY=dos: the DoS guard (issue #19 item 5) on three kvstore VMs of one host, a small-frame
 * flood at one (scripts/bench/dos-scenario.ts). Guard on and guard off alternate, BENCH_REPS runs
 * each; "off" is `--dos-guard monitor` — the same relayed ports and meters, detection recorded,
 * nothing suspended — so the two differ only in the guard's action. Per run: detection latency from
 * the flood's first frame, the other VMs' GET p50/p99 quiet, during a bulk transfer, during the
 * flood and after, how long after the flood the VM was resumed, and CPU seconds (user + system) of
 * the host, switch and VM processes during the flood. BENCH_DOS_PPS (20000) and BENCH_DOS_BULK_PPS
 * (8000) set the rates, BENCH_DOS_PHASE_MS (2000) each phase's length. A third row per run,
 * "on/node", is the guard on with the switch dropping held frames in Node (`tandem switch
 * --no-kernel-drop`), what the kernel's drop (src/client/net/kernel-drop.ts) is measured against.
 */
import { loadavg, cpus } from 'node:os'
import { runDosScenario, type DosScenarioResult } from './dos-scenario.js'

const f = (x: number | null | undefined, d = 1) => (x === null || x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d))
const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : NaN)

export async function dosBench(o: { cli: string; reps: number }): Promise<void> {
  const env = process.env
  const floodPps = Number(env.BENCH_DOS_PPS ?? 20_000)
  const bulkPps = Number(env.BENCH_DOS_BULK_PPS ?? 8000)
  const phaseMs = Number(env.BENCH_DOS_PHASE_MS ?? 2000)
  console.log(`\nDoS guard — three kvstore VMs on one host, a ${floodPps} frames/s flood of 60-byte frames at one (a bulk transfer of 1400-byte frames at ${bulkPps}/s first); ${o.reps} runs each, guard on and off alternating`)
  console.log(`  load average ${loadavg().map((x) => x.toFixed(1)).join(' ')} on ${cpus().length} cores before the runs`)
  console.log('  guard    detect   GET p50/p99 ms: quiet      bulk          flood         after     flood/quiet p99  bulk flagged  resumed  flood sent/s  cpu s in flood (all; a)  load')
  const modes = [
    { label: 'on', guard: 'on', kernelDrop: true },
    { label: 'on/node', guard: 'on', kernelDrop: false },
    { label: 'off', guard: 'monitor', kernelDrop: true },
  ] as const
  const runs: (DosScenarioResult & { label: string })[] = []
  for (let i = 0; i < o.reps; i++) {
    for (const { label, guard, kernelDrop } of modes) {
      const r = { ...(await runDosScenario({ cli: o.cli, guard, phaseMs, floodPps, bulkPps, kernelDrop })), label }
      runs.push(r)
      const q = r.rtt
      const p = (x: { p50: number; p99: number }) => `${f(x.p50)}/${f(x.p99)}`.padEnd(13)
      console.log(
        `  ${label.padEnd(8)} ${`${f(r.detectionMs)} ms`.padEnd(9)}${' '.repeat(15)}${p(q.quiet)} ${p(q.bulk)} ${p(q.flood)} ${p(q.after)} ${f(q.flood.p99 / q.quiet.p99, 2).padStart(6)}x         ${r.bulkEvents.length ? 'YES' : 'no'.padEnd(3)}           ${r.resumedAfterMs === null ? '-' : `${f(r.resumedAfterMs / 1000, 2)} s`}   ${f(r.flood.pps, 0).padStart(6)}        ${f(r.cpu.flood, 2)}; ${f(r.cpuA.flood, 2)}              ${loadavg()[0].toFixed(1)}`,
      )
    }
  }
  for (const { label } of modes) {
    const rs = runs.filter((r) => r.label === label)
    console.log(`  ${label} medians: detection ${f(median(rs.map((r) => r.detectionMs ?? NaN)))} ms, flood/quiet GET p99 ${f(median(rs.map((r) => r.rtt.flood.p99 / r.rtt.quiet.p99)))}x, cpu in flood ${f(median(rs.map((r) => r.cpu.flood)), 2)} s (the flooded VM ${f(median(rs.map((r) => r.cpuA.flood)), 2)} s), bulk flagged in ${rs.filter((r) => r.bulkEvents.length).length} of ${rs.length}`)
  }
}

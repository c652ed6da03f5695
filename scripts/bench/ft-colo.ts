/**
 * Quasi-lockstep pairs (`--ft-mode colo`, issue 18 item 3) beside their anchors (QEMU COLO: a
 * checkpoint pause of 4.5 ms idle and 24 ms under load; colo-compare times out at 3 s): kvstore
 * (its replies are the same on both sides: released on a match) and noisy (a nonce in every reply:
 * one resync each) under `tandem kv load`, plain `vm run` and the colo pair alternating. Per run:
 * acknowledged requests per second, round trips (the added latency per request), resyncs per
 * second, the primary's pause per resync and the time to the secondary's acknowledgement, the
 * share of outputs released without a resync, how long outputs were held, CPU (user+sys of both
 * sides). BENCH_ONLY=ft-colo; BENCH_COLO_RATE the offered rate (default 500/s), BENCH_COLO_SECONDS (3).
 */
import { cpus, loadavg } from 'node:os'
import { Bench, KV_WINDOW, alternate, f, median, spread, type FtBenchOptions, type LoadSummary, type Summary } from './ft.js'

interface Run {
  load: LoadSummary
  vm: Summary
  secondary?: Summary
}

async function guestUnderLoad(b: Bench, guest: string, reps: number, rate: number, seconds: number): Promise<void> {
  const args = b.kvArgs().map((a) => (a === 'kvstore' ? guest : a))
  const load = ['--keys', '1000', '--rate', String(rate), '--window', String(KV_WINDOW), '--retry-ms', '500', '--duration', String(seconds)]
  const plain = async (): Promise<Run> => {
    const vm = b.proc(['vm', 'run', '--json', ...args])
    await b.kvReady(vm)
    const l = await b.kvLoad(load)
    vm.child.kill('SIGTERM')
    return { load: l, vm: await b.summary(vm, guest) }
  }
  const colo = async (): Promise<Run> => {
    const p = await b.pair([...args, '--ft-mode', 'colo', '--ft-loss-ms', '1500'])
    await b.kvReady(p.primary)
    const l = await b.kvLoad(load)
    p.primary.child.kill('SIGTERM')
    const e = await b.pairEnd(p)
    return { load: l, vm: e.primary, secondary: e.backup }
  }
  const r = await alternate(reps, plain, colo)
  const tput = (xs: Run[]) => xs.map((x) => x.load.acked / x.load.seconds)
  const cpuPerReq = (xs: Run[]) => xs.map((x) => ((x.vm.cpuSeconds + (x.secondary?.cpuSeconds ?? 0)) / x.load.acked) * 1e3)
  const c = r.ft.map((x) => x.vm.ft!.colo!)
  const resyncs = c.map((s) => s.resyncs.mismatch + s.resyncs.timeout + s.resyncs.overflow)
  const perSec = r.ft.map((x, i) => resyncs[i] / x.vm.seconds)
  const share = c.map((s) => (s.outputs ? (s.releasedMatched / s.outputs) * 100 : 0))
  const split = r.ft.filter((x) => x.vm.ft!.outcome !== 'paired').length
  console.log(`${guest} under kv load (offered ${rate}/s, window ${KV_WINDOW}, ${seconds} s), plain vs colo pair, ${reps} rounds alternating`)
  console.log(`  acked/s      plain ${spread(tput(r.plain), 0)}   colo ${spread(tput(r.ft), 0)}   throughput colo/plain ${f(median(tput(r.ft)) / median(tput(r.plain)), 2)}`)
  const p50 = (xs: Run[]) => xs.map((x) => x.load.rttMs.p50)
  const p99 = (xs: Run[]) => xs.map((x) => x.load.rttMs.p99)
  console.log(`  round trip   p50 plain ${spread(p50(r.plain), 2)} ms   colo ${spread(p50(r.ft), 2)} ms   added ${f(median(p50(r.ft)) - median(p50(r.plain)), 2)} ms;  p99 plain ${spread(p99(r.plain), 1)} colo ${spread(p99(r.ft), 1)} ms`)
  console.log(`  resyncs      ${spread(perSec, 1)} per second (${spread(resyncs, 0)} per run: mismatch ${median(c.map((s) => s.resyncs.mismatch))}, timeout ${median(c.map((s) => s.resyncs.timeout))})   sync ${f(median(c.map((s) => (s.epoch ? s.syncBytes / s.epoch : 0))) / 1024, 1)} KiB each`)
  console.log(`  resync pause mean ${spread(c.map((s) => s.pauseMs.mean), 2)} ms   p99 ${spread(c.map((s) => s.pauseMs.p99), 2)} ms   to the secondary's ack mean ${spread(c.map((s) => s.syncMs.mean), 2)} ms   (COLO checkpoint pause 4.5 ms idle, 24 ms under load)`)
  console.log(`  released without a resync ${spread(share, 1)} % of outputs   held (added per output) p50 ${spread(c.map((s) => s.heldMs.p50), 2)} ms   p99 ${spread(c.map((s) => s.heldMs.p99), 1)} ms`)
  console.log(`  cpu          plain ${spread(cpuPerReq(r.plain), 3)} ms/request   colo primary+secondary ${spread(cpuPerReq(r.ft), 3)} ms/request   ratio ${f(median(cpuPerReq(r.ft)) / median(cpuPerReq(r.plain)), 2)}x (user+sys)${split ? `   ${split} run(s) split (a side lost its peer)` : ''}`)
}

export async function coloBench(o: FtBenchOptions): Promise<void> {
  const b = new Bench(o)
  await b.setup()
  const load0 = loadavg()[0]
  const t0 = performance.now()
  try {
    console.log('Quasi-lockstep (colo) pairs on loopback (both sides on this machine, a tandem switch between VMs and clients; CPU = the vm run processes\' user+sys)')
    const rate = Number(process.env.BENCH_COLO_RATE ?? 500)
    const seconds = Number(process.env.BENCH_COLO_SECONDS ?? 3)
    for (const g of ['kvstore', 'noisy']) await guestUnderLoad(b, g, o.reps, rate, seconds)
  } finally {
    await b.teardown()
  }
  console.log(`  load average ${load0.toFixed(1)} → ${loadavg()[0].toFixed(1)} on ${cpus().length} cores; colo section ${((performance.now() - t0) / 1000).toFixed(0)} s`)
}

import t from 'tap'
import { CLI } from '../../helpers/peers.js'
import { runDosScenario } from '../../../scripts/bench/dos-scenario.js'

/**
 * Issue #19 item 5, end to end: a tandem host with --dos-guard on runs three kvstore VMs (a, b, c at
 * priorities 10, 20, 30) on a tandem switch; this process probes b and c with GETs while a bulk
 * transfer of large frames and then a small-frame flood go to a (scripts/bench/dos-scenario.ts).
 * Timing bounds are loose (a busy 2-core machine); the figures against the Done-means bounds come
 * from BENCH_ONLY=dos.
 */
t.test('DoS guard: a flood at one of three kvstore VMs is detected, the VM suspended and resumed after; a bulk transfer is not flagged', async (t) => {
  const r = await runDosScenario({ cli: CLI, guard: 'on', phaseMs: 1500, bounds: 'cooldownMs=500' })
  t.comment(`GET p99 quiet ${r.rtt.quiet.p99.toFixed(1)} ms, bulk ${r.rtt.bulk.p99.toFixed(1)} ms, flood ${r.rtt.flood.p99.toFixed(1)} ms; detection ${r.detectionMs?.toFixed(1)} ms; flood ${Math.round(r.flood.pps)} frames/s, bulk ${Math.round(r.bulk.pps)}`)
  t.same(r.bulkEvents, [], 'the bulk transfer (1400-byte frames, unanswered) is not flagged')
  t.ok(r.bulk.frames > 0 && r.bulk.pps > 2000, `the bulk transfer ran at ${Math.round(r.bulk.pps)} frames/s: above the small-frame bound`)
  const kinds = r.events.filter((e) => e.vm === 'dos-a').map((e) => e.kind)
  t.same(kinds, ['detected', 'suspended', 'resumed'], 'a: detected, suspended, resumed')
  t.same(r.events.filter((e) => e.vm !== 'dos-a'), [], 'b and c are not flagged')
  t.ok(r.detectionMs !== null && r.detectionMs < 1000, `detected ${r.detectionMs?.toFixed(1)} ms after the flood's first frame (Done means 100 ms: the bench's figure)`)
  t.match(r.midFlood.a, { suspended: true }, 'a is suspended mid-flood')
  t.ok(r.midFlood.a!.dropped > 0, `${r.midFlood.a!.dropped} of its frames dropped by then`)
  t.match(r.midFlood.b, { suspended: false, dropped: 0 })
  t.match(r.midFlood.c, { suspended: false, dropped: 0 })
  t.ok(r.resumedAfterMs !== null && r.resumedAfterMs >= 500, `resumed ${r.resumedAfterMs?.toFixed(0)} ms after the flood's last frame (cooldown 500 ms)`)
  t.equal(r.aAfter, 'VALUE v', 'a answers again after the flood')
  t.equal(r.failed.flood, 0, 'no GET to b or c went unanswered during the flood')
  t.ok(r.rtt.flood.count > 20, `${r.rtt.flood.count} GETs to b and c during the flood`)
  const metric = (re: RegExp) => Number(r.metrics.find((l) => re.test(l))?.split(' ')[1])
  t.ok(metric(/^tandem_dos_dropped_frames_total\{vm="dos-a"\}/) > 0, 'metrics: a\'s dropped frames')
  t.equal(metric(/^tandem_dos_dropped_frames_total\{vm="dos-b"\}/), 0)
  t.equal(metric(/^tandem_dos_events_total\{kind="suspended"\}/), 1, 'metrics: one suspension')
  t.equal(metric(/^tandem_dos_suspended\{vm="dos-a"\}/), 0, 'metrics: a not suspended now')
  t.same(r.badSince, { status: 400, code: 'InvalidArgument' }, 'a bad "since" is a 400')
  t.ok(r.rtt.flood.p99 < Math.max(20 * r.rtt.quiet.p99, 1000), `b and c: GET p99 ${r.rtt.flood.p99.toFixed(1)} ms in the flood, ${r.rtt.quiet.p99.toFixed(1)} ms quiet (a loose bound: 20x or 1 s)`)
})

import t from 'tap'
import { FtLagControl, LagController, LagMeter } from '../../../src/client/ft/lag.js'
import { percentiles } from '../../../src/client/ft/stats.js'
import { CpuLimiter } from '../../../src/client/vm/cpu-limit.js'
import { FakeTimers } from '../../helpers/timers.js'
import { runPlant, type PlantRun } from './lag-plant.js'

const invalid = { code: 'InvalidArgument' }

/** percentiles of the run's lag samples taken in (fromMs, toMs] */
function lagBetween(run: PlantRun, fromMs: number, toMs: number) {
  return percentiles(run.samples.filter((s) => s.t > fromMs && s.t <= toMs).map((s) => s.lag))
}

/** the limits decided in (fromMs, toMs] */
function limitsBetween(run: PlantRun, fromMs: number, toMs: number): number[] {
  return run.periods.filter((p) => p.t > fromMs && p.t <= toMs).map((p) => p.limit)
}

function stddev(xs: number[]): number {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length
  return Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length)
}

t.test('LagMeter: lag = ack time − the time of the earliest mark at or above the acknowledged point', async (t) => {
  const m = new LagMeter()
  m.progress(1000, 10)
  m.progress(2000, 20)
  m.progress(3000, 30)
  t.equal(m.ack(1000, 15), 5, 'executed at a mark: exact')
  t.equal(m.ack(1500, 40), 20, 'between two marks: the later mark (the primary had it by t = 20)')
  t.equal(m.marks, 2, 'marks below the acknowledged point are dropped')
  t.equal(m.ack(3000, 31), 1, 'the newest mark')
  t.equal(m.executed, 3000)
  t.same(m.samplesSince(0), [5, 20, 1], 'every advancing ack is a sample')
})

t.test('LagMeter: an idle primary repeating its mark keeps the earliest time; a repeated ack takes no sample', async (t) => {
  const m = new LagMeter()
  m.progress(500, 10)
  m.progress(500, 30) // heartbeat of an idle primary
  m.progress(500, 50)
  t.equal(m.marks, 1)
  t.equal(m.ack(500, 12), 2, 'the backup got there 2 ms after the primary')
  t.equal(m.ack(500, 60), 0, 'caught up and the primary is idle: the lag is 0, not the time since the mark')
  t.same(m.samplesSince(0), [2], 'the repeated ack is not a sample')
})

t.test('LagMeter: behind() grows while a backup stalls, and is 0 once it is level', async (t) => {
  const m = new LagMeter()
  for (let i = 1; i <= 10; i++) m.progress(i * 100, i * 10)
  m.ack(300, 31)
  t.equal(m.behind(50), 10, 'instruction 300 was executed by the mark at 400 (t = 40)')
  t.equal(m.behind(500), 460, 'no news for a while: at least 460 ms behind')
  t.equal(m.ack(300, 500), 460, 'an ack that does not advance returns behind(now)')
  t.equal(m.periodLag(400, 500), 460, 'a period with no samples: behind(now)')
  m.ack(1000, 510)
  t.equal(m.behind(2000), 0, 'level with the newest mark')
  t.equal(m.periodLag(500, 2000), 410, 'a period with samples: their median')
})

t.test('LagMeter: marks and acks that break the order are typed errors', async (t) => {
  const m = new LagMeter()
  m.progress(100, 10)
  t.throws(() => m.progress(99, 11), invalid, 'instret goes back')
  t.throws(() => m.progress(101, 9), invalid, 'time goes back')
  t.throws(() => m.ack(101, 12), invalid, 'the backup cannot pass the logged horizon')
  m.ack(100, 12)
  t.throws(() => m.ack(50, 13), invalid, 'executed goes back')
  t.throws(() => m.progress(99, 20), invalid, 'a mark below the acknowledged point')
  t.equal(m.ack(100, 14), 0, 'still usable')
})

t.test('LagMeter: the marks kept are bounded, and a thinned ring still gives a lower bound', async (t) => {
  const m = new LagMeter({ maxMarks: 16 })
  for (let i = 1; i <= 1000; i++) m.progress(i * 10, i)
  t.ok(m.marks <= 16, `${m.marks} marks kept`)
  // instruction 5000 was executed at t = 500; the ack at 1500 makes the lag 1000 exactly
  const lag = m.ack(5000, 1500)
  t.ok(lag <= 1000 && lag > 1000 - 2 * (1000 / 16), `thinned lag ${lag} ms: at most the exact 1000 ms, low by less than two mean spacings`)
  t.equal(m.ack(10_000, 1500), 500, 'the newest mark is always kept')
})

t.test('LagMeter: snapshot gives percentiles over the window', async (t) => {
  const m = new LagMeter({ windowMs: 1000 })
  // samples 1..100 ms of lag, one per ms of ack time from t = 1000
  for (let i = 1; i <= 100; i++) m.progress(i, 1000)
  for (let i = 1; i <= 100; i++) m.ack(i, 1000 + i)
  t.same(m.snapshot(1100), { count: 100, p50: 50, p95: 95, p99: 99, max: 100, behind: 0 })
  t.equal(m.snapshot(2050).count, 50, 'samples older than the window leave it')
  t.equal(m.snapshot(1100, 10).count, 10, 'a shorter window')
  const capped = new LagMeter({ maxSamples: 8 })
  for (let i = 1; i <= 100; i++) capped.progress(i, 0)
  for (let i = 1; i <= 100; i++) capped.ack(i, i)
  t.same(capped.samplesSince(-1), [93, 94, 95, 96, 97, 98, 99, 100], 'at most maxSamples kept, the newest')
})

t.test('LagController: the rule, step by step', async (t) => {
  const c = new LagController()
  t.equal(c.update(40), 100, 'low lag at 100 %: stays')
  t.equal(c.update(120), 98, '120 ms: cut 2 points (the least cut)')
  t.equal(c.update(400), 90, '400 ms: cut 8 (2 × lag / target)')
  t.equal(c.update(999), 70, 'just under highMs: 20')
  t.equal(c.update(5000), 50, 'past highMs: the max step')
  t.equal(c.update(90), 50, 'between target / 2 and target, falling: hold')
  t.equal(c.update(94), 50, 'rising, but by less than riseMs: hold')
  t.equal(c.update(60), 50, 'falling into the band: hold')
  t.equal(c.update(80), 48, 'rising in the band (by more than riseMs): the least cut')
  t.equal(c.update(30), 50, 'under target / 2 and falling: raise 2')
  t.equal(c.update(32), 52, 'under target / 2, steady: raise 2')
  t.equal(c.update(45), 52, 'under target / 2 but rising: hold')
  t.equal(c.update(NaN), 52, 'no lag known: hold')
  for (let i = 0; i < 100; i++) c.update(1)
  t.equal(c.percent, 100, 'raised up to 100 and no further')
  for (let i = 0; i < 100; i++) c.update(10_000)
  t.equal(c.percent, 5, 'cut down to minPercent and no further')
  const off = new LagController({ enabled: false })
  t.equal(off.update(10_000), 100, 'disabled: never changes')
  off.enabled = true
  t.equal(off.update(10_000), 80, 'enabled again: acts')
})

t.test('LagController: bad parameters are typed errors', async (t) => {
  t.throws(() => new LagController({ targetMs: 0 }), invalid)
  t.throws(() => new LagController({ targetMs: 200, highMs: 100 }), invalid)
  t.throws(() => new LagController({ minPercent: 0 }), invalid)
  t.throws(() => new LagController({ stepUpPercent: 1.5 }), invalid)
  t.throws(() => new LagController({ minStepDownPercent: 30, maxStepDownPercent: 20 }), invalid)
  t.throws(() => new LagController({ startPercent: 3 }), invalid, 'start below minPercent')
  t.throws(() => new LagController({ startPercent: 90, maxPercent: 80 }), invalid, 'start above maxPercent')
  t.throws(() => new LagController({ minPercent: 50, maxPercent: 40 }), invalid, 'max below min')
})

t.test('plant, backup at 50 %, controller off: the lag grows without bound, ~(1 − r/L) s per s', async (t) => {
  const run = runPlant({ backup: () => 50, controller: new LagController({ enabled: false }) }, 60_000)
  t.ok(run.periods.every((p) => p.limit === 100), 'the limit never moves')
  const at = (ms: number) => lagBetween(run, ms - 250, ms).max
  t.ok(Math.abs(at(10_000) - 5000) < 100, `lag at 10 s ${at(10_000).toFixed(0)} ms (~5 s)`)
  t.ok(Math.abs(at(60_000) - 30_000) < 200, `lag at 60 s ${at(60_000).toFixed(0)} ms (~30 s)`)
  const stalled = [...Array(59).keys()].map((i) => i + 2).filter((s) => !(at(s * 1000) > at((s - 1) * 1000)))
  t.same(stalled, [], 'it grows every second')
})

t.test('plant, backup at 50 %, controller on: lag p95 < 100 ms from 10 s, the limit converges to 50 ± 5, back at 100 within 30 s of lifting the cap', async (t) => {
  const run = runPlant({ backup: (ms) => (ms <= 40_000 ? 50 : 100), controller: new LagController() }, 70_000)
  const early = lagBetween(run, 0, 10_000)
  t.ok(early.max > 500, `the lag first grows (max ${early.max.toFixed(0)} ms before 10 s): the primary starts at 100 %`)
  const steady = lagBetween(run, 10_000, 40_000)
  t.ok(steady.p95 < 100, `lag from 10 s to 40 s: p50 ${steady.p50.toFixed(0)}, p95 ${steady.p95.toFixed(0)}, max ${steady.max.toFixed(0)} ms`)
  const limits = limitsBetween(run, 15_000, 40_000)
  t.ok(limits.every((l) => l >= 45 && l <= 55), `limit from 15 s to 40 s: ${Math.min(...limits)}..${Math.max(...limits)} %`)
  const full = run.periods.find((p) => p.t > 40_000 && p.limit === 100)
  t.ok(full && full.t - 40_000 <= 30_000, `cap lifted at 40 s: limit at 100 % after ${full ? full.t - 40_000 : 'never'} ms`)
  t.ok(limitsBetween(run, full!.t, 70_000).every((l) => l === 100), 'and stays there')
})

t.test('plant, other backup speeds: the limit converges to r ± 5', async (t) => {
  for (const r of [30, 80]) {
    const run = runPlant({ backup: () => r, controller: new LagController() }, 40_000)
    const limits = limitsBetween(run, 20_000, 40_000)
    const lag = lagBetween(run, 20_000, 40_000)
    t.ok(limits.every((l) => Math.abs(l - r) <= 5), `r ${r} %: limit ${Math.min(...limits)}..${Math.max(...limits)} %, lag p95 ${lag.p95.toFixed(0)} ms`)
    t.ok(lag.p95 < 100, `r ${r} %: lag p95 ${lag.p95.toFixed(0)} ms`)
  }
})

t.test('plant, jittery acks (0–40 ms): the limit does not swing', async (t) => {
  for (const seed of [1, 2, 3]) {
    const run = runPlant({ backup: () => 50, controller: new LagController(), jitterMs: 40, seed }, 40_000)
    const limits = limitsBetween(run, 15_000, 40_000)
    const sd = stddev(limits)
    t.ok(limits.every((l) => l >= 45 && l <= 55) && sd < 3, `seed ${seed}: limit ${Math.min(...limits)}..${Math.max(...limits)} %, sd ${sd.toFixed(2)}`)
    t.ok(lagBetween(run, 15_000, 40_000).p95 < 100, `seed ${seed}: lag p95 ${lagBetween(run, 15_000, 40_000).p95.toFixed(0)} ms`)
  }
})

t.test('plant, a backup that stops acking: the period lag is behind(now), and the limit falls', async (t) => {
  const ctl = new LagController()
  // the backup runs at full speed, then stalls completely at 5 s
  const run = runPlant({ backup: (ms) => (ms <= 5000 ? 100 : 0), controller: ctl }, 8000)
  t.equal(limitsBetween(run, 0, 5000).at(-1), 100, 'full speed while the backup keeps up')
  t.ok(run.periods.at(-1)!.lag > 2500, `lag seen at 8 s: ${run.periods.at(-1)!.lag.toFixed(0)} ms`)
  t.equal(ctl.percent, 5, 'throttled to the floor')
})

/**
 * The glue on a fake clock with the real CpuLimiter: the primary runs 5 ms slices, and the
 * limiter's sleeps (what FtLagControl sets) make its speed; the backup is fluid at r %.
 */
async function runGlue(o: { backup: (ms: number) => number; durationMs: number; enabled?: boolean }) {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(100, clock)
  const meter = new LagMeter()
  const control = new FtLagControl(meter, limiter, clock, new LagController({ enabled: o.enabled ?? true }))
  const speed = 100_000
  const stepMs = 5
  let primary = 0
  let backup = 0
  let asleep = false
  /** when the primary last became ready to run (a sleep ended mid-step: it runs from then) */
  let readyAt = 0
  const log: { at: number; instret: number }[] = []
  const acks: { at: number; executed: number }[] = []
  let horizon = 0
  const limits: { t: number; pct: number }[] = []
  const samples: { t: number; lag: number }[] = []
  while (clock.t < o.durationMs) {
    const running = !asleep
    await clock.advance(stepMs)
    const t = clock.t
    if (running) {
      primary += speed * (t - readyAt)
      readyAt = t
      meter.progress(Math.floor(primary), t)
      log.push({ at: t + 1, instret: Math.floor(primary) })
      // the limiter's sleep starts synchronously inside afterSlice (FakeTimers.sleep)
      const before = clock.sleeping
      const slice = limiter.afterSlice()
      if (clock.sleeping > before) {
        asleep = true
        void slice.then(() => {
          asleep = false
          readyAt = clock.t
        })
      }
    }
    while (log.length && log[0].at <= t) horizon = log.shift()!.instret
    backup = Math.min(horizon, backup + (speed * o.backup(t) * stepMs) / 100)
    acks.push({ at: t + 1, executed: Math.floor(backup) })
    while (acks.length && acks[0].at <= t) {
      const a = acks.shift()!
      if (a.executed > meter.executed) samples.push({ t, lag: meter.ack(a.executed, t) })
    }
    if (t % 250 === 0) limits.push({ t, pct: control.percent })
  }
  await control.stop()
  return { limits, samples, control, clock }
}

t.test('FtLagControl drives the real CpuLimiter: backup capped at 50 %, then lifted', async (t) => {
  const r = await runGlue({ backup: (ms) => (ms <= 20_000 ? 50 : 100), durationMs: 35_000 })
  const lag = percentiles(r.samples.filter((s) => s.t > 10_000 && s.t <= 20_000).map((s) => s.lag))
  t.ok(lag.p95 < 100, `lag from 10 s to 20 s: p50 ${lag.p50.toFixed(0)}, p95 ${lag.p95.toFixed(0)} ms`)
  const capped = r.limits.filter((l) => l.t > 12_000 && l.t <= 20_000).map((l) => l.pct)
  t.ok(capped.every((p) => p >= 45 && p <= 55), `limit from 12 s to 20 s: ${Math.min(...capped)}..${Math.max(...capped)} %`)
  const full = r.limits.find((l) => l.t > 20_000 && l.pct === 100)
  t.ok(full && full.t - 20_000 <= 30_000, `limit back at 100 % ${full ? full.t - 20_000 : 'never'} ms after the cap was lifted`)
  t.ok(r.limits.filter((l) => l.t >= full!.t).every((l) => l.pct === 100), 'and stays there')
  t.ok(r.control.periods >= 139, `${r.control.periods} periods decided`)
  t.ok(r.control.lagMs < 100, `the last period's lag ${r.control.lagMs.toFixed(1)} ms is exposed`)
  t.equal(r.clock.sleeping, 0, 'stop() ended the loop')
  const snap = r.control.snapshot()
  t.same([snap.percent, snap.lagMs, snap.lag.count > 1000, snap.lag.p99 < 100], [100, r.control.lagMs, true, true], 'the metrics snapshot: limit, last lag, the window of the last 10 s')
})

t.test('FtLagControl, controller off: the limit stays at 100 % and the lag grows', async (t) => {
  const r = await runGlue({ backup: () => 50, durationMs: 10_000, enabled: false })
  t.ok(r.limits.every((l) => l.pct === 100), 'never throttled')
  const last = r.samples.at(-1)!.lag
  t.ok(last > 4500 && last < 5500, `lag at 10 s ${last.toFixed(0)} ms (~5 s)`)
})

t.test('FtLagControl keeps the limit the VM started with as its ceiling', async (t) => {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(60, clock)
  const control = new FtLagControl(new LagMeter(), limiter, clock)
  await clock.advance(10_000) // no marks, no acks: lag 0 every period
  t.equal(control.periods, 40)
  t.equal(control.lagMs, 0)
  t.equal(limiter.percent, 60, 'never raised above --cpu-limit 60')
  await control.stop()
  t.same([control.controller.options.startPercent, control.controller.options.maxPercent], [60, 60])
  const lowLimiter = new CpuLimiter(2, clock)
  const low = new FtLagControl(new LagMeter(), lowLimiter, clock)
  await clock.advance(1000)
  t.same([low.controller.percent, lowLimiter.percent], [2, 2], 'a VM started below minPercent stays where it was put')
  await low.stop()
})

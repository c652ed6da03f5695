import t from 'tap'
import { CpuLimiter, CPU_LIMIT_PERIOD_MS, checkCpuPercent, parseCpuPercent, realTimers, type Timers } from '../../../src/client/vm/index.js'
import { FakeTimers } from '../../helpers/timers.js'

/**
 * The run loop on fake time: `slices` slices of `sliceMs` busy each, the limiter after every one.
 * Returns the busy time and the time elapsed, from the first slice to the end of the last call.
 */
async function drive(limiter: CpuLimiter, clock: FakeTimers, slices: number, sliceMs: number, signal?: AbortSignal): Promise<{ busy: number; elapsed: number; sleeps: number }> {
  const t0 = clock.t
  let busy = 0
  let sleeps = 0
  for (let i = 0; i < slices; i++) {
    clock.t += sliceMs
    busy += sliceMs
    const after = limiter.afterSlice(signal)
    while (clock.sleeping) await clock.advance(clock.nextWake! - clock.t)
    if (await after) sleeps++
  }
  return { busy, elapsed: clock.t - t0, sleeps }
}

/** Slices until the limiter has slept `n` times: the share is then exact (every debt paid). */
async function periods(limiter: CpuLimiter, clock: FakeTimers, n: number, sliceMs: number): Promise<{ busy: number; elapsed: number }> {
  const t0 = clock.t
  let busy = 0
  for (let slept = 0; slept < n; ) {
    const r = await drive(limiter, clock, 1, sliceMs)
    busy += r.busy
    slept += r.sleeps
  }
  return { busy, elapsed: clock.t - t0 }
}

t.test('the VM gets exactly PCT % of the time, sleeping once a period', async (t) => {
  for (const pct of [1, 10, 25, 50, 75, 90]) {
    const clock = new FakeTimers()
    const limiter = new CpuLimiter(pct, clock)
    const { busy, elapsed } = await periods(limiter, clock, 20, 0.5)
    t.ok(Math.abs(busy / elapsed - pct / 100) < 1e-9, `${pct} %: busy ${busy} ms of ${elapsed} ms`)
    // one sleep a period: busy about pct % of 20 ms (to a slice), then the rest of the period
    const idleShare = (CPU_LIMIT_PERIOD_MS * (100 - pct)) / 100
    const slice = (0.5 * (100 - pct)) / pct // the sleep one slice owes
    t.ok(clock.slept.every((ms) => ms >= idleShare - 1e-9 && ms < Math.max(idleShare, 1) + slice), `${pct} %: sleeps ${clock.slept[0].toFixed(2)} ms (idle share of a period ${idleShare} ms)`)
  }
})

t.test('a slice longer than a period is repaid in full, up to a bound', async (t) => {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(50, clock)
  t.same(await drive(limiter, clock, 1, 60), { busy: 60, elapsed: 120, sleeps: 1 }, '60 ms busy at 50 %: 60 ms of sleep, at once')
  const quarter = new CpuLimiter(25, clock)
  t.same(await drive(quarter, clock, 1, 60), { busy: 60, elapsed: 240, sleeps: 1 }, 'at 25 %: 180 ms')
  // a stopped process (SIGSTOP, a suspended host) is not repaid beyond a second
  const r = await drive(new CpuLimiter(50, clock), clock, 1, 10_000)
  t.equal(r.elapsed - r.busy, 1000, 'a 10 s slice: 1 s of sleep')
})

t.test('time waiting for an interrupt (WFI) is idle time: it pays the debt', async (t) => {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(50, clock)
  const wfi = async (ms: number) => {
    const w = limiter.idle(clock.sleep(ms))
    await clock.advance(ms)
    await w
  }
  // a guest busy 5 ms then waiting 5 ms already runs at 50 %: the limiter never sleeps
  for (let i = 0; i < 50; i++) {
    await drive(limiter, clock, 10, 0.5)
    await wfi(5)
  }
  t.same(clock.slept.filter((ms) => ms !== 5), [], 'no sleep of the limiter')
  // busy 5 ms, waiting 1 ms: the limiter sleeps the rest, and the share is 50 % again
  const t0 = clock.t
  let busy = 0
  for (let i = 0; i < 40; i++) {
    busy += (await drive(limiter, clock, 10, 0.5)).busy
    await wfi(1)
  }
  busy += (await periods(limiter, clock, 1, 0.5)).busy
  const share = busy / (clock.t - t0)
  t.ok(Math.abs(share - 0.5) < 0.01, `busy 5 ms, WFI 1 ms, limited to 50 %: share ${share.toFixed(4)}`)
})

t.test('a long wait earns no more than one period of credit', async (t) => {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(50, clock)
  const w = limiter.idle(clock.sleep(10_000))
  await clock.advance(10_000)
  await w
  let busy = 0
  while ((await drive(limiter, clock, 1, 0.5)).sleeps === 0) busy += 0.5
  // credit of one period's idle share (10 ms at 50 %) plus a period's own busy share (10 ms)
  t.ok(busy <= 20, `after 10 s waiting, ${busy} ms of full speed before the first sleep`)
})

t.test('at 100 % the limiter reads no clock and never sleeps', async (t) => {
  const clock = new FakeTimers()
  let reads = 0
  const counting: Timers = { sleep: (ms, s) => clock.sleep(ms, s), yield: () => clock.yield(), now: () => (reads++, clock.now()) }
  const limiter = new CpuLimiter(100, counting)
  reads = 0
  const r = await drive(limiter, clock, 1000, 0.5)
  t.equal(r.sleeps, 0)
  t.equal(reads, 0, 'no clock reads')
  t.same(clock.slept, [])
  t.equal(await limiter.idle(Promise.resolve(7)), 7)
  t.equal(reads, 0)
})

t.test('the share changes at run time (setPercent)', async (t) => {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(100, clock)
  await drive(limiter, clock, 100, 0.5)
  t.same(clock.slept, [], 'unlimited at first')
  limiter.setPercent(50)
  t.equal(limiter.percent, 50)
  let r = await periods(limiter, clock, 10, 0.5)
  t.ok(Math.abs(r.busy / r.elapsed - 0.5) < 1e-9, `then 50 %: ${r.busy} of ${r.elapsed} ms`)
  limiter.setPercent(25)
  r = await periods(limiter, clock, 10, 0.5)
  t.ok(Math.abs(r.busy / r.elapsed - 0.25) < 1e-9, `then 25 %: ${r.busy} of ${r.elapsed} ms`)
  limiter.setPercent(100)
  const n = clock.slept.length
  await drive(limiter, clock, 100, 0.5)
  t.equal(clock.slept.length, n, 'and unlimited again')
  t.throws(() => limiter.setPercent(0), { code: 'InvalidArgument' })
  t.equal(limiter.percent, 100, 'a refused change leaves the share as it was')
})

t.test('a stop (the run\'s signal) ends the limiter\'s sleep at once', async (t) => {
  const clock = new FakeTimers()
  const limiter = new CpuLimiter(10, clock)
  const stop = new AbortController()
  clock.t += 5
  const after = limiter.afterSlice(stop.signal)
  t.equal(clock.sleeping, 1, 'asleep (45 ms owed)')
  stop.abort()
  t.equal(await after, true)
  t.equal(clock.t, 5, 'woken without time passing')
  clock.t += 5
  t.equal(await limiter.afterSlice(stop.signal), false, 'and no more sleeps once stopped')
  // the real timers keep the same contract: an aborted sleep resolves, early
  const t0 = performance.now()
  const real = new AbortController()
  const s = realTimers.sleep(60_000, real.signal)
  real.abort()
  await s
  t.ok(performance.now() - t0 < 10_000, 'a real sleep of 60 s ends at its abort')
  await realTimers.sleep(60_000, real.signal)
})

t.test('a share outside 1..100 is refused with a clear error', async (t) => {
  for (const bad of [0, 101, -5, 50.5, NaN]) t.throws(() => new CpuLimiter(bad), { code: 'InvalidArgument', message: /1 to 100/ }, String(bad))
  t.throws(() => checkCpuPercent('50', '"cpuLimit"'), { message: 'invalid "cpuLimit" "50": a whole percentage of one core, 1 to 100' })
  t.equal(parseCpuPercent('25'), 25)
  t.equal(parseCpuPercent('100'), 100)
  for (const bad of ['0', '101', 'abc', '', '5O', '1e2', ' 50', '0x20', '-1']) t.throws(() => parseCpuPercent(bad), { code: 'InvalidArgument', message: `invalid --cpu-limit '${bad}': a whole percentage of one core, 1 to 100` }, JSON.stringify(bad))
})

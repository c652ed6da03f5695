import t from 'tap'
import { CpuLimiter, Machine, MMIO, type HostClock } from '../../../src/client/vm/index.js'
import { SLICE_MIN, SLICE_MS } from '../../../src/client/vm/machine.js'
import { PAIR_SLICE } from '../../../src/client/ft/primary.js'
import { elf, li, rv } from '../../helpers/rv.js'
import { FakeTimers } from '../../helpers/timers.js'

const CSR_MIE = 0x304
const finish = [...li(1, MMIO.FINISHER), ...li(2, 0x5555), rv.sw(2, 1, 0)]

/** The guest's mtime from the same fake clock. */
const hostClock = (clock: FakeTimers): HostClock => ({ now: () => BigInt(Math.round(clock.t * 1e6)), wall: () => 0n })

/**
 * Runs `m` to its end, moving fake time to each sleeper's due time whenever the run waits; a run
 * that does not end within 20 s of real time is stopped through `stop` (its machine's signal).
 */
async function runOnFakeTime(m: Machine, clock: FakeTimers, stop: AbortController) {
  let done = false
  const run = m.run().finally(() => (done = true))
  const t0 = performance.now()
  while (!done) {
    await clock.yield()
    if (clock.sleeping && !done) await clock.advance(clock.nextWake! - clock.t)
    if (performance.now() - t0 > 20_000) stop.abort()
  }
  return run
}

/** Sets the timer 1 s (10^7 ticks) ahead, enables its interrupt (globally off), waits (WFI), exits. */
const waitOneSecond = elf([...li(1, MMIO.CLINT + 0x4000), ...li(2, 10_000_000), rv.sw(2, 1, 0), rv.sw(0, 1, 4), ...li(3, 0x80), rv.csrrs(0, CSR_MIE, 3), rv.wfi(), ...finish])

t.test('WFI waits on the injected timers: a second of guest time on the fake clock, none real', async (t) => {
  const clock = new FakeTimers()
  const stop = new AbortController()
  const m = new Machine({ image: waitOneSecond, memory: 1 << 20, timers: clock, clock: hostClock(clock), signal: stop.signal })
  const t0 = performance.now()
  const s = await runOnFakeTime(m, clock, stop)
  t.equal(s.end, 'exit')
  t.same(clock.slept, [1000], 'one wait, to the timer')
  t.equal(clock.t, 1000)
  t.ok(performance.now() - t0 < 900, `${(performance.now() - t0).toFixed(0)} ms of real time`)
})

t.test('a CPU limit does not count the WFI wait as busy', async (t) => {
  const clock = new FakeTimers()
  const stop = new AbortController()
  const limiter = new CpuLimiter(50, clock)
  const m = new Machine({ image: waitOneSecond, memory: 1 << 20, timers: clock, clock: hostClock(clock), limiter, signal: stop.signal })
  const s = await runOnFakeTime(m, clock, stop)
  t.equal(s.end, 'exit')
  t.same(clock.slept, [1000], 'the wait, and no sleep of the limiter after it')
})

t.test('the run loop holds a busy guest to its CPU share (each slice costs 1 ms of fake time)', async (t) => {
  // 2.5 M iterations of a 2-instruction loop: 100 slices of 50 000 instructions
  const busyLoop = elf([...li(5, 2_500_000), rv.addi(5, 5, -1), rv.bne(5, 0, -4), ...finish])
  for (const pct of [50, 25]) {
    const clock = new FakeTimers()
    const stop = new AbortController()
    const m = new Machine({ image: busyLoop, memory: 1 << 20, timers: clock, clock: hostClock(clock), limiter: new CpuLimiter(pct, clock), signal: stop.signal })
    let slices = 0
    const run = m.hart.run.bind(m.hart)
    m.hart.run = (limit) => {
      slices++
      clock.t += 1
      return run(limit)
    }
    const s = await runOnFakeTime(m, clock, stop)
    t.equal(s.end, 'exit')
    const share = slices / clock.t
    // the sleeps repay every slice but those after the last sleep (less than a period's share)
    t.ok(Math.abs(share - pct / 100) < 0.03, `${pct} %: ${slices} slices of 1 ms in ${clock.t} ms (share ${(share * 100).toFixed(1)} %)`)
    t.ok(clock.slept.length >= 5, `${clock.slept.length} sleeps`)
  }
})

/** The length of every slice `m` is asked to run; the engine runs 10^6 instructions per ms of fake time. */
function recordSlices(m: Machine, clock: FakeTimers): number[] {
  const slices: number[] = []
  const run = m.hart.run.bind(m.hart)
  m.hart.run = (limit) => {
    const from = m.hart.instret
    slices.push(limit - from)
    const r = run(limit)
    clock.t += (m.hart.instret - from) / 1e6
    return r
  }
  return slices
}

t.test('a slice lasts SLICE_MS at the rate the last one ran, and ends no later than the timer deadline', async (t) => {
  // 5 M iterations of a 2-instruction loop; the timer armed 0.5 ms (5000 ticks) ahead, its interrupt left off
  const armed = elf([...li(1, MMIO.CLINT + 0x4000), ...li(2, 5000), rv.sw(2, 1, 0), rv.sw(0, 1, 4), ...li(5, 5_000_000), rv.addi(5, 5, -1), rv.bne(5, 0, -4), ...finish])
  const clock = new FakeTimers()
  const stop = new AbortController()
  const m = new Machine({ image: armed, memory: 1 << 20, timers: clock, clock: hostClock(clock), signal: stop.signal })
  const slices = recordSlices(m, clock)
  const s = await runOnFakeTime(m, clock, stop)
  t.equal(s.end, 'exit')
  // the slices the CLINT stores cut short (5 instructions, then 1) and the first whole one, at no known rate yet: the shortest
  t.same(slices.slice(0, 3), [SLICE_MIN, SLICE_MIN, SLICE_MIN], `slices asked for: ${JSON.stringify(slices)}`)
  // then the rest of the deadline 0.5 ms in at 10^6 instructions a ms (the 0.05 ms of the first slice gone; float rounding aside)
  t.ok(Math.abs(slices[3] - 450_000) <= 1, `the next ends at the timer's deadline: ${slices[3]}`)
  t.ok(slices.slice(4, -1).every((n) => Math.abs(n - SLICE_MS * 1_000_000) <= 1), 'the deadline passed (its interrupt pending): slices of SLICE_MS at the rate')
  t.ok(slices.length < 20, `${slices.length} slices for ${s.instructions} instructions (${Math.ceil(s.instructions / SLICE_MIN)} at the shortest)`)
})

t.test('slices stay SLICE_MIN while a disk request is in flight, and while the NIC has a cable', async (t) => {
  // a disk request (ring at 0x80001000, 4 slots, producer 1), then 3 M iterations of a 2-instruction loop
  const HBA = MMIO.HBA
  const busy = elf([...li(1, HBA), ...li(2, 0x80001000), rv.sw(2, 1, 0), rv.addi(3, 0, 4), rv.sw(3, 1, 4), rv.addi(3, 0, 1), rv.sw(3, 1, 8), ...li(5, 3_000_000), rv.addi(5, 5, -1), rv.bne(5, 0, -4), ...finish])
  const never = { blocks: 1024, execute: () => new Promise<never>(() => {}) }
  const cable = { send: () => {}, onReceive: null, close: () => {} }
  for (const [what, extra] of [['a request that never completes', { disk: never }], ['a NIC with a cable', { net: cable }], ['neither', {}]] as const) {
    const clock = new FakeTimers()
    const stop = new AbortController()
    const m = new Machine({ image: busy, memory: 1 << 20, timers: clock, clock: hostClock(clock), signal: stop.signal, ...extra })
    // the ring's first slot: TEST UNIT READY (a 6-byte CDB of zeros, no data)
    m.mem.bytes[0x1000 + 24] = 6
    const slices = recordSlices(m, clock)
    const s = await runOnFakeTime(m, clock, stop)
    t.equal(s.end, 'exit', `${what}: the guest ends`)
    const longest = Math.max(...slices)
    if (what === 'neither') t.ok(longest > SLICE_MIN, `${what}: slices grow (${longest})`)
    else t.equal(longest, SLICE_MIN, `${what}: every slice ${SLICE_MIN} (${slices.length} slices)`)
  }
})

t.test("a machine's own slice length (an FT pair's PAIR_SLICE): its ms at the rate, at most its instructions, SLICE_MIN while I/O is live", async (t) => {
  // 10 M iterations of a 2-instruction loop, then a disk request that never completes and 1 M more
  const HBA = MMIO.HBA
  const image = elf([...li(5, 10_000_000), rv.addi(5, 5, -1), rv.bne(5, 0, -4), ...li(1, HBA), ...li(2, 0x80001000), rv.sw(2, 1, 0), rv.addi(3, 0, 4), rv.sw(3, 1, 4), rv.addi(3, 0, 1), rv.sw(3, 1, 8), ...li(5, 1_000_000), rv.addi(5, 5, -1), rv.bne(5, 0, -4), ...finish])
  const never = { blocks: 1024, execute: () => new Promise<never>(() => {}) }
  for (const [what, slice, expect] of [
    [`PAIR_SLICE (${PAIR_SLICE.ms} ms, at most ${PAIR_SLICE.maxInstructions})`, PAIR_SLICE, Math.min(PAIR_SLICE.ms * 1_000_000, PAIR_SLICE.maxInstructions)],
    ['2 ms, at most 10 M', { ms: 2, maxInstructions: 10_000_000 }, 2_000_000],
    ['4 ms, at most 3 M', { ms: 4, maxInstructions: 3_000_000 }, 3_000_000],
    ['the default', undefined, SLICE_MS * 1_000_000],
  ] as const) {
    const clock = new FakeTimers()
    const stop = new AbortController()
    const m = new Machine({ image, memory: 1 << 20, timers: clock, clock: hostClock(clock), signal: stop.signal, disk: never, slice })
    m.mem.bytes[0x1000 + 24] = 6
    const slices = recordSlices(m, clock)
    const s = await runOnFakeTime(m, clock, stop)
    t.equal(s.end, 'exit', `${what}: the guest ends`)
    // the loop's slices: after the first (no rate known yet), each at the rate for the slice's ms, up to its cap
    const loop = slices.slice(1).filter((n) => n > SLICE_MIN)
    t.ok(loop.length >= 3 && loop.slice(0, -1).every((n) => Math.abs(n - expect) <= 1), `${what}: slices of ${expect} (${JSON.stringify(slices.slice(0, 8))}…)`)
    // the request in flight: SLICE_MIN to the end
    t.equal(slices[slices.length - 1], SLICE_MIN, `${what}: SLICE_MIN once a request is in flight`)
  }
})

t.test('a live slice whose code runs slower than it was sized for ends by its deadline, at a block boundary (jit)', async (t) => {
  // a 2-instruction loop, 10 M times: one block that goes round while its budget allows
  const loop = [...li(5, 10_000_000), rv.jal(0, 4), rv.addi(5, 5, -1), rv.bne(5, 0, -4), ...finish]
  const head = 0x80000000 + 4 * 3
  {
    const m = new Machine({ image: elf(loop), memory: 1 << 20, engine: 'jit' })
    let looks = 0
    const r = m.hart.run(8_000_000, true, { at: 2, now: () => looks++ })
    t.equal(r, 'limit', 'the slice ends as at its length')
    t.equal(looks, 3, 'at the third look at the clock (the first two before the deadline)')
    t.ok(m.hart.instret > 100_000 && m.hart.instret <= 150_004, `after ~150 000 of its 8 M instructions (${m.hart.instret}): the loop's block ran 50 000 at a time`)
    t.equal(m.hart.pc >>> 0, head, "at the loop's head (a block boundary)")
    t.equal((m.hart.instret - 3) % 2, 0, 'after whole passes of the loop')
  }
  for (const [what, soft, deadline] of [
    ['an exact limit (a replay, a pause point)', false, { at: 0, now: () => 1 }],
    ['no deadline', true, undefined],
  ] as const) {
    const m = new Machine({ image: elf(loop), memory: 1 << 20, engine: 'jit' })
    const r = m.hart.run(8_000_001, soft, deadline)
    t.equal(r, 'limit', `${what}: the slice runs its length`)
    t.ok(m.hart.instret >= 8_000_001 - 64, `${what}: to its limit (${m.hart.instret})`)
  }

  // a machine's live slices: the clock, read while the hart runs, moves 0.02 ms a look (50 000
  // instructions) for the first 5 slices, then 0.4 ms: code that turned 20 times slower
  const clock = new FakeTimers()
  const stop = new AbortController()
  const m = new Machine({ image: elf(loop), memory: 1 << 20, engine: 'jit', timers: clock, clock: hostClock(clock), signal: stop.signal, slice: { ms: 2, maxInstructions: 4_000_000 } })
  // (a look comes every 50 000 instructions of this loop; after the slice the clock shows its whole time)
  let step = 0
  const fakeNow = clock.now.bind(clock)
  clock.now = () => (step ? (clock.t += step) : fakeNow())
  const slices: { asked: number; ran: number; ms: number }[] = []
  const run = m.hart.run.bind(m.hart)
  m.hart.run = (limit, soft, deadline) => {
    const from = m.hart.instret
    const t0 = clock.t
    const per = slices.length < 5 ? 0.02 : 0.4
    step = per
    const r = run(limit, soft, deadline)
    step = 0
    const ran = m.hart.instret - from
    clock.t = t0 + (ran / 50_000) * per
    slices.push({ asked: limit - from, ran, ms: clock.t - t0 })
    return r
  }
  const s = await runOnFakeTime(m, clock, stop)
  t.equal(s.end, 'exit', 'the guest ends')
  t.equal(s.instructions, 3 + 2 * 10_000_000 + finish.length, 'every instruction ran')
  const slow = slices[5]
  t.ok(slow.asked > 2_000_000, `the first slow slice was sized at the fast rate (${slow.asked} instructions: ${(slow.asked / 50_000) * 0.4} ms at the slow one)`)
  t.ok(slow.ran < slow.asked && slow.ms <= 3 + 0.4, `it ended by its deadline, 1.5 × 2 ms (${slow.ran} instructions, ${slow.ms.toFixed(1)} ms)`)
  t.ok(slices.every((x) => x.ms <= 3 + 0.4), `no slice ran past its deadline's look (longest ${Math.max(...slices.map((x) => x.ms)).toFixed(1)} ms)`)
})

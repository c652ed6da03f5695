import t from 'tap'
import { spawn } from 'node:child_process'
import { appendFileSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { EVENT, EventSource, FileEventSink, HEADER_BYTES, LOG_CLOSE, LogHeader, MemoryEventSink, RECORD_BYTES, RecordHead, decodeEvent, encodeEvent, encodeHeader, followEventLog, recordBytes, type LogEvent } from '../../../src/client/vm/events.js'
import { guestPath } from '../../../src/client/vm/guests.js'
import { CLI, tandem, tmp } from '../../helpers/peers.js'
import { FakeClock } from '../../helpers/locks.js'

const sha = Buffer.alloc(32, 0xab)
const expect = { memoryBytes: 4096, imageSha: sha }

/** a small log: reads, a frame, an interrupt at the frame's count, the end, the close mark */
async function smallLog(): Promise<{ log: Buffer; events: LogEvent[]; ends: number[] }> {
  const events: LogEvent[] = [
    { kind: EVENT.TIME, arg: 0, instret: 10, value: 1 },
    { kind: EVENT.NET, arg: 0, instret: 20, value: 5, extra: Buffer.from('hello') },
    { kind: EVENT.IRQ, arg: 7, instret: 20, value: 1 },
    { kind: EVENT.END, arg: 0, instret: 30, value: 0 },
  ]
  const sink = new MemoryEventSink(encodeHeader(4096, sha))
  for (const e of events) sink.add(e.kind as 1, e.arg, e.instret, e.value, e.extra)
  await sink.close()
  const ends: number[] = []
  let at = HEADER_BYTES
  for (const e of events) ends.push((at += recordBytes(e.extra?.length ?? 0)))
  return { log: sink.bytes(), events, ends }
}

/** every record of a source, waiting for more as it goes */
async function drainSource(s: EventSource): Promise<LogEvent[]> {
  const got: LogEvent[] = []
  for (;;) {
    const e = s.next()
    if (e) got.push(e)
    else if (!(await s.more())) return got
  }
}

const tick = () => new Promise((r) => setImmediate(r))
/** advances the fake clock a poll at a time until `cond` holds (the follower's reads are real I/O) */
async function pollUntil(clock: FakeClock, cond: () => boolean, what: string): Promise<void> {
  const end = Date.now() + 20_000
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await clock.advance(20)
    await new Promise((r) => setTimeout(r, 1))
  }
}
/** waits (in real time, generously bounded) until `cond` holds */
async function until(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 1))
  }
}

t.test('a source fed one byte at a time hands out each record when its last byte arrives', async (t) => {
  const { log, events, ends } = await smallLog()
  t.equal(log.length, ends[3] + RECORD_BYTES, 'the close mark is the last record')
  const s = new EventSource('pieces', expect)
  const header = s.header()
  const past: string[] = []
  void s.waitPast(10).then(() => past.push(`10@${got.length}`))
  void s.waitPast(20).then(() => past.push(`20@${got.length}`))
  const wakes: string[] = []
  let resolved: boolean | null = null
  const arm = () => void s.more().then((v) => (resolved = v))
  arm()
  const got: { e: LogEvent; at: number }[] = []
  const horizons: number[] = []
  for (let i = 0; i < log.length; i++) {
    s.push(log.subarray(i, i + 1))
    await tick()
    while (resolved !== null) {
      wakes.push(`${resolved}@${i + 1}`)
      const again = resolved
      resolved = null
      if (again) {
        arm()
        await tick()
      }
    }
    for (let e = s.next(); e; e = s.next()) got.push({ e, at: i + 1 })
    horizons.push(s.horizon)
  }
  t.same(wakes, [...ends.map((e) => `true@${e}`), `false@${ends[3]}`], 'more() wakes at each record\'s last byte; false once END is in')
  await header
  t.same(past, ['10@1', '20@3'], 'waitPast(10) once the frame at 20 is in; waitPast(20) only at END (the interrupt at 20 might have been followed by more at 20)')
  t.same(
    got.map((g) => g.e),
    events,
    'every event, in order, with its extra bytes',
  )
  t.same(
    got.map((g) => g.at),
    ends,
    'each handed out exactly when its last byte arrived',
  )
  t.equal(horizons[ends[1] - 1], 20, 'the frame at 20 is in, the interrupt at 20 may still come: horizon 20')
  t.equal(horizons[ends[0] - 1], 10)
  t.equal(horizons[ends[3] - 1], Infinity, 'END read: complete')
  t.ok(s.ended)
  t.equal(await s.more(), false, 'more() on a complete log: false at once')
  t.equal(s.position, 4)
  t.equal(s.peek(), null, 'the close mark is not an event')
})

t.test('random splits read the same events as the whole file; a v1 log (no close mark) still reads', async (t) => {
  const { log, events } = await smallLog()
  for (let seed = 1; seed <= 20; seed++) {
    const s = new EventSource('split', expect)
    let at = 0
    const reading = drainSource(s)
    while (at < log.length) {
      const n = 1 + ((seed * 7919 * (at + 1)) % 37)
      s.push(log.subarray(at, at + n))
      at += n
      await tick()
    }
    t.same(await reading, events, `seed ${seed}`)
  }
  const d = tmp(t)
  const v1 = Buffer.from(log.subarray(0, log.length - RECORD_BYTES))
  LogHeader.set(v1, 'version', 1)
  writeFileSync(join(d, 'v1.log'), v1)
  const whole = await EventSource.open(join(d, 'v1.log'), 4096, sha)
  t.same(await drainSource(whole), events, 'a version 1 log replays as before')
  // a close mark in a version 1 log is a record of an unknown kind
  const bad = Buffer.concat([v1.subarray(0, HEADER_BYTES), Buffer.alloc(RECORD_BYTES)])
  encodeEvent({ kind: LOG_CLOSE, arg: 0, instret: 0, value: 0 }, bad, HEADER_BYTES)
  writeFileSync(join(d, 'v1-close.log'), bad)
  const b = await EventSource.open(join(d, 'v1-close.log'), 4096, sha)
  t.throws(() => b.peek(), /record 0 \(byte 48\) is corrupt \(kind 8, instruction 0\)/)
})

t.test('a source rejects a bad header, a damaged record and a wrong close mark by name', async (t) => {
  const { log, ends } = await smallLog()
  const s = new EventSource('other', { memoryBytes: 8192, imageSha: sha })
  const more = s.more()
  s.push(log.subarray(0, 100))
  await t.rejects(s.header(), /'other' was recorded with 4096 bytes of memory, this run has 8192/)
  await t.rejects(more, /recorded with 4096 bytes/)
  t.ok(s.ended)

  const bad = Buffer.from(log)
  bad[ends[1] + 4] ^= 1 // the IRQ record's instruction count
  const d = new EventSource('damaged', expect)
  d.push(bad.subarray(0, ends[1] + 10))
  t.ok(d.next() && d.next(), 'the records before the damage')
  t.equal(d.peek(), null, 'the damaged record is not complete yet')
  const m = d.more()
  d.push(bad.subarray(ends[1] + 10))
  t.equal(await m, true, 'more() wakes on the damaged record')
  t.throws(() => d.peek(), { name: 'ReplayError', message: `'damaged': record 2 (byte ${ends[1]}) is corrupt (CRC mismatch)` })

  // a close mark that counts other records than the log has
  const sink = new MemoryEventSink(encodeHeader(4096, sha))
  sink.add(EVENT.TIME, 0, 1, 1)
  const body = sink.bytes()
  const mark = Buffer.alloc(RECORD_BYTES)
  encodeEvent({ kind: LOG_CLOSE, arg: 0, instret: 1, value: 5 }, mark, 0)
  const c = new EventSource('counted', expect)
  c.push(Buffer.concat([body, mark]))
  c.end()
  t.ok(c.next())
  t.throws(() => c.peek(), /'counted': the close mark counts 5 records, the log has 1/)
})

t.test('following a file: a log cut mid-record waits; the rest arrives; damage fails with the record number', async (t) => {
  const { log, events, ends } = await smallLog()
  const d = tmp(t)
  const file = join(d, 'growing.log')
  writeFileSync(file, log.subarray(0, 30)) // not even the header yet
  const clock = new FakeClock()
  let polls = 0
  const timers = { setTimeout: (fn: () => void, ms: number) => (polls++, clock.setTimeout(fn, ms)), clearTimeout: (h: unknown) => clock.clearTimeout(h) }
  const opening = followEventLog(file, 4096, sha, { timers, pollMs: 20 })
  await until(() => polls > 0, 'the first poll')
  appendFileSync(file, log.subarray(30, ends[1] + 9)) // the header, two records, part of the third
  let s: EventSource | null = null
  void opening.then((x) => (s = x))
  await pollUntil(clock, () => s !== null && s.peek() !== null, 'the header and the first record')
  const f0 = s! as EventSource
  t.same(f0.next(), events[0])
  t.same(f0.next(), events[1])
  t.equal(f0.peek(), null, 'a partial record is waited for')
  t.equal(f0.ended, false)
  t.equal(f0.horizon, 20)
  let more: boolean | null = null
  void f0.more().then((v) => (more = v))
  const before = polls
  await pollUntil(clock, () => polls >= before + 10, 'ten polls')
  t.equal(more, null, 'ten polls of a cut log: more() still waits, no error')
  t.equal(f0.peek(), null)
  appendFileSync(file, log.subarray(ends[1] + 9, ends[2] + 3))
  await pollUntil(clock, () => more !== null, 'more() after the append')
  t.equal(more, true)
  t.same(f0.next(), events[2])
  t.equal(f0.peek(), null)
  appendFileSync(file, log.subarray(ends[2] + 3))
  await pollUntil(clock, () => f0.ended, 'the END record')
  t.same(f0.next(), events[3])
  t.equal(await f0.more(), false, 'END read: complete')

  // damage found while following: the record number and byte, not a wait
  const bad = Buffer.from(log)
  bad[ends[0] + 17] ^= 0x80
  const file2 = join(d, 'damaged.log')
  writeFileSync(file2, bad.subarray(0, ends[0] + 5))
  const f = await followEventLog(file2, 4096, sha, { timers: clock, pollMs: 20 })
  await pollUntil(clock, () => f.peek() !== null, 'the first record')
  t.same(f.next(), events[0])
  let m: boolean | null = null
  void f.more().then((v) => (m = v))
  appendFileSync(file2, bad.subarray(ends[0] + 5, ends[1]))
  await pollUntil(clock, () => m !== null, 'the damaged record')
  t.equal(m, true)
  t.throws(() => f.peek(), new RegExp(`record 1 \\(byte ${ends[0]}\\) is corrupt \\(CRC mismatch\\)`))
  t.ok(f.ended, 'a damaged log ends there')

  // the signal stops a follower: the source ends where the file ends
  const file3 = join(d, 'stopped.log')
  writeFileSync(file3, log.subarray(0, ends[0] + 3))
  const stop = new AbortController()
  const g = await followEventLog(file3, 4096, sha, { timers: clock, pollMs: 20, signal: stop.signal })
  await pollUntil(clock, () => g.peek() !== null, 'the first record')
  stop.abort()
  await until(() => g.ended, 'the source to end')
  t.same(await drainSource(g), [events[0]], 'the records received; the cut one dropped')
  t.equal(await g.more(), false, 'stopped: more() is false')
  await t.rejects(followEventLog(join(d, 'nosuch.log'), 4096, sha), /cannot read the replay log .*nosuch\.log/)
})

t.test('FileEventSink: the log grows while it is written, memory stays bounded, the close mark ends it', async (t) => {
  const d = tmp(t)
  const file = join(d, 'long.log')
  const N = 5_000_000
  const sink = await FileEventSink.create(file, encodeHeader(4096, sha))
  // bring the allocator and the JIT to a steady state before measuring
  for (let i = 0; i < 100_000; i++) sink.add(EVENT.TIME, 0, i, i)
  await sink.flush()
  global.gc?.()
  const rss0 = process.memoryUsage().rss
  let peakRss = rss0
  let peakPending = 0
  let sizeMidway = 0
  for (let i = 100_000; i < N; i++) {
    sink.add(EVENT.TIME, i & 3, i, i ^ 0x5a5a)
    if ((i & 0x3fff) === 0) {
      peakPending = Math.max(peakPending, sink.pendingBytes)
      await sink.drain()
      peakRss = Math.max(peakRss, process.memoryUsage().rss)
      if (i === 2_506_752) sizeMidway = statSync(file).size
    }
  }
  t.equal(sink.count, N)
  await sink.close()
  const size = HEADER_BYTES + (N + 1) * RECORD_BYTES
  const log = readFileSync(file)
  t.equal(log.length, size, `${N} records and the close mark: ${size} bytes`)
  t.ok(sizeMidway >= HEADER_BYTES + 2_400_000 * RECORD_BYTES, `half way the file already held ${sizeMidway} bytes`)
  const grew = peakRss - rss0
  t.ok(grew < 32 << 20, `rss grew ${(grew / 2 ** 20).toFixed(1)} MiB writing a ${(size / 2 ** 20).toFixed(0)} MiB log`)
  t.ok(peakPending <= 2 << 20, `at most ${peakPending} bytes waited to be written`)
  // the last records and the close mark
  const from = log.length - 3 * RECORD_BYTES
  t.same(decodeEvent(log, from), { kind: EVENT.TIME, arg: (N - 2) & 3, instret: N - 2, value: (N - 2) ^ 0x5a5a })
  t.same(decodeEvent(log, from + RECORD_BYTES), { kind: EVENT.TIME, arg: (N - 1) & 3, instret: N - 1, value: (N - 1) ^ 0x5a5a })
  t.same(RecordHead.decode(log, from + 2 * RECORD_BYTES), { kind: LOG_CLOSE, arg: 0, extraLength: 0, instret: N - 1, value: N }, 'the close mark counts the records')
})

t.test('FileEventSink: written chunk buffers are reused, never before their records are written', async (t) => {
  const file = join(tmp(t), 'reuse.log')
  const sink = await FileEventSink.create(file, encodeHeader(4096, sha), { chunkBytes: 4096, maxChunks: 4 })
  // a dropped buffer is freed only by a GC, which a recording (little garbage) makes rare: counted here
  const real = Buffer.allocUnsafeSlow
  let made = 0
  Buffer.allocUnsafeSlow = ((n: number) => (made++, real(n))) as typeof Buffer.allocUnsafeSlow
  t.teardown(() => void (Buffer.allocUnsafeSlow = real))
  const N = 100_000
  for (let i = 0; i < N; i++) {
    sink.add(EVENT.TIME, i & 3, i, i ^ 0x5a5a)
    if ((i & 255) === 0) await sink.drain()
  }
  await sink.close()
  Buffer.allocUnsafeSlow = real
  const chunks = Math.ceil((N * RECORD_BYTES) / 4096)
  t.ok(made <= 8, `${made} chunk buffers made for ~${chunks} chunks of records`)
  const got = await drainSource(await EventSource.open(file, 4096, sha))
  t.equal(got.length, N)
  t.equal(got.filter((e, i) => e.kind !== EVENT.TIME || e.arg !== (i & 3) || e.instret !== i || e.value !== (i ^ 0x5a5a)).length, 0, 'every record as added (none overwritten in a reused buffer)')
})

t.test('FileEventSink: a partial chunk reaches the file flushMs after its first record', async (t) => {
  const file = join(tmp(t), 'slow.log')
  const clock = new FakeClock()
  const armed = new Set<unknown>()
  const timers = {
    setTimeout: (fn: () => void, ms: number) => {
      const h: unknown = clock.setTimeout(() => (armed.delete(h), fn()), ms)
      armed.add(h)
      return h
    },
    clearTimeout: (h: unknown) => (armed.delete(h), clock.clearTimeout(h)),
  }
  const sink = await FileEventSink.create(file, encodeHeader(4096, sha), { flushMs: 100, timers })
  await sink.flush()
  t.equal(statSync(file).size, HEADER_BYTES, 'the header is written first')
  sink.add(EVENT.TIME, 0, 1, 1)
  await clock.advance(90)
  sink.add(EVENT.TIME, 0, 2, 2)
  await sink.drain()
  t.equal(statSync(file).size, HEADER_BYTES, 'records wait in the chunk until flushMs')
  await clock.advance(10)
  // the write lands in the file a moment before its completion reaches the sink (ci40 saw 40 bytes
  // still pending on the size alone): both are waited for
  await until(() => statSync(file).size === HEADER_BYTES + 2 * RECORD_BYTES && sink.pendingBytes === 0, 'the records on disk, none pending')
  await sink.close()
  t.equal(statSync(file).size, HEADER_BYTES + 3 * RECORD_BYTES, 'and the close mark')
  t.equal(armed.size, 0, 'no timer left armed')
  t.throws(() => sink.add(EVENT.TIME, 0, 3, 3), /add after close/)
})

t.test('FileEventSink: a write error is surfaced by drain, flush and close', { skip: existsSync('/dev/full') ? undefined : 'no /dev/full' }, async (t) => {
  const sink = await FileEventSink.create('/dev/full', encodeHeader(4096, sha), { chunkBytes: 4096, maxChunks: 2 })
  for (let i = 0; i < 10_000; i++) sink.add(EVENT.TIME, 0, i, i)
  await t.rejects(sink.drain(), { name: 'StorageError', code: 'NoSpace', message: /Could not write '\/dev\/full'/ })
  for (let i = 0; i < 10_000; i++) sink.add(EVENT.TIME, 0, i, i)
  t.ok(sink.pendingBytes <= 4096, 'events after the error are dropped, not kept')
  await t.rejects(sink.flush(), { code: 'NoSpace' })
  await t.rejects(sink.close(), { code: 'NoSpace' })
  const r = tandem(['vm', 'run', '--guest', 'cpu', '--record', '/dev/full'])
  t.not(r.status, 0)
  t.match(r.stderr, /Could not write '\/dev\/full'/)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
})

t.test('tandem vm run --record: a follower in another process reads the log as it grows, record for record', async (t) => {
  const d = tmp(t)
  const file = join(d, 'ticker.log')
  const image = readFileSync(guestPath('ticker'))
  const tickerSha = createHash('sha256').update(image).digest()
  // on the interpreter: under the JIT the recording (~0.3 s) could end before a follower on a busy machine reads its first record
  const child = spawn(process.execPath, [CLI, 'vm', 'run', '--json', '--guest', 'ticker', '--engine', 'interp', '--record', file], { stdio: ['ignore', 'pipe', 'ignore'] })
  let out = ''
  child.stdout.on('data', (b) => (out += b))
  let exited = false
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => ((exited = true), r(code))))
  t.teardown(() => void (exited || child.kill('SIGKILL')))
  await until(() => existsSync(file) || exited, 'the log file')
  const s = await followEventLog(file, 64 << 20, tickerSha, { pollMs: 10 })
  const got: LogEvent[] = []
  let whileRunning = 0
  let sizeAtFirst = 0
  for (;;) {
    const e = s.next()
    if (e) {
      if (!got.length) sizeAtFirst = statSync(file).size
      got.push(e)
      if (!exited) whileRunning = got.length
    } else if (!(await s.more())) break
  }
  t.equal(await exit, 0, 'the recording ran to its end')
  const summary = JSON.parse(out) as { events: number }
  t.ok(whileRunning > 0, `${whileRunning} of ${got.length} records read while the VM ran`)
  const whole = await drainSource(await EventSource.open(file, 64 << 20, tickerSha))
  t.equal(got.length, summary.events, 'as many records as the run logged')
  t.same(got, whole, 'the same records as the final file')
  t.equal(whole.at(-1)?.kind, EVENT.END)
  const closeMark = readFileSync(file).subarray(-RECORD_BYTES)
  t.equal(closeMark[0], LOG_CLOSE, 'the file ends with the close mark')
  t.ok(sizeAtFirst < readFileSync(file).length / 2, `the first record was read when the log held ${sizeAtFirst} of its ${readFileSync(file).length} bytes`)
  // a complete log replays the same through --follow
  const rep = tandem(['vm', 'run', '--json', '--guest', 'ticker', '--replay', file, '--follow'])
  t.equal(rep.status, 0, rep.stderr.slice(-300))
  t.equal((JSON.parse(rep.stdout) as { events: number }).events, summary.events)
})

t.test('tandem vm run --record: stopped by SIGINT, the log is closed complete', async (t) => {
  const d = tmp(t)
  const file = join(d, 'stopped.log')
  // on the interpreter: under the JIT the run (~0.3 s) could end before the signal arrives
  const child = spawn(process.execPath, [CLI, 'vm', 'run', '--json', '--guest', 'ticker', '--engine', 'interp', '--record', file], { stdio: ['ignore', 'pipe', 'ignore'] })
  let out = ''
  child.stdout.on('data', (b) => (out += b))
  const exit = new Promise<number | null>((r) => child.on('exit', (code) => r(code)))
  await until(() => existsSync(file) && readFileSync(file).length > HEADER_BYTES, 'the first records on disk')
  child.kill('SIGINT')
  t.equal(await exit, 130)
  const events = await drainSource(await EventSource.open(file, 64 << 20, createHash('sha256').update(readFileSync(guestPath('ticker'))).digest()))
  t.equal(events.length, (JSON.parse(out) as { events: number }).events)
  t.same(events.at(-1), { ...events.at(-1), kind: EVENT.END, arg: 1 }, 'the last event: stopped by the host')
  t.equal(readFileSync(file).subarray(-RECORD_BYTES)[0], LOG_CLOSE, 'then the close mark')
})

t.test(
  'tandem vm run --replay L --follow, started beside the recording, ends with its hashes',
  async (t) => {
    const d = tmp(t)
    const file = join(d, 'live.log')
    const runJson = (args: string[]) =>
      new Promise<{ status: number | null; summary: { end: string; instructions: number; events: number; stateHash: string; consoleHash: string } | null }>((resolve) => {
        const c = spawn(process.execPath, [CLI, 'vm', 'run', '--json', '--guest', 'ticker', ...args], { stdio: ['ignore', 'pipe', 'ignore'] })
        let out = ''
        c.stdout.on('data', (b) => (out += b))
        t.teardown(() => void (c.exitCode === null && c.kill('SIGKILL')))
        c.on('exit', (status) => {
          let summary = null
          try {
            summary = JSON.parse(out)
          } catch {}
          resolve({ status, summary })
        })
      })
    const recording = runJson(['--record', file])
    await until(() => existsSync(file) && statSync(file).size >= HEADER_BYTES, 'the log header')
    const replaying = runJson(['--replay', file, '--follow'])
    const [rec, rep] = await Promise.all([recording, replaying])
    t.equal(rec.status, 0)
    t.equal(rep.status, 0, `the replay: ${rep.summary?.end}`)
    t.equal(rep.summary?.instructions, rec.summary?.instructions)
    t.equal(rep.summary?.events, rec.summary?.events)
    t.equal(rep.summary?.stateHash, rec.summary?.stateHash, 'the same state')
    t.equal(rep.summary?.consoleHash, rec.summary?.consoleHash, 'the same console')
  },
)

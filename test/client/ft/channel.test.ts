import t from 'tap'
import { connect, createServer, type Socket } from 'node:net'
import { CLOSE_GRACE_MS, FtChannel, FtListener, type FtEnd } from '../../../src/client/ft/channel.js'
import { FaultLink } from '../../../src/client/ft/fault-link.js'
import { FrameDecoder, encodeFrame, type FtMessage } from '../../../src/client/ft/protocol.js'
import { within } from '../../helpers/peers.js'
import { FakeTimers } from '../../helpers/timers.js'

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))

type Tap = { teardown(fn: () => unknown): void }

/** Waits (real time, bounded) until `cond` holds: socket I/O is real even when the clock is fake. */
async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await pause(2)
  }
}

/** A backup listener and a primary connected to it (through `port` if given), both on `timers`. */
async function pair(t: Tap, timers: FakeTimers, o: { via?: (port: number) => Promise<number>; lossMs?: number } = {}) {
  const listener = await FtListener.listen({ port: 0, timers, lossMs: o.lossMs })
  const accepted = new Promise<FtChannel>((r) => listener.once('channel', r))
  const port = o.via ? await o.via(listener.port) : listener.port
  const primary = await FtChannel.connect({ port, timers, lossMs: o.lossMs })
  const backup = await accepted
  t.teardown(async () => {
    primary.close()
    await listener.close()
    await timers.advance(CLOSE_GRACE_MS)
  })
  return { listener, primary, backup }
}

/** collects a channel's messages */
const inbox = (ch: FtChannel): FtMessage[] => {
  const got: FtMessage[] = []
  ch.on('message', (m) => got.push(m))
  return got
}

/** a flag that turns true when the promise settles */
const settled = <T>(p: Promise<T>) => {
  const s = { done: false, value: undefined as T | undefined }
  void p.then((v) => ((s.done = true), (s.value = v)))
  return s
}

const sha = Buffer.alloc(32, 1)

t.test('messages pass both ways; counters count frames per type', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  const atBackup = inbox(backup)
  const hello: FtMessage = { type: 'HELLO', version: 1, vm: 'vm1', mode: 'replay', lockGeneration: 3, memoryBytes: 1 << 20, imageSha256: sha, start: 'boot', backupReads: 'disk', instret: 0 }
  t.equal(primary.send(hello), true)
  const ok = primary.next('HELLO_OK')
  await until(() => atBackup.length === 1, 'HELLO')
  t.same(atBackup[0], hello)
  backup.send({ ...hello, type: 'HELLO_OK' })
  t.same(await ok, { ...hello, type: 'HELLO_OK' })
  const records = Buffer.alloc(1000, 7)
  for (let i = 0; i < 5; i++) primary.send({ type: 'LOG', records })
  await until(() => atBackup.length === 6, 'the LOG frames')
  t.same(atBackup[5], { type: 'LOG', records })
  t.equal(primary.sent.byType.LOG.messages, 5)
  t.equal(primary.sent.byType.LOG.bytes, 5 * 1012, 'frame bytes: payload + 12')
  t.same(backup.received.byType.LOG, primary.sent.byType.LOG, 'the receiver counts the same')
  t.equal(backup.received.messages, 6)
  t.equal(backup.received.bytes, primary.sent.bytes)
  t.equal(primary.received.byType.HELLO_OK.messages, 1)
})

t.test('an idle channel sends HEARTBEAT every heartbeatMs; another frame sent puts it off', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  const hb = () => backup.received.byType.HEARTBEAT.messages
  await timers.advance(19)
  await pause(20)
  t.equal(hb(), 0, 'none before 20 ms')
  await timers.advance(1)
  await until(() => hb() === 1, 'a heartbeat at 20 ms')
  primary.send({ type: 'ACK', received: 1, executed: 1, readsDone: 0 }) // sent at 20: next heartbeat due at 40
  await timers.advance(10)
  primary.send({ type: 'LOG', records: Buffer.alloc(20) }) // at 30: due at 50
  await timers.advance(19)
  await pause(20)
  t.equal(hb(), 1, 'no heartbeat while other frames go out (t = 49)')
  await timers.advance(1)
  await until(() => hb() === 2, 'a heartbeat at 50 ms')
  t.equal(primary.sent.byType.HEARTBEAT.messages, 2)
  t.ok(primary.received.byType.HEARTBEAT.messages >= 2, 'the backup sends them too')
  t.equal(primary.closed || backup.closed, false, 'heartbeats keep both alive')
})

t.test('a partition (FaultLink blackhole) is detected by both sides after lossMs of silence', async (t) => {
  const timers = new FakeTimers()
  let link!: FaultLink
  const { primary, backup } = await pair(t, timers, {
    via: async (port) => {
      link = await FaultLink.start({ target: { port } })
      t.teardown(() => link.close())
      return link.port
    },
  })
  // a second of heartbeats, delivered: nobody is lost
  for (let i = 0; i < 50; i++) {
    const n = backup.received.messages
    const m = primary.received.messages
    await timers.advance(20)
    await until(() => backup.received.messages > n && primary.received.messages > m, `heartbeat ${i}`)
  }
  t.equal(primary.closed || backup.closed, false, 'alive after 1 s of heartbeats')
  link.blackhole()
  const start = timers.now()
  const pLost = settled(primary.lost)
  const bLost = settled(backup.lost)
  await timers.advance(280)
  await pause(20)
  t.equal(pLost.done || bLost.done, false, 'not lost at 280 ms of silence')
  await timers.advance(40)
  await until(() => pLost.done && bLost.done, 'both sides lost')
  t.equal(pLost.value?.reason, 'no frame from the peer for 300 ms')
  t.equal(bLost.value?.reason, 'no frame from the peer for 300 ms')
  t.ok(timers.now() - start <= 320, 'within lossMs + one step')
  t.ok(link.droppedBytes > 0, 'the heartbeats sent meanwhile vanished')
  t.same(await backup.ended, { kind: 'lost', reason: 'no frame from the peer for 300 ms' })
})

/** A raw socket connected to `listener`, what it receives, when the listener's side ends it, and the channel it made. */
async function rawPeer(t: { teardown(fn: () => unknown): void }, listener: FtListener) {
  const accepted = new Promise<FtChannel>((r) => listener.once('channel', r))
  const raw = connect({ host: '127.0.0.1', port: listener.port })
  t.teardown(() => raw.destroy())
  const back: Buffer[] = []
  raw.on('data', (d: Buffer) => back.push(d))
  const rawEnded = new Promise((r) => raw.on('end', r))
  return { raw, back, rawEnded, ch: await accepted }
}

t.test('a bad CRC from a raw socket: the channel ends as lost, naming it, after sending ERROR', async (t) => {
  const timers = new FakeTimers()
  const listener = await FtListener.listen({ port: 0, timers })
  t.teardown(() => listener.close())
  const { raw, back, rawEnded, ch } = await rawPeer(t, listener)
  const frame = encodeFrame({ type: 'HEARTBEAT', ms: 5 })
  frame[frame.length - 1] ^= 0xff
  raw.write(frame)
  const end = await ch.ended
  t.equal(end.kind, 'lost')
  t.match(end.kind === 'lost' && end.reason, /^bad frame from the peer: BadCrc: HEARTBEAT frame CRC-32C is 0x/)
  await rawEnded
  const msgs = new FrameDecoder().push(Buffer.concat(back))
  t.equal(msgs.length, 1)
  t.match(msgs[0], { type: 'ERROR', code: 'BadCrc', text: /CRC-32C/ }, 'the peer heard why')
  t.equal(listener.current, null, 'the listener is free again')
})

t.test('other bad frames from a raw socket: each ends its channel as lost with its code, and the peer hears it', async (t) => {
  const timers = new FakeTimers()
  const listener = await FtListener.listen({ port: 0, timers })
  t.teardown(() => listener.close())
  const hb = encodeFrame({ type: 'HEARTBEAT', ms: 5 })
  const edit = (off: number, v: number) => {
    const f = Buffer.from(hb)
    f.writeUInt32LE(v, off)
    return f
  }
  const bye = encodeFrame({ type: 'BYE', reason: 'stop', instret: 0 })
  const cases: [string, Buffer][] = [
    ['BadType', edit(4, 0x2a)],
    ['BadReserved', edit(4, 0x00010008)],
    ['BadLength', edit(0, (16 << 20) + 1)],
  ]
  for (const [code, bytes] of cases) {
    const { raw, back, rawEnded, ch } = await rawPeer(t, listener)
    raw.write(bytes)
    const end = await ch.ended
    t.match(end, { kind: 'lost', reason: new RegExp(`^bad frame from the peer: ${code}: `) }, code)
    await rawEnded
    t.match(new FrameDecoder().push(Buffer.concat(back)), [{ type: 'ERROR', code }], `${code}: ERROR sent`)
  }
  // bytes after a BYE: the BYE ends the channel cleanly; what follows is not read
  const accepted = new Promise<FtChannel>((r) => listener.once('channel', r))
  const raw = connect({ host: '127.0.0.1', port: listener.port })
  t.teardown(() => raw.destroy())
  const ch = await accepted
  raw.write(Buffer.concat([bye, hb]))
  t.match(await ch.ended, { kind: 'bye', sent: false, bye: { reason: 'stop' } })
})

t.test('a 16 MiB LOG passes over the channel; 16 MiB + 1 is refused by send() and the channel carries on', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  const atBackup = inbox(backup)
  const records = Buffer.alloc(16 << 20, 0x42)
  primary.send({ type: 'LOG', records })
  await until(() => atBackup.length === 1, 'the 16 MiB LOG')
  t.ok(atBackup[0].type === 'LOG' && atBackup[0].records.equals(records), 'arrives whole')
  t.throws(() => primary.send({ type: 'LOG', records: Buffer.alloc((16 << 20) + 1) }), { name: 'FtProtocolError', code: 'BadLength' })
  primary.send({ type: 'HEARTBEAT', ms: 3 })
  await until(() => atBackup.length === 2, 'the next frame')
  t.equal(primary.closed || backup.closed, false)
})

t.test('one primary at a time: a second connection gets ERROR Busy and is closed; the first carries on', async (t) => {
  const timers = new FakeTimers()
  const { listener, primary, backup } = await pair(t, timers)
  const atBackup = inbox(backup)
  const second = await FtChannel.connect({ port: listener.port, timers })
  t.teardown(() => second.close())
  const end = await within(second.ended, 10_000, { kind: 'still open' as const })
  t.match(end, { kind: 'lost', peerError: { code: 'Busy' } })
  t.match(end.kind === 'lost' && end.reason, /Busy: this backup already has a primary/)
  t.equal(listener.refused, 1)
  primary.send({ type: 'ACK', received: 1, executed: 2, readsDone: 3 })
  await until(() => atBackup.length === 1, 'the first primary still heard')
  t.equal(backup.closed, false)
  // once the first ends, the next primary is taken
  primary.close()
  await backup.ended
  const next = new Promise<FtChannel>((r) => listener.once('channel', r))
  const third = await FtChannel.connect({ port: listener.port, timers })
  t.teardown(() => third.close())
  t.ok(await next, 'a third primary is accepted after the first left')
  t.equal(third.closed, false)
})

t.test('backpressure: send returns false over the high-water mark, buffering stays bounded, drained() waits for the reader', async (t) => {
  const timers = new FakeTimers()
  let peer!: Socket
  const server = createServer((s) => {
    peer = s
    s.pause() // a backup that stops reading
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => {
    peer?.destroy()
    server.close()
  })
  const high = 1 << 20
  const ch = await FtChannel.connect({ port: (server.address() as { port: number }).port, timers, highWaterBytes: high })
  t.teardown(() => ch.close())
  await until(() => peer !== undefined, 'accept')
  const records = Buffer.alloc(256 << 10, 9)
  let sends = 0
  for (; sends < 1000; sends++) {
    if (!ch.send({ type: 'LOG', records })) break
    // let the kernel take what it will, as between slices
    await new Promise((r) => setImmediate(r))
  }
  t.ok(sends < 1000, `send returned false after ${sends} batches (${(sends * 256) >> 10} MiB)`)
  t.ok(ch.bufferedBytes > high && ch.bufferedBytes <= high + records.length + 12, `bufferedBytes ${ch.bufferedBytes} bounded by the mark + one frame`)
  const drained = settled(ch.drained())
  await pause(50)
  t.equal(drained.done, false, 'drained() waits while the peer reads nothing')
  let got = 0
  peer.on('data', (d: Buffer) => (got += d.length))
  peer.resume()
  await until(() => drained.done, 'drained after the peer reads')
  t.ok(ch.bufferedBytes <= high)
  await until(() => got === ch.sent.bytes, 'every byte sent arrives')
  t.equal(ch.closed, false)
})

t.test('BYE ends both sides cleanly, reported apart from a loss', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  const bLost = settled(backup.lost)
  const byeEvent = new Promise<FtEnd>((r) => backup.once('bye', r))
  await primary.bye('handover', 42)
  t.same(await primary.ended, { kind: 'bye', sent: true, bye: { type: 'BYE', reason: 'handover', instret: 42 } })
  t.same(await backup.ended, { kind: 'bye', sent: false, bye: { type: 'BYE', reason: 'handover', instret: 42 } })
  t.same(await byeEvent, await backup.ended, "a 'bye' event")
  // the socket's close after the BYE does not turn it into a loss
  await timers.advance(CLOSE_GRACE_MS)
  await pause(50)
  t.equal(bLost.done, false, 'lost never resolves after a BYE')
  t.equal(primary.send({ type: 'HEARTBEAT', ms: 1 }), false, 'sends after the end go nowhere')
  await t.rejects(backup.next(), { name: 'FtChannelEnded', message: 'FT channel ended: BYE handover' })
})

t.test('the peer closing without BYE is a loss; close() here is one too', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  const lostEvent = new Promise((r) => backup.once('lost', r))
  primary.close('test stops')
  t.same(await primary.ended, { kind: 'lost', reason: 'test stops' })
  t.same(await backup.lost, { reason: 'the peer closed the connection' })
  t.same(await lostEvent, { kind: 'lost', reason: 'the peer closed the connection' })
})

t.test('a reset connection is a loss naming the socket error', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  ;(backup as unknown as { sock: Socket }).sock.resetAndDestroy()
  const e = await primary.lost
  t.match(e.reason, /^socket error: ECONNRESET$|^the peer closed the connection$|^the connection closed$/)
})

t.test('real timers: heartbeats keep an idle pair alive; a partition is detected in about lossMs', async (t) => {
  const listener = await FtListener.listen({ port: 0 })
  const link = await FaultLink.start({ target: { port: listener.port } })
  t.teardown(async () => {
    await link.close()
    await listener.close()
  })
  const accepted = new Promise<FtChannel>((r) => listener.once('channel', r))
  const primary = await FtChannel.connect({ port: link.port })
  t.teardown(() => primary.close())
  const backup = await accepted
  await pause(400)
  t.equal(primary.closed || backup.closed, false, 'alive after 400 ms idle (longer than lossMs)')
  t.ok(backup.received.byType.HEARTBEAT.messages >= 5, `${backup.received.byType.HEARTBEAT.messages} heartbeats in 400 ms`)
  const start = performance.now()
  link.blackhole()
  const [p, b] = await Promise.all([primary.lost, backup.lost])
  const took = performance.now() - start
  t.equal(p.reason, 'no frame from the peer for 300 ms')
  t.equal(b.reason, 'no frame from the peer for 300 ms')
  // at least lossMs minus the heartbeat period (the last frame came before the blackhole); the upper bound is generous (a busy machine)
  t.ok(took >= 270 && took < 2000, `lost after ${took.toFixed(0)} ms`)
})

t.test('data arriving after lossMs of silence ends the channel as lost and is not delivered, even before the watch has run (a process resumed from SIGSTOP)', async (t) => {
  const timers = new FakeTimers()
  const { primary, backup } = await pair(t, timers)
  const atPrimary = inbox(primary)
  // time jumps past the loss timeout with no timer run: the process was stopped, its socket buffered
  timers.t += 301
  backup.send({ type: 'ACK', received: 100, executed: 100, readsDone: 0 })
  const end = await Promise.race([primary.ended, new Promise<null>((r) => setTimeout(() => r(null), 2000))])
  t.match(end, { kind: 'lost', reason: /no frame from the peer for 300 ms/ })
  await new Promise((r) => setTimeout(r, 20))
  t.same(atPrimary, [], 'the stale ACK was not delivered')
})

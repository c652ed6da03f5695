import t from 'tap'
import { connect, createServer, type Socket } from 'node:net'
import { FaultLink } from '../../../src/client/ft/fault-link.js'
import { FakeTimers } from '../../helpers/timers.js'

type Tap = { teardown(fn: () => unknown): void }

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 2))
  }
}
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** What one side of a connection has seen. */
interface Side {
  sock: Socket
  data: string
  ended: boolean
  closed: boolean
}
const watch = (sock: Socket): Side => {
  const s: Side = { sock, data: '', ended: false, closed: false }
  sock.on('data', (d: Buffer) => (s.data += d.toString()))
  sock.on('end', () => (s.ended = true))
  sock.on('close', () => (s.closed = true))
  sock.on('error', () => {})
  return s
}

/** A target that records each connection, a link in front of it, and a way to connect through it. */
async function setup(t: Tap, o: { delayMs?: number; timers?: FakeTimers } = {}) {
  const targets: Side[] = []
  const server = createServer((s) => targets.push(watch(s)))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const link = await FaultLink.start({ target: { port: (server.address() as { port: number }).port }, ...o })
  const clients: Side[] = []
  const dial = async () => {
    const s = connect({ host: '127.0.0.1', port: link.port })
    await new Promise((r) => s.once('connect', r))
    const c = watch(s)
    clients.push(c)
    return c
  }
  t.teardown(async () => {
    for (const c of clients) c.sock.destroy()
    for (const s of targets) s.sock.destroy()
    await link.close()
    await new Promise((r) => server.close(r))
  })
  return { link, targets, dial }
}

t.test('passes bytes both ways and a half-close on', async (t) => {
  const { link, targets, dial } = await setup(t)
  const c = await dial()
  await until(() => targets.length === 1, 'the target connection')
  c.sock.write('ping')
  await until(() => targets[0].data === 'ping', 'ping')
  targets[0].sock.write('pong')
  await until(() => c.data === 'pong', 'pong')
  c.sock.end()
  await until(() => targets[0].ended, 'the end passed on')
  t.equal(link.upBytes, 4)
  t.equal(link.downBytes, 4)
})

t.test('a delay holds each chunk delayMs (fake clock), keeping order', async (t) => {
  const timers = new FakeTimers()
  const { targets, dial } = await setup(t, { delayMs: 100, timers })
  const c = await dial()
  await until(() => targets.length === 1, 'the target connection')
  c.sock.write('a')
  await pause(20)
  await timers.advance(50)
  c.sock.write('b')
  await pause(20)
  t.equal(targets[0].data, '', 'nothing before 100 ms')
  await timers.advance(50)
  await until(() => targets[0].data === 'a', "'a' at 100 ms")
  await pause(20)
  t.equal(targets[0].data, 'a', "'b' still held (due at 150 ms)")
  await timers.advance(50)
  await until(() => targets[0].data === 'ab', "'b' at 150 ms")
})

t.test('stall holds everything (data and the close) until resume, then passes it in order', async (t) => {
  const { link, targets, dial } = await setup(t)
  const c = await dial()
  await until(() => targets.length === 1, 'the target connection')
  link.stall()
  c.sock.write('one,')
  targets[0].sock.write('down')
  await pause(30)
  c.sock.end('two')
  await pause(50)
  t.equal(targets[0].data, '', 'nothing up while stalled')
  t.equal(c.data, '', 'nothing down while stalled')
  t.equal(targets[0].ended, false, 'the close held too')
  link.resume()
  await until(() => targets[0].data === 'one,two' && targets[0].ended && c.data === 'down', 'all of it after resume')
  t.pass('in order, then the end')
})

t.test('cut resets both sides of every open connection; new ones still pass', async (t) => {
  const { link, targets, dial } = await setup(t)
  const c = await dial()
  await until(() => targets.length === 1, 'the target connection')
  link.cut()
  await until(() => c.closed && targets[0].closed, 'both sides closed')
  const c2 = await dial()
  await until(() => targets.length === 2, 'a new connection')
  c2.sock.write('x')
  await until(() => targets[1].data === 'x', 'passes')
  t.pass('a new connection passes after the cut')
})

t.test('blackhole: nothing passes either way and no close is seen, until heal lets new connections through', async (t) => {
  const { link, targets, dial } = await setup(t)
  const c = await dial()
  await until(() => targets.length === 1, 'the target connection')
  c.sock.write('before')
  await until(() => targets[0].data === 'before', 'data before the partition')
  link.blackhole()
  c.sock.write('lost')
  targets[0].sock.write('lost too')
  const during = await dial()
  await pause(50)
  c.sock.end()
  await pause(50)
  t.equal(targets[0].data, 'before', 'nothing more up')
  t.equal(c.data, '', 'nothing down')
  t.equal(targets[0].ended || targets[0].closed, false, "the target never sees the client's close")
  t.equal(targets.length, 1, 'a connection made during the partition never reaches the target')
  t.equal(during.closed, false, '…nor is it refused')
  t.equal(link.droppedBytes, 'lost'.length + 'lost too'.length)
  link.heal()
  const after = await dial()
  await until(() => targets.length === 2, 'a new connection after heal')
  after.sock.write('again')
  await until(() => targets[1].data === 'again', 'passes')
})

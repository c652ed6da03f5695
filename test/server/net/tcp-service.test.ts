import t from 'tap'
import { connect, type Socket } from 'node:net'
import { Writable } from 'node:stream'
import { pino } from 'pino'
import { socketQueue, TcpService, type ServeConnection, type TcpServiceOptions } from '../../../src/server/net/tcp-service.js'
import { Deadline } from '../../../src/server/net/timers.js'
import { FakeClock, settle } from '../../helpers/locks.js'

/** Echoes every byte; the byte 'E' completes the handshake. Returns when the socket is gone. */
const echo: ServeConnection = async (sock, established) => {
  const { q } = socketQueue(sock)
  try {
    for (;;) {
      const b = await q.read(1)
      if (b[0] === 0x45) established()
      sock.write(b)
    }
  } catch {
    /* the connection ended */
  } finally {
    sock.destroy()
  }
}

/** A log that keeps its records. */
function memoryLog() {
  const lines: { level: number; msg: string; [k: string]: unknown }[] = []
  const log = pino({ level: 'debug' }, new Writable({ write: (c, _e, cb) => (lines.push(JSON.parse(String(c))), cb()) }))
  return { log, lines }
}

interface Client {
  sock: Socket
  received: Buffer[]
  /** the server closed or ended the connection */
  closed: Promise<void>
  isClosed: () => boolean
  /** writes a byte and resolves when it comes back (the server still serves this connection) */
  ping(b: string): Promise<boolean>
}

async function client(port: number): Promise<Client> {
  const sock = connect({ port, host: '127.0.0.1', allowHalfOpen: true })
  sock.on('error', () => {})
  await new Promise((r) => sock.once('connect', r))
  const received: Buffer[] = []
  let closed = false
  sock.on('data', (d) => received.push(d))
  const ended = new Promise<void>((r) => {
    const done = () => ((closed = true), r())
    sock.on('end', done)
    sock.on('close', done)
  })
  return {
    sock,
    received,
    closed: ended,
    isClosed: () => closed,
    ping: (b) =>
      new Promise((r) => {
        sock.once('data', (d) => r(d.toString() === b))
        sock.once('close', () => r(false))
        sock.write(b)
      }),
  }
}

/** Waits in real time for the socket to close (a closed socket is seen a few event-loop turns later). */
const closesWithin = (c: Client, ms = 5000) => Promise.race([c.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())])

async function start(t: { teardown(fn: () => unknown): void }, o: Partial<TcpServiceOptions>) {
  const clock = new FakeClock()
  const { log, lines } = memoryLog()
  const svc = new TcpService(echo, { name: 'test', log, timers: clock, ...o })
  const port = await svc.listen(0, '127.0.0.1')
  const grace = new Deadline(clock)
  t.teardown(() => {
    grace.expire()
    return svc.close(grace.reached)
  })
  return { svc, port, clock, lines, grace }
}

t.test('a connection that does not finish its handshake in time is closed; an established one stays', async (t) => {
  const { port, clock, lines } = await start(t, { handshakeMs: 10_000 })
  const a = await client(port)
  const b = await client(port)
  t.ok(await a.ping('E'), 'a completes its handshake')
  await clock.advance(9_990, 1000)
  t.ok(await b.ping('x'), 'b is still served just before the limit')
  await clock.advance(20)
  t.ok(await closesWithin(b), 'b is closed at the limit')
  t.ok(await a.ping('y'), 'a is still served')
  t.ok(lines.some((l) => l.level === 30 && /handshake not complete in time/.test(l.msg)), 'the close is logged at info')
  a.sock.destroy()
})

t.test('over the cap a new connection is closed with nothing sent, and the cap frees up when one leaves', async (t) => {
  const { svc, port, lines } = await start(t, { maxConnections: 2 })
  const a = await client(port)
  const b = await client(port)
  t.ok((await a.ping('E')) && (await b.ping('E')), 'two connections served')
  const c = await client(port)
  t.ok(await closesWithin(c), 'the third is closed')
  t.same(c.received, [], 'with nothing sent')
  const d = await client(port)
  t.ok(await closesWithin(d), 'and the fourth')
  t.equal(lines.filter((l) => l.level === 40 && /at the connection limit/.test(l.msg)).length, 1, 'one warning for the episode')
  t.ok(await a.ping('z'), 'established connections are still served at the cap')
  b.sock.destroy()
  await closesWithin(b)
  while (svc.size > 1) await settle()
  const e = await client(port)
  t.ok(await e.ping('E'), 'a new connection is served once one has left')
  t.ok(lines.some((l) => l.level === 30 && /below the connection limit again/.test(l.msg) && l.refused === 2), 'the end of the episode is logged with the count')
  a.sock.destroy()
  e.sock.destroy()
})

t.test('over the cap the refuse hook answers, and is cut after REFUSE_MS if the peer says nothing', async (t) => {
  const { port } = await start(t, {
    maxConnections: 1,
    refuse: async (sock) => {
      sock.end('busy')
    },
  })
  const a = await client(port)
  t.ok(await a.ping('E'), 'one connection served')
  const b = await client(port)
  t.ok(await closesWithin(b), 'refused')
  t.equal(Buffer.concat(b.received).toString(), 'busy', 'with the answer of the hook')
  // a hook that waits for the peer: cut by the service's timer
  const silent = await start(t, { maxConnections: 1, refuse: () => new Promise(() => {}) })
  const c = await client(silent.port)
  t.ok(await c.ping('E'), 'one connection served')
  const d = await client(silent.port)
  await silent.clock.advance(1990, 100)
  t.notOk(d.isClosed(), 'still waiting for the peer just before REFUSE_MS')
  await silent.clock.advance(20)
  t.ok(await closesWithin(d), 'cut at REFUSE_MS')
  a.sock.destroy()
  c.sock.destroy()
})

t.test('close: handshakes cut at once, established connections ended and given the grace, then cut', async (t) => {
  const { svc, port, clock, grace } = await start(t, { handshakeMs: 60_000 })
  const idle = await client(port)
  const est = await client(port)
  t.ok(await est.ping('E'), 'established')
  grace.start(4000)
  let closed = false
  const closing = svc.close(grace.reached).then(() => (closed = true))
  t.ok(await closesWithin(idle), 'the connection in its handshake is closed at once')
  await est.closed
  t.notOk(closed, 'the established one is ended (FIN: its in-flight replies go out first), and close waits')
  const late = connect(port, '127.0.0.1')
  const refused = await new Promise((r) => (late.on('error', () => r(true)), late.on('close', () => r(true))))
  t.ok(refused, 'no new connection')
  await clock.advance(3990, 500)
  t.notOk(closed, 'close waits for the established client during the grace')
  t.equal(svc.size, 1)
  await clock.advance(20)
  await closing
  t.equal(svc.size, 0, 'cut at the end of the grace; close resolves')
})

t.test('close: a second request to hurry ends the grace at once', async (t) => {
  const { svc, port, grace } = await start(t, {})
  const est = await client(port)
  t.ok(await est.ping('E'), 'established')
  grace.start(60_000)
  const closing = svc.close(grace.reached)
  await settle()
  grace.expire()
  await closing
  t.equal(svc.size, 0, 'cut without waiting for the grace')
  t.ok(await closesWithin(est))
})

t.test('refused connections waiting for their answer are bounded: one more evicts the oldest', async (t) => {
  const { port } = await start(t, { maxConnections: 1, refuse: () => new Promise(() => {}) })
  const a = await client(port)
  t.ok(await a.ping('E'), 'one connection served')
  const waiting: Client[] = []
  for (let i = 0; i < 16; i++) waiting.push(await client(port))
  await settle()
  t.notOk(waiting.some((c) => c.isClosed()), 'sixteen refused connections wait for their answer')
  const last = await client(port)
  t.ok(await closesWithin(waiting[0]), 'the seventeenth evicts the oldest')
  t.notOk(last.isClosed() || waiting.slice(1).some((c) => c.isClosed()), 'the others keep waiting')
  for (const c of [a, last, ...waiting]) c.sock.destroy()
})

import t from 'tap'
import { createSocket, type Socket } from 'node:dgram'
import { FakeTimers } from '../../helpers/timers.js'
import { VirtualSwitch } from '../../../src/client/vm/net.js'
import { FaultyLink, MAX_HELD, UdpSwitch, UdpUplink, parseFaults, parseUdpAddress, seededRandom } from '../../../src/client/net/index.js'

const ETHER = Buffer.from([0x88, 0xb5])
const mac = (n: number) => Buffer.from([2, 0, 0, 0, 0, n])
const frame = (to: Buffer, from: Buffer, text = '') => Buffer.concat([to, from, ETHER, Buffer.from(text)])

/** Resolves when `cond` holds, checking after each turn of the event loop (real datagrams arrive between). */
async function until(cond: () => boolean, what: string): Promise<void> {
  const t0 = Date.now()
  while (!cond()) {
    if (Date.now() - t0 > 10_000) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setImmediate(r))
  }
}

/** A raw UDP peer of a switch: what it received, by payload text. */
async function peer(t: { teardown(fn: () => void): void }, port: number) {
  const sock: Socket = createSocket('udp4')
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()))
  t.teardown(() => sock.close())
  const got: Buffer[] = []
  sock.on('message', (m) => got.push(m))
  return { sock, got, key: `127.0.0.1:${sock.address().port}`, send: (b: Buffer) => sock.send(b, port, '127.0.0.1') }
}

t.test('VirtualSwitch: a frame for a MAC on its own port is filtered; the oldest MAC is forgotten past maxMacs', async (t) => {
  const sw = new VirtualSwitch({ maxMacs: 2 })
  const got: string[] = []
  const [p1, p2, p3] = [sw.port(), sw.port(), sw.port()]
  p1.onReceive = () => got.push('p1')
  p2.onReceive = () => got.push('p2')
  p3.onReceive = () => got.push('p3')
  p1.send(frame(mac(1), mac(1)))
  t.same(got, [], 'a self-addressed announce reaches nobody')
  t.equal(sw.filtered, 1)
  p2.send(frame(mac(1), mac(2)))
  t.same(got, ['p1'], 'unicast to the learned port')
  got.length = 0
  p3.send(frame(mac(1), mac(3))) // learns mac 3: mac 1 (least recently seen) is forgotten
  t.same(got.sort(), ['p1', 'p2'], 'a forgotten MAC is flooded to, as an unknown one')
})

t.test('parseFaults and parseUdpAddress: good specs, and bad ones name the option', async (t) => {
  t.same(parseFaults('delay=5,loss=0.01,stall'), { delayMs: 5, loss: 0.01, stall: true })
  t.same(parseFaults('none'), { delayMs: 0, loss: 0, stall: false })
  for (const bad of ['delay=', 'loss=2', 'delay=-1', 'stall=1', 'jitter=3', 'delay=5=6']) t.throws(() => parseFaults(bad), { code: 'InvalidArgument', message: /--fault/ }, bad)
  t.same(parseUdpAddress('udp:10.0.0.1:5555', '--switch'), { host: '10.0.0.1', port: 5555 })
  t.same(parseUdpAddress('udp:[::1]:7', '--switch'), { host: '::1', port: 7 })
  t.same(parseUdpAddress('0', '--listen', true), { host: '127.0.0.1', port: 0 })
  for (const bad of ['127.0.0.1:5555', 'udp:h:70000', 'udp:5555', 'tcp:h:1']) t.throws(() => parseUdpAddress(bad, '--switch'), { code: 'InvalidArgument', message: /--switch/ }, bad)
})

t.test('FaultyLink on a fake clock: delay keeps order, stall holds then releases in order, loss drops its share', async (t) => {
  const ft = new FakeTimers()
  const out: string[] = []
  const link = new FaultyLink((f) => out.push(f.toString()), ft, seededRandom(7), { delayMs: 5, loss: 0, stall: false })
  link.send(Buffer.from('a'))
  await ft.advance(2)
  link.send(Buffer.from('b'))
  await ft.advance(2.9)
  t.same(out, [], 'nothing before 5 ms')
  await ft.advance(0.1)
  t.same(out, ['a'])
  await ft.advance(2)
  t.same(out, ['a', 'b'], 'b at 7 ms')
  link.set({ delayMs: 0, stall: true })
  link.send(Buffer.from('c'))
  link.send(Buffer.from('d'))
  await ft.advance(60_000)
  t.same(out, ['a', 'b'], 'held while stalled')
  link.set({ stall: false })
  await ft.advance(0)
  t.same(out, ['a', 'b', 'c', 'd'], 'released in order')
  link.send(Buffer.from('e'))
  t.same(out.at(-1), 'e', 'no faults, nothing held: at once')
  link.set({ loss: 0.25 })
  out.length = 0
  for (let i = 0; i < 4000; i++) link.send(Buffer.from('x'))
  t.ok(link.lost > 850 && link.lost < 1150, `${link.lost} of 4000 lost at 0.25`)
  t.equal(out.length + link.lost, 4000)
  link.set({ loss: 0, stall: true })
  for (let i = 0; i < MAX_HELD + 10; i++) link.send(Buffer.from('y'))
  t.equal(link.overflow, 10, 'a stalled link holds at most MAX_HELD frames')
  link.close()
})

t.test('a peer silent for the age leaves, with its MACs; one that sends again rejoins', async (t) => {
  const ft = new FakeTimers()
  const sw = await UdpSwitch.listen({ port: 0, ageMs: 30_000, timers: ft })
  t.teardown(() => sw.close())
  const a = await peer(t, sw.address.port)
  const b = await peer(t, sw.address.port)
  a.send(frame(mac(0xb), mac(0xa), 'hello b'))
  await until(() => sw.list().length === 1, 'a to join')
  b.send(frame(mac(0xa), mac(0xb), 'hello a'))
  await until(() => a.got.length === 1, 'b to a')
  t.equal(a.got[0].subarray(14).toString(), 'hello a')
  await ft.advance(29_000)
  b.send(Buffer.alloc(0)) // a keepalive: b stays
  await until(() => sw.list().find((p) => p.peer === b.key)?.idleMs === 0, 'b keepalive')
  await ft.advance(8_000) // a has been silent 37 s: swept at the 30 s or 37.5 s sweep
  await ft.advance(1_000)
  t.same(sw.list().map((p) => p.peer), [b.key], 'a aged out, b stays')
  t.equal(sw.aged, 1)
  b.send(frame(mac(0xa), mac(0xb), 'where is a'))
  a.send(frame(mac(0xb), mac(0xa), 'back')) // rejoins
  await until(() => b.got.length === 1, 'a to b')
  t.equal(a.got.length, 1, 'a, gone from the switch, got nothing while away')
  t.equal(sw.list().length, 2)
})

t.test('an uplink with a MAC is learned at join and keeps itself joined past many ages', async (t) => {
  const ft = new FakeTimers()
  const sw = await UdpSwitch.listen({ port: 0, ageMs: 30_000, timers: ft })
  t.teardown(() => sw.close())
  const up = await UdpUplink.join({ host: '127.0.0.1', port: sw.address.port }, { mac: mac(0x21), timers: ft })
  t.teardown(() => up.close())
  const got: Buffer[] = []
  up.onReceive = (f) => got.push(f)
  await until(() => sw.list().length === 1, 'the announce')
  t.equal(sw.switch.filtered, 1, 'the announce is filtered, not flooded')
  const other = await peer(t, sw.address.port)
  const third = await peer(t, sw.address.port)
  third.send(Buffer.alloc(0))
  other.send(frame(mac(0x21), mac(0x22), 'to the uplink'))
  await until(() => got.length === 1, 'a frame for the uplink')
  t.equal(third.got.length, 0, 'unicast: the uplink\'s MAC was learned from its announce before it sent anything')
  for (let s = 0; s < 12; s++) {
    await ft.advance(10_000)
    third.send(Buffer.alloc(0))
    await until(() => sw.list().every((p) => p.peer === other.key || p.idleMs === 0), 'keepalives')
  }
  t.ok(sw.list().some((p) => p.peer === up.local), 'the uplink is still joined after 120 s')
  other.send(frame(mac(0x21), mac(0x22), 'still there'))
  await until(() => got.length === 2, 'a second frame')
  t.equal(got[1].subarray(14).toString(), 'still there')
  t.equal(sw.aged, 1, 'only the silent raw peer aged out')
})

t.test('datagrams that are not frames are dropped and counted, make no peer, and hurt no one', async (t) => {
  const sw = await UdpSwitch.listen({ port: 0 })
  t.teardown(() => sw.close())
  const bad = await peer(t, sw.address.port)
  const a = await peer(t, sw.address.port)
  const b = await peer(t, sw.address.port)
  for (const n of [1, 13, 2049, 9000]) bad.send(Buffer.alloc(n, 0xee))
  await until(() => sw.badDatagrams === 4, 'bad datagrams')
  t.equal(sw.list().length, 0, 'no peer from garbage')
  b.send(Buffer.alloc(0))
  a.send(frame(mac(0xb), mac(0xa), 'x'.repeat(2048 - 14)))
  await until(() => b.got.length === 1, 'a full-size frame')
  t.equal(b.got[0].length, 2048)
  t.equal(bad.got.length, 0)
  t.match(sw.list(), [
    { peer: b.key, framesIn: 0, framesOut: 1, lost: 0 },
    { peer: a.key, framesIn: 1, framesOut: 0, lost: 0 },
  ])
})

t.test('announce(mac) moves a MAC to this uplink (an FT backup going live); joined without one, it draws no frames for it', async (t) => {
  const sw = await UdpSwitch.listen({ port: 0 })
  t.teardown(() => sw.close())
  const to = { host: '127.0.0.1', port: sw.address.port }
  const primary = await UdpUplink.join(to, { mac: mac(0x31) })
  const backup = await UdpUplink.join(to)
  t.teardown(() => (primary.close(), backup.close()))
  const got: string[] = []
  primary.onReceive = (f) => got.push(`primary ${f.subarray(14)}`)
  backup.onReceive = (f) => got.push(`backup ${f.subarray(14)}`)
  await until(() => sw.list().length === 2, 'both joined')
  const client = await peer(t, sw.address.port)
  client.send(frame(mac(0x31), mac(0x32), 'one'))
  await until(() => got.length === 1, 'one')
  backup.announce(mac(0x31))
  await until(() => sw.switch.filtered === 2, 'the announce')
  client.send(frame(mac(0x31), mac(0x32), 'two'))
  await until(() => got.length === 2, 'two')
  t.same(got, ['primary one', 'backup two'])
})

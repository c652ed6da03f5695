import t from 'tap'
import { createSocket, type Socket } from 'node:dgram'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { CLI, tmp } from '../../helpers/peers.js'
import { runVm } from '../../../src/client/vm/index.js'
import { UdpPort, VirtualSwitch } from '../../../src/client/vm/net.js'

const ETHER = Buffer.from([0x88, 0xb5])
const ME = Buffer.from([2, 0, 0, 0, 0, 0x99])
const BROADCAST = Buffer.alloc(6, 0xff)

/** A UDP client of a switch's socket port: frames out, replies back (payloads as text). */
class Client {
  private queue: Buffer[] = []
  private waiting: ((b: Buffer) => void) | null = null
  constructor(
    private readonly sock: Socket,
    private readonly port: number,
  ) {
    sock.on('message', (m) => {
      if (this.waiting) {
        const w = this.waiting
        this.waiting = null
        w(m)
      } else this.queue.push(m)
    })
  }
  static async open(port: number): Promise<Client> {
    const s = createSocket('udp4')
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()))
    return new Client(s, port)
  }
  raw(frame: Buffer): void {
    this.sock.send(frame, this.port, '127.0.0.1')
  }
  reply(timeoutMs = 5000): Promise<Buffer> {
    const q = this.queue.shift()
    if (q) return Promise.resolve(q)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply')), timeoutMs)
      this.waiting = (b) => {
        clearTimeout(timer)
        resolve(b)
      }
    })
  }
  async ask(text: string, to = BROADCAST, timeoutMs = 5000): Promise<string> {
    this.raw(Buffer.concat([to, ME, ETHER, Buffer.from(text)]))
    const r = await this.reply(timeoutMs)
    return r.subarray(14).toString()
  }
  drain(): void {
    this.queue = []
  }
  close(): void {
    this.sock.close()
  }
}

async function freePort(): Promise<number> {
  const s = createSocket('udp4')
  await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()))
  const p = s.address().port
  s.close()
  return p
}

function vmProcess(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [CLI, 'vm', 'run', '--json', ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (d) => (stdout += d))
    c.stderr.on('data', (d) => (stderr += d))
    c.on('close', (code) => resolve({ status: code ?? -1, stdout, stderr }))
  })
}

t.test('kvstore answers over a UDP socket port; bad frames do not stop it; its replay ends identical', async (t) => {
  const port = await freePort()
  const log = join(tmp(t), 'kv.log')
  const done = vmProcess(['--guest', 'kvstore', '--net', `udp:127.0.0.1:${port}`, '--record', log])
  const c = await Client.open(port)
  t.teardown(() => c.close())
  // the VM may not be listening yet: ask until it answers
  let first = ''
  for (let i = 0; i < 50 && !first; i++) first = await c.ask('COUNT', BROADCAST, 200).catch(() => '')
  await new Promise((r) => setTimeout(r, 100))
  c.drain() // a late answer to an earlier try
  t.equal(first, 'COUNT 0')
  t.equal(await c.ask('SET alpha 1'), 'OK')
  t.equal(await c.ask('SET beta two words'), 'OK')
  t.equal(await c.ask('GET alpha'), 'VALUE 1')
  t.equal(await c.ask('GET beta'), 'VALUE two words')
  t.equal(await c.ask('GET gamma'), 'NOTFOUND')
  t.equal(await c.ask('DEL alpha'), 'OK')
  t.equal(await c.ask('GET alpha'), 'NOTFOUND')
  t.equal(await c.ask('FROB x'), 'ERR unknown command')
  t.equal(await c.ask('SET ' + 'k'.repeat(40) + ' v'), 'ERR key must be 1 to 32 bytes')
  t.equal(await c.ask('SET k ' + 'v'.repeat(200)), 'ERR value longer than 128 bytes')
  // frames the guest must ignore: too short for the switch, another EtherType
  c.raw(Buffer.from([1, 2, 3]))
  c.raw(Buffer.concat([BROADCAST, ME, Buffer.from([0x08, 0x00]), Buffer.from('GET beta')]))
  t.equal(await c.ask('COUNT'), 'COUNT 1', 'still serving')
  // a burst of 30 requests sent at once: queued by the host, taken through the 8-slot ring
  for (let i = 0; i < 30; i++) c.raw(Buffer.concat([BROADCAST, ME, ETHER, Buffer.from(`SET k${i} v${i}`)]))
  const burst: string[] = []
  for (let i = 0; i < 30; i++) burst.push((await c.reply()).subarray(14).toString())
  t.same(burst, Array(30).fill('OK'), 'every request of the burst answered, in order')
  t.equal(await c.ask('GET k29'), 'VALUE v29')
  t.equal(await c.ask('COUNT'), 'COUNT 31')
  t.equal(await c.ask('QUIT'), 'BYE')
  const r = await done
  t.equal(r.status, 0, r.stderr)
  const rec = JSON.parse(r.stdout)
  t.match(r.stderr, /kvstore: \d+ requests, 31 keys/)
  const rep = await vmProcess(['--guest', 'kvstore', '--replay', log])
  t.equal(rep.status, 0, rep.stderr)
  const again = JSON.parse(rep.stdout)
  t.equal(again.stateHash, rec.stateHash, 'replay: same state, with the frames from the log')
  t.equal(again.consoleHash, rec.consoleHash)
  t.equal(again.instructions, rec.instructions)
})

t.test('two VMs and a socket on one switch: frames go to the MAC they are addressed to', async (t) => {
  const sw = new VirtualSwitch()
  const a = Buffer.from([2, 0, 0, 0, 0, 0x0a])
  const b = Buffer.from([2, 0, 0, 0, 0, 0x0b])
  const vmA = runVm({ guest: 'kvstore', memory: 16 << 20, net: sw.port(), mac: a })
  const vmB = runVm({ guest: 'kvstore', memory: 16 << 20, net: sw.port(), mac: b })
  const port = await freePort()
  const udp = await UdpPort.listen(sw, '127.0.0.1', port)
  t.teardown(() => udp.close())
  const c = await Client.open(port)
  t.teardown(() => c.close())
  let ready = ''
  for (let i = 0; i < 50 && !ready; i++) ready = await c.ask('COUNT', a, 200).catch(() => '')
  await new Promise((r) => setTimeout(r, 100))
  c.drain()
  t.equal(ready, 'COUNT 0')
  t.equal(await c.ask('SET x 42', a), 'OK', 'stored in A')
  t.equal(await c.ask('GET x', b), 'NOTFOUND', 'B has its own table')
  t.equal(await c.ask('GET x', a), 'VALUE 42')
  const reply = (await (async () => {
    c.raw(Buffer.concat([b, ME, ETHER, Buffer.from('COUNT')]))
    return c.reply()
  })())
  t.same(reply.subarray(6, 12), b, 'the reply comes from B')
  t.same(reply.subarray(0, 6), ME, 'addressed to the sender')
  t.equal(await c.ask('QUIT', a), 'BYE')
  t.equal(await c.ask('QUIT', b), 'BYE')
  const [ra, rb] = await Promise.all([vmA, vmB])
  t.equal(ra.exitCode, 0)
  t.equal(rb.exitCode, 0)
  t.match(ra.console, /4 requests, 1 keys/)
  t.match(rb.console, /3 requests, 0 keys/)
  t.ok(sw.dropped === 0 && sw.frames >= 14, `${sw.frames} frames switched`)
})

t.test('the switch drops runt frames and floods broadcasts', async (t) => {
  const sw = new VirtualSwitch()
  const got: string[] = []
  const p1 = sw.port()
  const p2 = sw.port()
  const p3 = sw.port()
  p2.onReceive = () => got.push('p2')
  p3.onReceive = () => got.push('p3')
  p1.send(Buffer.alloc(10))
  t.equal(sw.dropped, 1)
  p1.send(Buffer.concat([BROADCAST, Buffer.from([2, 0, 0, 0, 0, 1]), ETHER]))
  t.same(got.sort(), ['p2', 'p3'])
})

t.test('SIGINT stops a recording server guest; the log replays to the same stop', async (t) => {
  const port = await freePort()
  const log = join(tmp(t), 'kv-int.log')
  const c = spawn(process.execPath, [CLI, 'vm', 'run', '--json', '--guest', 'kvstore', '--net', `udp:127.0.0.1:${port}`, '--record', log], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  c.stdout.on('data', (d) => (stdout += d))
  c.stderr.on('data', (d) => (stderr += d))
  const closed = new Promise<number>((r) => c.on('close', (code) => r(code ?? -1)))
  const k = await Client.open(port)
  t.teardown(() => k.close())
  let ready = ''
  for (let i = 0; i < 50 && !ready; i++) ready = await k.ask('COUNT', BROADCAST, 200).catch(() => '')
  await new Promise((r) => setTimeout(r, 100))
  k.drain()
  t.equal(await k.ask('SET a 1'), 'OK')
  c.kill('SIGINT')
  t.equal(await closed, 130, `stopped: exit 130 ${stderr}`)
  const rec = JSON.parse(stdout)
  t.equal(rec.end, 'stopped')
  t.match(rec.message, /stopped by the host at instruction \d+/)
  const rep = await vmProcess(['--guest', 'kvstore', '--replay', log])
  t.equal(rep.status, 130, rep.stderr)
  const again = JSON.parse(rep.stdout)
  t.equal(again.end, 'stopped', 'the replay stops where the recording was stopped')
  t.equal(again.instructions, rec.instructions)
  t.equal(again.stateHash, rec.stateHash)
})

import t from 'tap'
import { spawn } from 'node:child_process'
import { createSocket } from 'node:dgram'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, run, tmp } from '../../helpers/peers.js'
import { startSwitch } from '../../helpers/switch-process.js'
import { runVm } from '../../../src/client/vm/index.js'
import { UdpUplink } from '../../../src/client/net/index.js'
import { KvClient } from '../../../src/client/kv/index.js'

const A = Buffer.from([2, 0, 0, 0, 0, 0x0a])
const B = Buffer.from([2, 0, 0, 0, 0, 0x0b])
const kv = (args: string[]) => run(process.execPath, [CLI, 'kv', ...args], { timeout: 120_000 })

/** `tandem vm run --guest kvstore --switch URL --mac MAC` as a process; SIGTERM at teardown. */
function vmProcess(t: { teardown(fn: () => unknown): void }, url: string, mac: string) {
  const c = spawn(process.execPath, [CLI, 'vm', 'run', '--json', '--guest', 'kvstore', '--memory', '16M', '--switch', url, '--mac', mac], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  c.stderr.on('data', (d) => (stderr += d))
  const exited = new Promise<number>((r) => c.on('close', (code) => r(code ?? -1)))
  t.teardown(() => c.kill('SIGKILL'))
  return { child: c, exited, stderr: () => stderr }
}

/** Waits until the VM with `mac` answers on the switch (its requests retried meanwhile): the COUNT it answers. */
async function ready(port: number, mac: Buffer): Promise<string> {
  const up = await UdpUplink.join({ host: '127.0.0.1', port })
  try {
    return (await new KvClient({ port: up, vmMac: mac, timeoutMs: 30_000 }).request('COUNT')).text
  } finally {
    up.close()
  }
}

t.test('two kvstore VMs on a tandem switch (in process and vm run --switch): kv load and check as processes, garbage beside them; a restarted VM fails the check', async (t) => {
  const sw = await startSwitch(t)
  const dir = tmp(t)
  const stop = new AbortController()
  const upA = await UdpUplink.join({ host: '127.0.0.1', port: sw.port }, { mac: A })
  const vmA = runVm({ guest: 'kvstore', memory: 16 << 20, net: upA, mac: A, signal: stop.signal })
  t.teardown(() => {
    stop.abort()
    upA.close()
  })
  let vmB = vmProcess(t, sw.url, '02:00:00:00:00:0b')
  t.equal(await ready(sw.port, A), 'COUNT 0')
  t.equal(await ready(sw.port, B), 'COUNT 0')
  // a bad neighbour: datagrams of every wrong size, and frames from a new MAC each, all the while
  const junk = createSocket('udp4')
  let junkSent = 0
  const timer = setInterval(() => {
    for (let i = 0; i < 20; i++, junkSent++) {
      const sizes = [1, 13, 2049, 8000]
      const b = i % 5 === 4 ? Buffer.concat([Buffer.from([2, 9, 9, 9, junkSent >> 8, junkSent & 0xff]), Buffer.from([2, 8, 8, 8, junkSent >> 8, junkSent & 0xff]), Buffer.from([0x88, 0xb5, 0x47, 0x45, 0x54])]) : Buffer.alloc(sizes[i % 4], 0xee)
      junk.send(b, sw.port, '127.0.0.1')
    }
  }, 5)
  t.teardown(() => {
    clearInterval(timer)
    junk.close()
  })
  const la = join(dir, 'a.jsonl')
  const lb = join(dir, 'b.jsonl')
  const [ra, rb] = await Promise.all([
    kv(['load', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0a', '--keys', '50', '--rate', '400', '--count', '400', '--log', la, '--json']),
    kv(['load', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0b', '--keys', '50', '--rate', '400', '--count', '400', '--log', lb, '--json', '--seed', '9']),
  ])
  clearInterval(timer)
  t.equal(ra.status, 0, ra.stderr)
  t.equal(rb.status, 0, rb.stderr)
  const sa = JSON.parse(ra.stdout)
  const sb = JSON.parse(rb.stdout)
  t.match(sa, { requests: 400, acked: 400, errors: 0, firstSeq: 1, lastSeq: 400 })
  t.match(sb, { requests: 400, acked: 400, errors: 0 })
  t.ok(junkSent > 100, `${junkSent} junk datagrams sent meanwhile`)
  const ca = await kv(['check', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0a', '--log', la])
  t.equal(ca.status, 0, ca.stderr)
  t.match(ca.stdout, /^50 keys checked, all acknowledged values present \(50 as acknowledged, 0 with a later value sent\)/)
  const cb = await kv(['check', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0b', '--log', lb])
  t.equal(cb.status, 0, cb.stderr)
  // a second load appends, its seqs above the first's
  const again = await kv(['load', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0a', '--keys', '50', '--rate', '400', '--count', '40', '--log', la, '--json'])
  t.equal(again.status, 0, again.stderr)
  t.match(JSON.parse(again.stdout), { acked: 40, firstSeq: 401, lastSeq: 440 })
  t.equal((await kv(['check', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0a', '--log', la])).status, 0)
  // B restarted: its memory is empty, so every acknowledged key is missing
  vmB.child.kill('SIGTERM')
  t.equal(await vmB.exited, 130, vmB.stderr())
  vmB = vmProcess(t, sw.url, '02:00:00:00:00:0b')
  t.equal(await ready(sw.port, B), 'COUNT 0')
  const lost = await kv(['check', '--switch', sw.url, '--vm-mac', '02:00:00:00:00:0b', '--log', lb])
  t.equal(lost.status, 1, lost.stdout)
  t.match(lost.stderr, /tandem kv check: 50 of 50 keys do not hold their last acknowledged value; the first:\n {2}k\d+: missing, acknowledged k\d+@\d+, found NOTFOUND\n/)
  t.equal(lost.stderr.split('\n').filter((l) => l.startsWith('  ')).length, 10, 'the first ten listed')
  vmB.child.kill('SIGTERM')
  await vmB.exited
  stop.abort()
  const a = await vmA
  t.equal(a.end, 'stopped')
  t.match(a.console, /kvstore: listening/)
  sw.child.kill('SIGTERM')
  t.same(await sw.exited, { code: 0, signal: null }, 'SIGTERM: exit 0')
  const last = sw.logs.at(-1)!
  t.equal(last.msg, 'tandem switch stopped')
  t.ok((last.badDatagrams as number) > 50, `${last.badDatagrams} bad datagrams dropped`)
})

t.test('loss and delay on the switch: retries, and the check still passes', async (t) => {
  const sw = await startSwitch(t, ['--fault', 'delay=5,loss=0.1', '--seed', '3'])
  const vm = vmProcess(t, sw.url, '02:00:00:00:00:01')
  t.equal(await ready(sw.port, Buffer.from([2, 0, 0, 0, 0, 1])), 'COUNT 0')
  const log = join(tmp(t), 'acked.jsonl')
  const r = await kv(['load', '--switch', sw.url, '--keys', '20', '--rate', '300', '--count', '300', '--log', log, '--json'])
  t.equal(r.status, 0, r.stderr)
  const s = JSON.parse(r.stdout)
  t.match(s, { requests: 300, acked: 300, errors: 0 })
  // a request and its reply each cross one lossy link: about one in five tries is lost
  t.ok(s.retries >= 20, `${s.retries} retries`)
  t.ok(s.rttMs.p50 >= 10, `p50 ${s.rttMs.p50} ms: two delayed links`)
  const c = await kv(['check', '--switch', sw.url, '--log', log])
  t.equal(c.status, 0, c.stderr)
  t.match(c.stdout, /^20 keys checked, all acknowledged values present/)
  vm.child.kill('SIGTERM')
  t.equal(await vm.exited, 130)
})

t.test('a load killed by SIGKILL loses no acknowledged SET; one stopped by SIGINT prints its summary', async (t) => {
  const sw = await startSwitch(t)
  const vm = vmProcess(t, sw.url, '02:00:00:00:00:01')
  t.equal(await ready(sw.port, Buffer.from([2, 0, 0, 0, 0, 1])), 'COUNT 0')
  const log = join(tmp(t), 'acked.jsonl')
  const lines = () => readFileSync(log, 'utf8').split('\n').filter(Boolean).length
  const start = () => {
    const c = spawn(process.execPath, [CLI, 'kv', 'load', '--switch', sw.url, '--keys', '30', '--rate', '2000', '--window', '16', '--log', log, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    c.stdout.on('data', (d) => (stdout += d))
    const exited = new Promise<number | string>((r) => c.on('close', (code, signal) => r(code ?? signal ?? -1)))
    return { c, exited, stdout: () => stdout }
  }
  const until = async (cond: () => boolean) => {
    while (!cond()) await new Promise((r) => setTimeout(r, 20))
  }
  const killed = start()
  t.teardown(() => killed.c.kill('SIGKILL'))
  await until(() => {
    try {
      return lines() >= 300
    } catch {
      return false
    }
  })
  killed.c.kill('SIGKILL') // with SETs outstanding: the VM may hold values whose OK was never logged
  t.equal(await killed.exited, 'SIGKILL')
  const c1 = await kv(['check', '--switch', sw.url, '--log', log, '--json'])
  t.equal(c1.status, 0, c1.stderr)
  t.match(JSON.parse(c1.stdout), { keys: 30, problems: [] })
  const n = lines()
  const stopped = start()
  await until(() => lines() >= n + 200)
  stopped.c.kill('SIGINT')
  t.equal(await stopped.exited, 0)
  const s = JSON.parse(stopped.stdout())
  t.equal(lines(), n + s.acked, 'every OK of the stopped run is a line')
  t.ok(s.firstSeq > n, `seqs go on above the killed run's (${s.firstSeq})`)
  const c2 = await kv(['check', '--switch', sw.url, '--log', log])
  t.equal(c2.status, 0, c2.stderr)
  vm.child.kill('SIGTERM')
  t.equal(await vm.exited, 130)
})

t.test('no VM on the switch: load and check stop after --timeout with exit 3; bad options are one-line errors', async (t) => {
  const sw = await startSwitch(t)
  const log = join(tmp(t), 'acked.jsonl')
  const t0 = Date.now()
  const r = await kv(['load', '--switch', sw.url, '--count', '5', '--log', log, '--timeout', '0.5'])
  t.equal(r.status, 3, r.stderr)
  t.match(r.stderr, /^tandem kv: no reply from the VM 02:00:00:00:00:01 in 0\.5 s \(\d+ sends of 'SET k\d+ k\d+@\d+'\): is it running and on the switch\?\n$/)
  t.ok(Date.now() - t0 < 30_000)
  await run('sh', ['-c', `echo '{"key":"k1","value":"k1@1","seq":1,"t":1}' > ${log}`])
  const c = await kv(['check', '--switch', sw.url, '--log', log, '--timeout', '0.3'])
  t.equal(c.status, 3)
  t.match(c.stderr, /no reply from the VM/)
  for (const [args, msg] of [
    [['load', '--switch', '127.0.0.1:5555', '--log', log], /^tandem: invalid --switch '127\.0\.0\.1:5555' \(udp:HOST:PORT/],
    [['load', '--switch', sw.url, '--log', log, '--count', '5', '--duration', '1'], /^tandem: --duration and --count cannot be used together\n$/],
    [['load', '--switch', sw.url, '--log', log, '--vm-mac', 'zz'], /^tandem: invalid --vm-mac 'zz'/],
    [['load', '--switch', sw.url, '--log', log, '--mac', '03:00:00:00:00:00'], /^tandem: the client's MAC prefix must be 3 bytes, unicast/],
  ] as [string[], RegExp][]) {
    const e = await kv(args)
    t.equal(e.status, 1, args.join(' '))
    t.match(e.stderr, msg)
  }
  const both = await run(process.execPath, [CLI, 'vm', 'run', '--guest', 'kvstore', '--net', 'udp:127.0.0.1:1', '--switch', sw.url])
  t.equal(both.status, 1)
  t.match(both.stderr, /^tandem: --net and --switch cannot be used together\n$/)
  const young = await run(process.execPath, [CLI, 'switch', '--listen', '127.0.0.1:0', '--age', '5'])
  t.equal(young.status, 1)
  t.match(young.stderr, /^tandem: invalid --age '5' \(seconds, 15 to 86400\)\n$/)
  const badFault = await run(process.execPath, [CLI, 'switch', '--listen', '127.0.0.1:0', '--fault', 'loss=7'])
  t.equal(badFault.status, 1)
  t.match(badFault.stderr, /^tandem: invalid --fault 'loss=7'/)
  const sw2 = await run(process.execPath, [CLI, 'switch', '--listen', `127.0.0.1:${sw.port}`])
  t.equal(sw2.status, 1)
  t.match(sw2.stderr, /^tandem: cannot listen on udp:127\.0\.0\.1:\d+: the port is in use\n$/)
})

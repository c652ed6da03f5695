import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { CLI, run } from '../../helpers/peers.js'
import { LEASE, leaseServer, running, startHost } from '../../helpers/host-process.js'
import { bearer } from '../../helpers/server.js'
import type { VmInfo } from '../../../src/client/host/index.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const tandem = (...args: string[]) => run(process.execPath, [CLI, ...args], { timeout: 60_000 })
type ErrorBody = { error?: { code: string; message: string; holder?: string | null } }
/** the REST token of the current test's server (set after leaseServer), sent with every api() request */
let token = ''
async function api<T = Record<string, unknown>>(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: T & ErrorBody; text: string }> {
  const r = await fetch(`${base}${path}`, { method, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...bearer(token) }, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) })
  const text = await r.text()
  return { status: r.status, body: JSON.parse(text) as T & ErrorBody, text }
}
type Hosts = { hosts: { name: string; heartbeat: string; api: string | null; vms: string[] }[] }
/** A VM that runs until told: kvstore waits for frames on its NIC. */
const KV = ['--guest', 'kvstore', '--net', 'udp:127.0.0.1:0']
const vmOf = async (host: string, name: string) => (await api<VmInfo>(host, 'GET', `/api/v1/vms/${name}`)).body

t.test('a host joins the lockspace; vm start, ls and stop through the CLI; the server shows which VM runs where', async (t) => {
  const s = await leaseServer(t)
  token = s.token
  const a = await startHost(t, 'host-a', s.url)
  const hosts = (await api<Hosts>(s.url, 'GET', '/api/v1/hosts')).body.hosts
  t.match(hosts.find((h) => h.name === 'host-a'), { api: a.url, vms: [] }, 'joined, and registered its API with the server')
  const twin = await tandem('host', '--name', 'host-a', '--server', s.url, '--api-port', '0')
  t.equal(twin.status, 1, 'a second host under a live host\'s name does not start')
  t.match(twin.stderr, /^tandem: host name 'host-a' is in use by a live process/)
  const start = await tandem('vm', 'start', 'vm1', '--host', a.url, ...KV)
  t.equal(start.status, 0, start.stderr)
  t.match(start.stdout, /^Started VM 'vm1' \(pid \d+, lock vm\/vm1 generation 1\)\n$/)
  const ls = await tandem('vm', 'ls', '--host', a.url, '--json')
  t.equal(ls.status, 0, ls.stderr)
  const [vm] = (JSON.parse(ls.stdout) as { vms: VmInfo[] }).vms
  t.match(vm, { name: 'vm1', state: 'running', guest: 'kvstore', generation: 1, net: 'udp:127.0.0.1:0' })
  t.ok(running(vm.pid!), 'its process runs')
  t.match((await tandem('vm', 'ls', '--host', a.url)).stdout, /vm1\s+running\s+\d+\s+1\s+kvstore/)
  t.match((await api<Hosts>(s.url, 'GET', '/api/v1/hosts')).body.hosts.find((h) => h.name === 'host-a'), { heartbeat: 'live', vms: ['vm1'] }, 'the server: vm1 runs on host-a')
  t.match((await tandem('vm', 'ls', '--server', s.url)).stdout, /vm1\s+host-a\s+live\s+http:\/\/127\.0\.0\.1:\d+/)
  const metrics = await (await fetch(`${a.url}/metrics`)).text()
  t.match(metrics, /^tandem_host_lease_valid 1$/m)
  t.match(metrics, /^tandem_host_vms\{state="running"\} 1$/m)
  t.match(metrics, /^tandem_host_vm_starts_total\{result="started"\} 1$/m)
  const stop = await tandem('vm', 'stop', 'vm1', '--host', a.url)
  t.equal(stop.status, 0, stop.stderr)
  t.match(stop.stdout, /Stopped VM 'vm1' \(stopped, exit status 130\)/, 'SIGTERM: vm run stops between slices (130)')
  t.notOk(running(vm.pid!), 'its process is gone')
  t.same((await api<{ vms: VmInfo[] }>(a.url, 'GET', '/api/v1/vms')).body.vms, [], 'and forgotten')
  const lock = (await api<{ locks: { name: string; state: string }[] }>(s.url, 'GET', '/api/v1/locks')).body.locks.find((l) => l.name === 'vm/vm1')
  t.match(lock, { state: 'free' }, 'its lock released')
  t.match((await api<Hosts>(s.url, 'GET', '/api/v1/hosts')).body.hosts.find((h) => h.name === 'host-a'), { vms: [] })
  // bad requests: 4xx JSON naming the problem, never a stack trace; the host carries on
  const bad: [string, string, unknown, number, RegExp][] = [
    ['POST', '/api/v1/vms', { name: 'Web_1', guest: 'kvstore' }, 400, /invalid VM name "Web_1"/],
    ['POST', '/api/v1/vms', { name: 'x'.repeat(61), guest: 'kvstore' }, 400, /invalid VM name/],
    ['POST', '/api/v1/vms', { name: 'web-', guest: 'kvstore' }, 400, /invalid VM name/],
    ['POST', '/api/v1/vms', { name: 'w', guest: '' }, 400, /"guest"/],
    ['POST', '/api/v1/vms', { name: 'w', guest: 'kvstore', memory: 1000 }, 400, /"memory"/],
    ['POST', '/api/v1/vms', { name: 'w', guest: 'kvstore', memory: '64M' }, 400, /"memory" must be a number/],
    ['POST', '/api/v1/vms', { name: 'w', guest: 'kvstore', net: 'tcp:1.2.3.4:5' }, 400, /"net"/],
    ['POST', '/api/v1/vms', { name: 'w', guest: 'kvstore', disk: '../etc' }, 400, /invalid disk name/],
    ['POST', '/api/v1/vms', { name: 'w', guest: 'kvstore', disk: 'nope' }, 404, /disk 'nope' not found on the server/],
    ['POST', '/api/v1/vms', '{"name":', 400, /invalid request body/],
    ['POST', '/api/v1/vms', [1], 400, /JSON object/],
    ['DELETE', '/api/v1/vms/nope', undefined, 404, /no VM named 'nope' on host 'host-a'/],
    ['GET', '/api/v1/nothing', undefined, 404, /no route/],
    ['PUT', '/api/v1/faults', { clock: { offsetMs: 1000 } }, 404, /fault injection is off: start tandem host with --fault-injection/],
  ]
  for (const [method, path, body, status, message] of bad) {
    const r = await api(a.url, method, path, body)
    t.equal(r.status, status, `${method} ${path} ${JSON.stringify(body)}`)
    t.match(r.body.error?.message, message)
    t.notMatch(r.text, /\n\s+at /, 'no stack trace')
  }
  const cli = await tandem('vm', 'start', 'w', '--host', a.url, '--guest', 'kvstore', '--net', 'nope')
  t.equal(cli.status, 1)
  t.match(cli.stderr, /^tandem: invalid "net" "nope"/)
  t.equal((await api(a.url, 'GET', '/api/v1/health')).status, 200, 'still serving')
})

t.test('a clock jump on a host (--fault-injection): its wall clock and its VMs\' move, its lease and VMs do not', async (t) => {
  const s = await leaseServer(t)
  token = s.token
  const a = await startHost(t, 'host-a', s.url, ['--fault-injection'])
  t.match((await api(a.url, 'GET', '/api/v1/faults')).body, { clock: { offsetMs: 0 } })
  for (const body of [{}, { clock: 5 }, { clock: { offsetMs: '5' } }, { clock: { offsetMs: 1.5 } }, { clock: { offsetMs: 1e15 } }, { clock: { offsetMs: 1 }, disk: [] }]) {
    const r = await api(a.url, 'PUT', '/api/v1/faults', body)
    t.equal(r.status, 400, JSON.stringify(body))
    t.notMatch(r.text, /\n\s+at /)
  }
  const jump = -3_600_000
  const put = await api<{ clock: { offsetMs: number; file: string } }>(a.url, 'PUT', '/api/v1/faults', { clock: { offsetMs: jump } })
  t.equal(put.status, 200, put.text)
  t.equal(put.body.clock.offsetMs, jump)
  // the log line comes through the host's stdout, which may reach us after the reply (CI, once)
  const find = () => a.logs.map((l) => JSON.parse(l) as { msg: string; time: number }).find((l) => l.msg === 'fault injection: wall clock offset')
  for (let i = 0; i < 100 && !find(); i++) await new Promise((r) => setTimeout(r, 50))
  const logged = find()
  t.ok(logged && Math.abs(logged.time - (Date.now() + jump)) < 60_000, 'the host\'s own wall clock (its log lines) reads an hour back')
  const started = await api<VmInfo>(a.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'kvstore', net: 'udp:127.0.0.1:9' })
  t.equal(started.status, 201, started.text)
  t.ok(Math.abs(Date.parse(started.body.startedAt) - (Date.now() + jump)) < 60_000, `startedAt ${started.body.startedAt}: the host's clock`)
  const environ = readFileSync(`/proc/${started.body.pid}/environ`, 'utf8').split('\0')
  t.ok(environ.includes(`TANDEM_WALL_OFFSET_FILE=${put.body.clock.file}`), 'the VM reads its wall clock through the host\'s offset')
  // the other way, a day: heartbeats and fence deadlines are on monotonic time
  t.equal((await api(a.url, 'PUT', '/api/v1/faults', { clock: { offsetMs: 86_400_000 } })).status, 200)
  await sleep(LEASE.leaseMs + 500)
  t.match((await api(a.url, 'GET', '/api/v1/health')).body, { lease: { valid: true } }, 'the lease held across both jumps')
  t.match(await vmOf(a.url, 'vm1'), { state: 'running', generation: 1 }, 'the VM was not fenced')
  t.ok(running(started.body.pid!))
})

t.test('a VM runs on one host at a time: a second host is refused, naming the holder', async (t) => {
  const s = await leaseServer(t)
  token = s.token
  const [a, b] = await Promise.all([startHost(t, 'host-a', s.url), startHost(t, 'host-b', s.url)])
  t.equal((await tandem('vm', 'start', 'vm1', '--host', a.url, ...KV)).status, 0)
  const refused = await tandem('vm', 'start', 'vm1', '--host', b.url, ...KV)
  t.equal(refused.status, 75, 'vm start\'s "runs elsewhere" status')
  t.match(refused.stderr, /^tandem: VM 'vm1' is running on host 'host-a' \(lock 'vm\/vm1'\)/)
  const r = await api(b.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'kvstore' })
  t.equal(r.status, 409)
  t.match(r.body.error, { code: 'Busy', holder: 'host-a' })
  const again = await tandem('vm', 'start', 'vm1', '--host', a.url, ...KV)
  t.equal(again.status, 75, 'on its own host too')
  t.match(again.stderr, /VM 'vm1' is already running on this host \('host-a'\)/)
  t.same((await api<{ vms: VmInfo[] }>(b.url, 'GET', '/api/v1/vms')).body.vms, [], 'host-b runs nothing')
  t.equal((await tandem('vm', 'stop', 'vm1', '--host', a.url)).status, 0)
  const moved = await tandem('vm', 'start', 'vm1', '--host', b.url, ...KV, '--json')
  t.equal(moved.status, 0, moved.stderr)
  t.match(JSON.parse(moved.stdout), { state: 'running', generation: 2 }, 'stopped on host-a, it starts on host-b under the next generation')
  t.match((await api<Hosts>(s.url, 'GET', '/api/v1/hosts')).body.hosts.filter((h) => h.name.startsWith('host-')).map((h) => [h.name, h.vms]).sort(), [['host-a', []], ['host-b', ['vm1']]])
})

/** A server, host-a running vm1 (a kvstore), and host-b. */
async function vm1OnHostA(t: Test) {
  const s = await leaseServer(t)
  token = s.token
  const [a, b] = await Promise.all([startHost(t, 'host-a', s.url), startHost(t, 'host-b', s.url)])
  t.equal((await tandem('vm', 'start', 'vm1', '--host', a.url, ...KV)).status, 0)
  return { s, a, b, onA: await vmOf(a.url, 'vm1') }
}

/**
 * Host `b` asks for vm1 every 50 ms (refused, 409, meanwhile) until it starts it: how long after
 * `since` that was, and whether the process `pid` still ran just before the request that won.
 */
async function takeOver(t: Test, b: string, pid: number, since: number): Promise<{ at: number; vm: VmInfo; pidRan: boolean } | null> {
  while (performance.now() - since < LEASE.leaseMs + 20_000) {
    const pidRan = running(pid)
    const r = await api<VmInfo>(b, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'kvstore', net: 'udp:127.0.0.1:0' })
    if (r.status === 201) return { at: performance.now() - since, vm: r.body, pidRan }
    if (r.status !== 409) t.fail(`${r.status}: ${r.text}`)
    await sleep(50)
  }
  return null
}

t.test('host A killed (its whole process group): its VM dies by its watchdog before the lease is over, then host B starts it', async (t) => {
  const { s, a, b, onA } = await vm1OnHostA(t)
  process.kill(-a.pgid, 'SIGKILL')
  const killedAt = performance.now()
  await a.exited
  t.ok(running(onA.pid!), 'the VM outlives its host for now (it runs in a group of its own, fenced by its watchdog)')
  const early = await api(b.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'kvstore' })
  if (performance.now() - killedAt < LEASE.leaseMs - LEASE.heartbeatMs) {
    t.equal(early.status, 409, 'refused while host-a\'s lease may still be valid')
    t.match(early.body.error, { holder: 'host-a' })
  }
  const won = await takeOver(t, b.url, onA.pid!, killedAt)
  t.ok(won, `host-b started vm1 ${Math.round(won?.at ?? -1)} ms after host-a was killed`)
  t.notOk(won?.pidRan, 'host-a\'s VM was dead before host-b could start it')
  // the lease runs from host-a's last renewal, which came up to a heartbeat before the kill
  t.ok(won!.at >= LEASE.leaseMs - LEASE.heartbeatMs, `not before host-a's lease was over (${LEASE.leaseMs} ms from its last renewal, at most ${LEASE.heartbeatMs} ms before the kill)`)
  t.match(won?.vm, { state: 'running', generation: onA.generation + 1 })
  // the server watches host-a's counter on its own heartbeat, so it may see the last renewal up to
  // one heartbeat after host-b did: its view says expired within a heartbeat of host-b's start
  const wonAt = performance.now()
  let view = (await api<Hosts>(s.url, 'GET', '/api/v1/hosts')).body.hosts
  while (view.find((h) => h.name === 'host-a')?.heartbeat === 'live' && performance.now() - wonAt < 2 * LEASE.heartbeatMs) {
    await sleep(20)
    view = (await api<Hosts>(s.url, 'GET', '/api/v1/hosts')).body.hosts
  }
  t.match(view.find((h) => h.name === 'host-a'), { heartbeat: 'expired', vms: [] })
  t.match(view.find((h) => h.name === 'host-b'), { heartbeat: 'live', vms: ['vm1'] })
})

t.test('a host that loses its lease (paused past it) has its VMs killed before another host may take them', async (t) => {
  const { a, b, onA } = await vm1OnHostA(t)
  process.kill(-a.pgid, 'SIGSTOP')
  t.teardown(() => process.kill(-a.pgid, 'SIGCONT'))
  const won = await takeOver(t, b.url, onA.pid!, performance.now())
  t.ok(won, 'host-b started the VM while host-a was paused')
  t.notOk(won?.pidRan, 'host-a\'s VM had been killed (by its watchdog, host-a being stopped) before')
  t.ok(won!.at >= LEASE.leaseMs - LEASE.heartbeatMs, `after host-a's lease (${Math.round(won!.at)} ms after the stop; the lease runs from its last renewal, at most ${LEASE.heartbeatMs} ms before)`)
  process.kill(-a.pgid, 'SIGCONT')
  // host-a resumes: it finds its lease lost, reports its VM lost, joins again, and is refused vm1 naming host-b
  let lost: VmInfo | null = null
  // 'lost' shows as soon as the host knows; the exit status once it has collected the process's end
  // (ci39 read the VM between the two: exitStatus null)
  for (let i = 0; i < 200 && (lost?.state !== 'lost' || lost.exitStatus === null); i++) {
    await sleep(50)
    lost = await vmOf(a.url, 'vm1').catch(() => null)
  }
  t.match(lost, { state: 'lost', reason: /lease/, exitStatus: 137 })
  let again = await api(a.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'kvstore' })
  for (let i = 0; i < 300 && again.status === 503; i++) {
    await sleep(50)
    again = await api(a.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'kvstore' })
  }
  t.equal(again.status, 409, again.text)
  t.match(again.body.error, { holder: 'host-b' })
  t.match(await (await fetch(`${a.url}/metrics`)).text(), /^tandem_host_vms_fenced_total 1$/m)
})

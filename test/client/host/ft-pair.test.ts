import t from 'tap'
import { createServer } from 'node:http'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, run, tmp } from '../../helpers/peers.js'
import { leaseServer, running, startHost } from '../../helpers/host-process.js'
import { hostVm, restApi, twoHosts, until } from '../../helpers/host-pair.js'
import { kv as kvChild } from '../../helpers/ft-cli.js'
import { startSwitch } from '../../helpers/switch-process.js'
import { syncedIn } from '../../helpers/disklog.js'
import { ftHostName, type VmInfo } from '../../../src/client/host/index.js'

const VM_MAC = '02:00:00:00:00:42'
const tandem = (...args: string[]) => run(process.execPath, [CLI, ...args], { timeout: 120_000 })
/** the REST token of the current test's server (set after leaseServer), sent with every api() request */
let token = ''
const api = restApi(() => token)
const vmOf = (host: string) => hostVm(host, 'vm1')
const kv = (args: string[]) => kvChild(args).done

const metric = (text: string, re: RegExp): number | null => {
  const m = re.exec(text)
  return m ? Number(m[1]) : null
}

t.test('vm start --ft: host A runs the primary, host B the backup; the primary SIGKILLed under kv load, B shows it live and every acknowledged key is there; vm ft-restore has A run a new backup, B\'s side SIGKILLed, A live with every key', async (t) => {
  const dir = tmp(t, 'tandem-host-ft-')
  const { s, a, b } = await twoHosts(t)
  token = s.token
  const sw = await startSwitch(t)
  const start = await tandem('vm', 'start', 'vm1', '--host', a.url, '--ft', b.url, '--guest', 'kvstore', '--switch', sw.url, '--mac', VM_MAC)
  t.equal(start.status, 0, start.stderr)
  t.match(start.stdout, new RegExp(`^Started VM 'vm1' as a pair: primary pid \\d+ here, backup on ${b.url} at 127\\.0\\.0\\.1:\\d+ \\(lock vm/vm1 generation \\d+, held by host-a-vm-vm1\\)\\n$`))
  const onA = await vmOf(a.url)
  const onB = await vmOf(b.url)
  t.match(onA, { state: 'running', switch: sw.url, ft: { side: 'primary', role: 'primary', peer: b.url, lockHost: 'host-a-vm-vm1', backupReads: 'disk' } })
  t.match(onB, { state: 'running', ft: { side: 'backup', role: 'backup', peer: null, lockHost: 'host-b-vm-vm1', address: onA.ft!.address } })
  t.ok(onA.generation > 0, `the primary's arbiter holds vm/vm1 at generation ${onA.generation}`)
  const lock = async () => (await api<{ locks: { name: string; owner: string | null; generation: number }[] }>(s.url, 'GET', '/api/v1/locks')).body.locks.find((l) => l.name === 'vm/vm1')
  t.match(await lock(), { owner: 'host-a-vm-vm1', generation: onA.generation }, 'the lock is the primary child\'s, not host-a\'s')

  const acked = join(dir, 'acked.jsonl')
  const load = kv(['load', '--switch', sw.url, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '300', '--duration', '4', '--log', acked, '--timeout', '20', '--json'])
  // host A's /metrics: the pair's figures, read from the primary's control socket
  const m = await until(30_000, async () => {
    const text = await (await fetch(`${a.url}/metrics`)).text()
    return (metric(text, /^tandem_ft_log_bytes_total\{vm="vm1",side="primary"\} (\d+)$/m) ?? 0) > 0 && /^tandem_ft_output_delay_seconds\{vm="vm1",quantile="0.99"\} /m.test(text) && text
  })
  t.ok(m, 'host A\'s metrics show the pair')
  t.ok((metric(m || '', /^tandem_ft_lag_seconds\{vm="vm1"\} (\S+)$/m) ?? -1) >= 0, 'tandem_ft_lag_seconds')
  t.equal(metric(m || '', /^tandem_vm_cpu_limit_ratio\{vm="vm1"\} (\S+)$/m) !== null, true, 'tandem_vm_cpu_limit_ratio')
  const lsA = await tandem('vm', 'ls', '--host', a.url)
  t.match(lsA.stdout, /vm1\s+running\s+\d+\s+\d+\s+kvstore\s+-\s+primary\s+\d+\.\dms\s+\d+%\s+\d+\.\dKiB\/s/, lsA.stdout)
  // kill the primary once the load has had some SETs acknowledged
  t.ok(await until(30_000, async () => existsSync(acked) && readFileSync(acked, 'utf8').split('\n').length > 20), 'kv load is under way')
  process.kill(-onA.pid!, 'SIGKILL')
  const live = await until(30_000, async () => (await vmOf(b.url)).ft?.role === 'live')
  t.ok(live, 'host B shows the backup live')
  const l = await load
  t.equal(l.code, 0, `kv load: ${l.err.slice(-300)}`)
  const c = await kv(['check', '--switch', sw.url, '--vm-mac', VM_MAC, '--log', acked, '--timeout', '20'])
  t.equal(c.code, 0, `kv check: ${c.out}${c.err}`)
  const gone = await until(30_000, async () => {
    const v = await vmOf(a.url)
    return v.state === 'exited' && v
  })
  t.match(gone, { state: 'exited', exitStatus: 137 }, 'host A: the primary is gone, killed')
  t.notOk(running(onA.pid!), 'its process is gone')
  const lsB = await tandem('vm', 'ls', '--host', b.url)
  t.match(lsB.stdout, /vm1\s+running\s+\d+\s+\d+\s+kvstore\s+-\s+live\s/, lsB.stdout)
  const afterB = await vmOf(b.url)
  t.ok(afterB.generation > onA.generation, `the backup claimed vm/vm1: generation ${onA.generation} -> ${afterB.generation}`)
  t.match(await lock(), { owner: 'host-b-vm-vm1', generation: afterB.generation }, 'the lock moved to host B\'s side')
  const mb = await (await fetch(`${b.url}/metrics`)).text()
  t.ok((metric(mb, /^tandem_ft_log_bytes_total\{vm="vm1",side="backup"\} (\d+)$/m) ?? 0) > 0, 'host B\'s metrics: the log it received')

  // redundancy restore through the agents: host B, running vm1 alone, has host A start a new backup
  const restored = await tandem('vm', 'ft-restore', 'vm1', '--host', b.url, '--ft', a.url, '--json')
  t.equal(restored.status, 0, restored.stderr)
  t.match(JSON.parse(restored.stdout || '{}'), { backup: /^127\.0\.0\.1:\d+$/, instructions: Number, pauseMs: Number })
  // each agent reads its side's FT status on its own schedule: wait until both have read it once
  const seen = await until(10_000, async () => {
    const [s, n] = await Promise.all([vmOf(b.url), vmOf(a.url)])
    return s.ft?.role === 'live' && s.ft.protected && n.ft?.role && [s, n]
  })
  const [survivor, newBackup] = seen ?? (await Promise.all([vmOf(b.url), vmOf(a.url)]))
  t.match(survivor, { state: 'running', ft: { role: 'live', protected: true, peer: a.url } }, `host B: the VM is protected again, by host A: ${survivor.console.slice(-600)}`)
  t.match(newBackup, { state: 'running', ft: { side: 'backup', role: 'backup', mode: 'replay' } }, `host A runs the new backup: ${newBackup.console.slice(-600)}`)
  const twice = await api(b.url, 'POST', '/api/v1/vms/vm1/ft/restore', { host: a.url })
  t.equal(twice.status, 409, `a protected VM is not restored again: ${twice.text}`)
  // the second failover: B's side SIGKILLed under load, A's new backup goes live with every key the load had acknowledged
  const acked2 = join(dir, 'acked2.jsonl')
  const load2 = kv(['load', '--switch', sw.url, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '300', '--duration', '3', '--log', acked2, '--timeout', '20', '--json'])
  t.ok(await until(30_000, async () => existsSync(acked2) && readFileSync(acked2, 'utf8').split('\n').length > 20), 'the second load is under way')
  process.kill(-afterB.pid!, 'SIGKILL')
  t.ok(await until(30_000, async () => (await vmOf(a.url)).ft?.role === 'live'), 'host A shows the new backup live')
  const l2 = await load2
  t.equal(l2.code, 0, `kv load: ${l2.err.slice(-300)}`)
  // (the first load's log was checked above: its keys hold the second load's values now, whose sequence numbers start again)
  const c2 = await kv(['check', '--switch', sw.url, '--vm-mac', VM_MAC, '--log', acked2, '--timeout', '20'])
  t.equal(c2.code, 0, `kv check after the second failover: ${c2.out}${c2.err}`)
  t.equal((await tandem('vm', 'stop', 'vm1', '--host', a.url)).status, 0)
})

t.test('a pair on a datastore disk (disklog over iSCSI from both hosts, backup reads from the log): the primary SIGKILLed, the live backup appends on; a later start finds every synced record', async (t) => {
  const { s, a, b } = await twoHosts(t, {})
  token = s.token
  t.equal((await api(s.url, 'POST', '/api/v1/disks', { name: 'd1', size: '64M' })).status, 201)
  const start = await tandem('vm', 'start', 'vm1', '--host', a.url, '--ft', b.url, '--guest', 'disklog', '--disk', 'd1', '--backup-reads', 'log', '--json')
  t.equal(start.status, 0, start.stderr)
  const onA = JSON.parse(start.stdout) as VmInfo
  t.match(onA, { initiatorName: 'iqn.2026-11.local.tandem:vm:vm1', ft: { side: 'primary', backupReads: 'log', address: /^127\.0\.0\.1:\d+$/ } })
  t.match(await vmOf(b.url), { initiatorName: 'iqn.2026-11.local.tandem:vm:vm1', ft: { side: 'backup', backupReads: 'log' } })
  const synced = syncedIn
  const appended = await until(30_000, async () => synced((await vmOf(a.url)).console) >= 16)
  t.ok(appended, appended ? 'the primary appends and syncs' : `the primary appends and syncs: ${JSON.stringify(await vmOf(a.url)).slice(-1500)}`)
  if (!appended) return
  process.kill(-onA.pid!, 'SIGKILL')
  await until(30_000, async () => !running(onA.pid!))
  const before = synced((await vmOf(a.url)).console)
  t.ok(await until(30_000, async () => (await vmOf(b.url)).ft?.role === 'live'), 'host B shows the backup live')
  t.ok(await until(30_000, async () => synced((await vmOf(b.url)).console) > before + 16), `the live backup syncs past ${before}`)
  const restore = await api(b.url, 'POST', '/api/v1/vms/vm1/ft/restore', { host: a.url })
  t.equal(restore.status, 501, `a restore of a VM with a disk is refused, not half-protected: ${restore.text}`)
  t.match(restore.body.error?.message, /with a disk is not offered yet/)
  t.match(await vmOf(a.url), { state: 'exited' }, 'and no backup was started for it')
  const last = synced((await vmOf(b.url)).console)
  const stop = await api<VmInfo>(b.url, 'DELETE', '/api/v1/vms/vm1')
  t.equal(stop.status, 200, stop.text)
  const again = await tandem('vm', 'start', 'vm1', '--host', a.url, '--guest', 'disklog', '--disk', 'd1')
  t.equal(again.status, 0, again.stderr)
  const resumed = await until(30_000, async () => /disklog: resumed after (\d+)/.exec((await vmOf(a.url)).console))
  t.ok(resumed && Number(resumed[1]) >= Math.max(before, last), `resumed after ${resumed?.[1]}: at least ${Math.max(before, last)}, the last sync either side printed`)
  // the live side gave its reservation back when it stopped: the restarted VM's writes land
  const after = Number(resumed?.[1] ?? 0)
  t.ok(await until(30_000, async () => synced((await vmOf(a.url)).console) >= after + 16), `the restarted VM appends and syncs past ${after}: no reservation left behind`)
})

t.test('bad pair requests: 4xx JSON naming the problem; an unreachable backup host leaves nothing running', async (t) => {
  const s = await leaseServer(t)
  token = s.token
  const a = await startHost(t, 'host-a', s.url)
  const bad: [unknown, number, RegExp][] = [
    [{ name: 'w', guest: 'kvstore', ft: 'http://x' }, 400, /"ft" must be an object/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'ftp://x' } }, 400, /"ft.host"/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', backupReads: 'tape' } }, 400, /"ft.backupReads" must be "disk" or "log"/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1' }, role: 'backup' }, 400, /not both/],
    [{ name: 'w', guest: 'kvstore', role: 'primary' }, 400, /invalid "role"/],
    [{ name: 'w', guest: 'kvstore', role: 'backup', net: 'udp:127.0.0.1:0' }, 400, /tandem switch/],
    [{ name: 'w', guest: 'kvstore', switch: 'udp:127.0.0.1:0' }, 400, /invalid "switch"/],
    [{ name: 'w', guest: 'kvstore', mac: '02:00' }, 400, /invalid "mac"/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'lockstep' } }, 400, /invalid "ft\.mode" "lockstep" \(replay, checkpoint or colo\)/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'colo', epochMs: 10 } }, 400, /"ft\.epochMs" is an option of the checkpoint mode, not colo/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'checkpoint', epochMs: 1 } }, 400, /invalid "ft\.epochMs" 1 \(5 to 10000 ms\)/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'checkpoint', diff: 'no' } }, 400, /"ft\.diff" must be true or false/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'colo', coloTimeoutMs: 0 } }, 400, /invalid "ft\.coloTimeoutMs" 0 \(5 to 60000 ms\)/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'colo', coloCheckpointMs: 'often' } }, 400, /invalid "ft\.coloCheckpointMs" "often" \(5 to 3600000 ms\)/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1', mode: 'replay', coloCheckpointMs: 100 } }, 400, /"ft\.coloCheckpointMs" is an option of the colo mode, not replay/],
    [{ name: 'w', guest: 'kvstore', mode: 'colo' }, 400, /"mode" alone is for a backup/],
    [{ name: 'w', guest: 'kvstore', role: 'backup', mode: 'checkpoint', coloTimeoutMs: 50 }, 400, /"coloTimeoutMs" is an option of the colo mode, not checkpoint/],
    [{ name: 'w', guest: 'kvstore', ft: { host: 'http://127.0.0.1:1' } }, 500, /the backup's host http:\/\/127\.0\.0\.1:1 did not start the backup: could not reach/],
  ]
  for (const [body, status, message] of bad) {
    const r = await api(a.url, 'POST', '/api/v1/vms', body)
    t.equal(r.status, status, JSON.stringify(body))
    t.match(r.body.error?.message, message)
    t.notMatch(r.text, /\n\s+at /, 'no stack trace')
  }
  for (const [body, status, message] of [[{}, 400, /"host" must be the backup host's API URL/], [{ host: 'http://127.0.0.1:1' }, 404, /no VM named 'w'/]] as const) {
    const r = await api(a.url, 'POST', '/api/v1/vms/w/ft/restore', body)
    t.equal(r.status, status, `restore ${JSON.stringify(body)}`)
    t.match(r.body.error?.message, message)
  }
  t.same((await api<{ vms: VmInfo[] }>(a.url, 'GET', '/api/v1/vms')).body.vms, [], 'nothing was started')
  // a backup host whose backup nobody can reach: the primary does not pair, and A stops that backup again
  const calls: string[] = []
  const fake = createServer((req, res) => {
    calls.push(`${req.method} ${req.url}`)
    req.resume()
    if (req.method === 'POST') res.writeHead(201, { 'content-type': 'application/json' }).end(JSON.stringify({ name: 'w', ft: { side: 'backup', address: '127.0.0.1:1' } }))
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{}')
  })
  await new Promise<void>((r) => fake.listen(0, '127.0.0.1', () => r()))
  t.teardown(() => fake.close())
  const fakeUrl = `http://127.0.0.1:${(fake.address() as { port: number }).port}`
  const unpaired = await api(a.url, 'POST', '/api/v1/vms', { name: 'w', guest: 'kvstore', ft: { host: fakeUrl } })
  t.equal(unpaired.status, 500)
  t.match(unpaired.body.error?.message, /the primary of VM 'w' did not pair with its backup at 127\.0\.0\.1:1: .*cannot reach the FT backup at 127\.0\.0\.1:1/s)
  t.ok(await until(10_000, async () => calls.includes('DELETE /api/v1/vms/w')), `A stopped the backup it had asked for: ${calls.join(', ')}`)
  t.same((await api<{ vms: VmInfo[] }>(a.url, 'GET', '/api/v1/vms')).body.vms, [], 'and keeps no VM')
  const cli = await tandem('vm', 'start', 'w', '--host', a.url, '--ft', a.url, '--guest', 'kvstore', '--backup-reads', 'tape')
  t.equal(cli.status, 1)
  t.match(cli.stderr, /^tandem: invalid --backup-reads 'tape'/)
  const restoreCli = await tandem('vm', 'ft-restore', 'w', '--host', a.url)
  t.equal(restoreCli.status, 1)
  t.match(restoreCli.stderr, /^tandem: give NAME --host URL --ft URL2 \(a VM on a host\), or --control PATH --backup HOST:PORT/)
  const host = await tandem('host', '--name', 'host-x', '--server', s.url, '--api-port', '0', '--ft-listen', '127.0.0.1 /x')
  t.equal(host.status, 1)
  t.match(host.stderr, /^tandem: invalid --ft-listen '127\.0\.0\.1 \/x'/)
})

t.test('a side\'s lockspace name: <host>-vm-<name>, within the lockspace\'s 64 bytes however long the names', async (t) => {
  t.equal(ftHostName('host-a', 'vm1'), 'host-a-vm-vm1')
  const long = ftHostName('h'.repeat(60), 'v'.repeat(60))
  t.equal(long.length, 64)
  t.not(long, ftHostName('h'.repeat(60), 'v'.repeat(59) + 'w'), 'names that differ past the cut stay apart')
  t.equal(ftHostName('h'.repeat(30), 'v'.repeat(30)).length, 64, 'exactly 64: kept whole')
  t.equal(ftHostName('h'.repeat(30), 'v'.repeat(30)), `${'h'.repeat(30)}-vm-${'v'.repeat(30)}`)
})

import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createTestNet, netnsSkip } from '../helpers/netns.js'
import { needs, run } from '../helpers/peers.js'
import { LEASE, leaseServer, startHost } from '../helpers/host-process.js'
import { openVmdk } from '../../src/disk-formats/index.js'
import type { VmInfo } from '../../src/client/host/index.js'

/**
 * Two hosts for real (#15 items 7 and 8): the server and hosts A and B each in a network namespace
 * of their own, joined by a test bridge. The disk is masked to the VM's identity: neither host's
 * own IQN sees or opens it (libiscsi the judge). The `disklog` guest on A appends records to its disk over
 * iSCSI under its own identity and syncs them; every process of A's namespace is SIGKILLed (the
 * machine dies); B starts the VM within lease + 1 s; the guest, resuming on B, finds every record
 * A had synced; the disk checks clean and holds them.
 */
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const FIRST_LBA = 2048
const MAGIC = 0x474f4c44
const VM_IQN = 'iqn.2026-11.local.tandem:vm:vm1'

/** the server's REST token: it listens off loopback, so every request needs it */
let token = ''
async function api<T>(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: T; text: string }> {
  const r = await fetch(`${base}${path}`, { method, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), authorization: `Bearer ${token}` }, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await r.text()
  return { status: r.status, body: (text ? JSON.parse(text) : {}) as T, text }
}
type Vm = VmInfo & { console: string }
const lastSynced = (console: string) => Math.max(0, ...[...console.matchAll(/disklog: synced (\d+)/g)].map((m) => Number(m[1])))

/** Is block `n` of the log record n (guests/src/disklog.c)? */
function isRecord(b: Buffer, n: number): boolean {
  if (b.readUInt32LE(0) !== MAGIC || b.readUInt32LE(4) !== n) return false
  for (let i = 2; i < 128; i++) if (b.readUInt32LE(i * 4) !== ((Math.imul(n, 0x9e3779b1) ^ Math.imul(i, 40503) ^ 0x5a5a5a5a) >>> 0)) return false
  return true
}

t.test('host A dies with its VM writing over iSCSI; host B runs it within lease + 1 s and every write A synced is there', { skip: netnsSkip() ?? needs('qemu-img', 'iscsi-ls', 'iscsi-inq').skip, timeout: 240_000 }, async (t) => {
  const net = await createTestNet(t, ['srv', 'a', 'b'])
  const { srv, a: na, b: nb } = net.nodes
  const s = await leaseServer(t, { wrap: net.wrap('srv'), listen: srv.addr })
  token = s.token
  t.equal((await api(s.url, 'POST', '/api/v1/disks', { name: 'd1', size: 16 << 20 })).status, 201, 'disk d1 made on the server')
  t.equal((await api(s.url, 'PUT', '/api/v1/disks/d1/access', { initiators: [VM_IQN] })).status, 200, 'd1 masked to the VM\'s own identity')
  const [a, b] = await Promise.all([
    startHost(t, 'host-a', s.url, ['--listen', na.addr], { wrap: net.wrap('a'), env: { TANDEM_API_TOKEN: s.token } }),
    startHost(t, 'host-b', s.url, ['--listen', nb.addr], { wrap: net.wrap('b'), env: { TANDEM_API_TOKEN: s.token } }),
  ])
  t.match(a.url, na.addr, 'host A serves its API on its own network')
  // masking, judged by libiscsi from each host's network: the host's own IQN neither sees nor opens d1
  const portal = `${srv.addr}:${s.iscsiPort}`
  for (const [node, host] of [['a', 'host-a'], ['b', 'host-b']] as const) {
    const hostIqn = `iqn.2026-11.local.tandem:host:${host}`
    const ls = await run(net.wrap(node)[0], [...net.wrap(node).slice(1), 'iscsi-ls', '-i', hostIqn, `iscsi://${portal}`], { timeout: 30_000 })
    t.equal(ls.status, 0, `iscsi-ls from ${node}: ${ls.stderr}`)
    t.notMatch(ls.stdout, 'Target:iqn.2026-11.local.tandem:d1 ', `SendTargets from ${node} as ${hostIqn} does not list d1`)
    const inq = await run(net.wrap(node)[0], [...net.wrap(node).slice(1), 'iscsi-inq', '-i', hostIqn, `iscsi://${portal}/iqn.2026-11.local.tandem:d1/0`], { timeout: 30_000 })
    t.match(inq.stdout + inq.stderr, /Authorization failure/, `a login from ${node} as ${hostIqn} is refused`)
  }

  const start = await api<VmInfo>(a.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'disklog', disk: 'd1' })
  t.equal(start.status, 201, 'vm1 started on host A')
  t.match(start.body, { diskUri: new RegExp(`^iscsi://${srv.addr.replace(/\./g, '\\.')}:\\d+/iqn\\.2026-11\\.local\\.tandem:d1/0$`), initiatorName: VM_IQN }, 'its disk is the server\'s LUN, reached under the VM\'s own name')
  // let it append and sync a while
  let synced = 0
  for (const until = Date.now() + 60_000; synced < 64 && Date.now() < until; await sleep(100)) synced = lastSynced((await api<Vm>(a.url, 'GET', '/api/v1/vms/vm1')).body.console ?? '')
  t.ok(synced >= 64, `the guest synced ${synced} records on host A`)

  // host A dies as a machine does: every process in its namespace at once
  synced = lastSynced((await api<Vm>(a.url, 'GET', '/api/v1/vms/vm1')).body.console)
  const killed = await net.killAll('a')
  const killedAt = performance.now()
  t.ok(killed >= 2, `host A's processes killed (${killed}: the host, its VM and its watchdog)`)

  let won: { at: number; vm: VmInfo } | null = null
  while (!won && performance.now() - killedAt < LEASE.leaseMs + 30_000) {
    const r = await api<VmInfo & { error?: { holder?: string } }>(b.url, 'POST', '/api/v1/vms', { name: 'vm1', guest: 'disklog', disk: 'd1' })
    if (r.status === 201) won = { at: performance.now() - killedAt, vm: r.body }
    else {
      if (r.status !== 409) t.fail(`host B: ${r.status} ${r.text}`)
      await sleep(100)
    }
  }
  t.ok(won, 'host B started vm1')
  t.ok(won!.at <= LEASE.leaseMs + 1000, `within lease + 1 s: ${Math.round(won!.at)} ms after the kill (lease ${LEASE.leaseMs} ms)`)
  t.match(won!.vm, { state: 'running', initiatorName: VM_IQN }, 'running on B under the same VM identity: the masked disk is usable there too')

  // the guest reads its log back on B: every record A synced is there, and it goes on appending
  let resumed = -1
  let onB = 0
  for (const until = Date.now() + 60_000; (resumed < 0 || onB <= resumed) && Date.now() < until; await sleep(100)) {
    const c = (await api<Vm>(b.url, 'GET', '/api/v1/vms/vm1')).body.console ?? ''
    const m = /disklog: resumed after (\d+)/.exec(c)
    if (m) resumed = Number(m[1])
    onB = lastSynced(c)
  }
  t.ok(resumed >= synced, `the VM on B resumed after record ${resumed}: every record A synced (${synced}) survived`)
  t.ok(onB > resumed, `and appends on B (synced ${onB})`)
  t.equal((await api(b.url, 'DELETE', '/api/v1/vms/vm1')).status, 200, 'stopped on B')

  s.child.kill('SIGTERM')
  t.same(await s.exited, { code: 0, signal: null }, 'the server stops cleanly')
  const top = join(s.dir, 'd1', (JSON.parse(readFileSync(join(s.dir, 'd1', 'disk.json'), 'utf8')) as { top: string }).top)
  const check = await run('qemu-img', ['check', '-f', 'vmdk', top])
  t.equal(check.status, 0, `qemu-img check: ${check.stdout}${check.stderr}`)
  const disk = await openVmdk(top, { readOnly: true })
  const log = await disk.read(FIRST_LBA * 512, onB * 512)
  await disk.close()
  let bad = 0
  for (let n = 1; n <= onB; n++) if (!isRecord(log.subarray((n - 1) * 512, n * 512), n)) bad++
  t.equal(bad, 0, `records 1..${onB} are all on the disk, written by A then B`)
})

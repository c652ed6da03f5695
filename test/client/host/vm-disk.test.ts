import t from 'tap'
import { join } from 'node:path'
import { CLI, shStatus, shmTmp } from '../../helpers/peers.js'
import { leaseServer, startHost } from '../../helpers/host-process.js'
import { bearer } from '../../helpers/server.js'
import { parseStartRequest, vmRunArgs, type VmInfo } from '../../../src/client/host/index.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const post = async (base: string, path: string, body: unknown) => {
  const r = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  return { status: r.status, body: (await r.json()) as VmInfo & { error?: { message: string } } }
}

/** `tandem vm run --disk iscsi://… --initiator-name` (#15 item 7): until it is there, the VM's own run is not checked. */
const vmRunHasIdentity = shStatus(process.execPath, [CLI, 'vm', 'run', '--help']).stdout.includes('--initiator-name')

t.test('the VM command: the disk by iSCSI under the VM\'s own name; every value after = (never read as an option)', async (t) => {
  t.same(vmRunArgs({ name: 'web', guest: 'diskio', memory: 32 << 20, diskUri: 'iscsi://10.0.0.1:3260/iqn.2026-11.local.tandem:d1/0', net: 'udp:10.0.0.2:5555' }), [
    'vm',
    'run',
    '--guest=diskio',
    `--memory=${32 << 20}`,
    '--disk=iscsi://10.0.0.1:3260/iqn.2026-11.local.tandem:d1/0',
    '--initiator-name=iqn.2026-11.local.tandem:vm:web',
    '--net=udp:10.0.0.2:5555',
  ])
  t.same(vmRunArgs({ name: 'x', guest: '--help', memory: 4096 }), ['vm', 'run', '--guest=--help', '--memory=4096'])
})

t.test('a VM\'s CPU limit: checked once at the edge, then run as vm run --cpu-limit', async (t) => {
  t.match(parseStartRequest({ name: 'web', guest: 'cpu', cpuLimit: 25 }), { cpuLimit: 25 })
  t.equal(parseStartRequest({ name: 'web', guest: 'cpu' }).cpuLimit, undefined)
  for (const bad of [0, 101, 12.5, '50']) t.throws(() => parseStartRequest({ name: 'web', guest: 'cpu', cpuLimit: bad }), { code: 'InvalidArgument', message: /"cpuLimit"/ }, JSON.stringify(bad))
  t.same(vmRunArgs({ name: 'web', guest: 'cpu', memory: 4096, cpuLimit: 25 }), ['vm', 'run', '--guest=cpu', '--memory=4096', '--cpu-limit=25'])
})

t.test('a VM\'s datastore disk: the host asks the server for its iSCSI target and runs the VM on it as iqn…:vm:<name>', async (t) => {
  const s = await leaseServer(t)
  const created = await fetch(`${s.url}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(s.token) }, body: JSON.stringify({ name: 'd1', size: '64M' }) })
  t.equal(created.status, 201)
  const a = await startHost(t, 'host-a', s.url)
  const r = await post(a.url, '/api/v1/vms', { name: 'dvm', guest: 'diskio', disk: 'd1', memory: 32 << 20 })
  t.equal(r.status, 201, r.body.error?.message ?? '')
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:d1/0`
  t.match(r.body, { disk: 'd1', diskUri: uri, initiatorName: 'iqn.2026-11.local.tandem:vm:dvm' })
  // the host's log line comes through its stdout pipe, which may trail the REST answer
  const startedLog = () => a.logs.map((l) => JSON.parse(l) as { msg: string; args?: string[] }).find((l) => l.msg === 'VM started')
  for (let i = 0; i < 100 && !startedLog(); i++) await new Promise((res) => setTimeout(res, 50))
  const started = startedLog()
  t.same(started?.args?.slice(0, -1), ['vm', 'run', '--guest=diskio', `--memory=${32 << 20}`, `--disk=${uri}`, '--initiator-name=iqn.2026-11.local.tandem:vm:dvm'], 'what the host ran')
  t.match(started?.args?.at(-1), /^--control=\/.*\/dvm\.sock$/, 'with a control socket of its own')
  let vm: VmInfo & { console: string } = r.body as VmInfo & { console: string }
  for (let i = 0; i < 600 && vm.state === 'running'; i++) {
    await sleep(100)
    vm = (await (await fetch(`${a.url}/api/v1/vms/dvm`)).json()) as VmInfo & { console: string }
  }
  t.equal(vm.state, 'exited', 'the VM ended by itself')
  const locks = (await (await fetch(`${s.url}/api/v1/locks`)).json()) as { locks: { name: string; state: string }[] }
  t.match(locks.locks.find((l) => l.name === 'vm/dvm'), { state: 'free' }, 'and its lock was released')
  if (!vmRunHasIdentity) {
    t.comment('SKIP the guest\'s own result: tandem vm run has no --initiator-name yet (#15 item 7)')
    return
  }
  t.equal(vm.exitStatus, 0, vm.console)
  t.match(vm.console, /diskio: wrote and verified 1024 blocks/)
})

t.test('a checkpoint of a VM on a host: its datastore disk switched onto a prepared snapshot while it runs on', async (t) => {
  const s = await leaseServer(t)
  const created = await fetch(`${s.url}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(s.token) }, body: JSON.stringify({ name: 'd2', size: '16M' }) })
  t.equal(created.status, 201)
  const a = await startHost(t, 'host-a', s.url)
  const r = await post(a.url, '/api/v1/vms', { name: 'dlog', guest: 'disklog', disk: 'd2', memory: 16 << 20 })
  t.equal(r.status, 201, r.body.error?.message ?? '')
  const synced = async () => Math.max(0, ...[...((await (await fetch(`${a.url}/api/v1/vms/dlog`)).json()) as { console: string }).console.matchAll(/disklog: synced (\d+)/g)].map((m) => Number(m[1])))
  for (let i = 0; i < 300 && (await synced()) < 64; i++) await sleep(50)
  const before = await synced()
  t.ok(before >= 64, `the VM logs to its disk (${before} records synced)`)
  const file = join(shmTmp(t, 'tandem-ckpt-'), 'dlog.ckpt')
  const ck = shStatus(process.execPath, [CLI, 'vm', 'checkpoint', 'dlog', '--host', a.url, '--file', file, '--json'])
  t.equal(ck.status, 0, ck.stderr)
  const sum = JSON.parse(ck.stdout) as { instructions: number; stunMs: number; disk: string; afterwards: string; bytes: number }
  t.match(sum, { disk: /^d2@ckpt-/, afterwards: 'keep' }, `the checkpoint's disk is the frozen layer ${sum.disk}`)
  t.ok(sum.stunMs < 1000, `stun ${sum.stunMs.toFixed(2)} ms, the disk's switch included (an HTTP commit to the server)`)
  const disk = (await (await fetch(`${s.url}/api/v1/disks/d2`)).json()) as { snapshots: { name: string }[]; prepared: string | null }
  t.ok(disk.snapshots.some((x) => `d2@${x.name}` === sum.disk), 'the server has the snapshot')
  t.equal(disk.prepared, null, 'nothing left prepared')
  for (let i = 0; i < 300 && (await synced()) < before + 64; i++) await sleep(50)
  t.ok((await synced()) >= before + 64, 'the VM ran on, writing to the new delta over iSCSI')
  const bad = shStatus(process.execPath, [CLI, 'vm', 'checkpoint', 'nope', '--host', a.url, '--file', file])
  t.equal(bad.status, 1)
  t.match(bad.stderr, /no VM named 'nope'/)
  t.equal((await fetch(`${a.url}/api/v1/vms/dlog`, { method: 'DELETE' })).status, 200)
  // the disk back as it was at the checkpoint, then the VM restored on the host from the file
  const snap = sum.disk.split('@')[1]
  t.equal((await fetch(`${s.url}/api/v1/disks/d2/snapshots/${snap}/revert`, { method: 'POST', headers: bearer(s.token) })).status, 200, 'd2 reverted to the checkpoint\'s snapshot')
  const back = shStatus(process.execPath, [CLI, 'vm', 'restore', file, '--host', a.url, '--name', 'dlog', '--disk', 'd2', '--json'])
  t.equal(back.status, 0, back.stderr)
  t.match(JSON.parse(back.stdout), { name: 'dlog', state: 'running', disk: 'd2', memory: 16 << 20 }, 'restored on the host, its memory size from the checkpoint')
  const atCheckpoint = before
  for (let i = 0; i < 300 && (await synced()) < atCheckpoint + 64; i++) await sleep(50)
  const restored = ((await (await fetch(`${a.url}/api/v1/vms/dlog`)).json()) as { console: string }).console
  t.ok((await synced()) >= atCheckpoint + 64, 'the restored VM logs on')
  t.notMatch(restored, /resumed after/, 'from its saved state, without booting again')
  t.equal((await fetch(`${a.url}/api/v1/vms/dlog`, { method: 'DELETE' })).status, 200)
})

import t from 'tap'
import { CLI, shStatus } from '../../helpers/peers.js'
import { leaseServer, startHost } from '../../helpers/host-process.js'
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
  const created = await fetch(`${s.url}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'd1', size: '64M' }) })
  t.equal(created.status, 201)
  const a = await startHost(t, 'host-a', s.url)
  const r = await post(a.url, '/api/v1/vms', { name: 'dvm', guest: 'diskio', disk: 'd1', memory: 32 << 20 })
  t.equal(r.status, 201, r.body.error?.message ?? '')
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:d1/0`
  t.match(r.body, { disk: 'd1', diskUri: uri, initiatorName: 'iqn.2026-11.local.tandem:vm:dvm' })
  const started = a.logs.map((l) => JSON.parse(l) as { msg: string; args?: string[] }).find((l) => l.msg === 'VM started')
  t.same(started?.args, ['vm', 'run', '--guest=diskio', `--memory=${32 << 20}`, `--disk=${uri}`, '--initiator-name=iqn.2026-11.local.tandem:vm:dvm'], 'what the host ran')
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

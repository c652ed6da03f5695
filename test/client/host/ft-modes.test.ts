import t from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, needs, run, tmp } from '../../helpers/peers.js'
import { running } from '../../helpers/host-process.js'
import { hostVm, restApi, twoHosts, until } from '../../helpers/host-pair.js'
import { kv } from '../../helpers/ft-cli.js'
import { startSwitch } from '../../helpers/switch-process.js'
import { recordsOnDisk, syncedIn } from '../../helpers/disklog.js'
import { parseStartRequest, vmRunArgs, type VmInfo } from '../../../src/client/host/index.js'
import type { FtModeOptions } from '../../../src/client/ft/mode-options.js'

const tandem = (...args: string[]) => run(process.execPath, [CLI, ...args], { timeout: 120_000 })
let token = ''
const api = restApi(() => token)

t.test('a pair\'s mode: checked once at the edge, each mode\'s options defaulted, run as vm run --ft-mode … on both sides', async (t) => {
  const host = 'http://127.0.0.1:7801'
  t.match(parseStartRequest({ name: 'v', guest: 'kvstore', ft: { host } }).ft, { mode: 'replay' })
  t.same(parseStartRequest({ name: 'v', guest: 'kvstore', ft: { host, mode: 'checkpoint' } }).ft, { host, backupReads: 'disk', mode: 'checkpoint', epochMs: 25, diff: true })
  t.same(parseStartRequest({ name: 'v', guest: 'kvstore', ft: { host, mode: 'colo', coloTimeoutMs: 50 } }).ft, { host, backupReads: 'disk', mode: 'colo', coloTimeoutMs: 50 })
  t.same(parseStartRequest({ name: 'v', guest: 'kvstore', ft: { host, mode: 'colo', coloCheckpointMs: 2000 } }).ft, { host, backupReads: 'disk', mode: 'colo', coloTimeoutMs: 300, coloCheckpointMs: 2000 }, 'a periodic resync only when asked for')
  t.same(parseStartRequest({ name: 'v', guest: 'kvstore', role: 'backup', mode: 'checkpoint', diff: false }).mode, { mode: 'checkpoint', epochMs: 25, diff: false })
  const ft = { side: 'primary' as const, address: '127.0.0.1:9', lockspace: 'iscsi://x/y/0', host: 'h-vm-v', backupReads: 'disk' as const }
  const args = (mode: FtModeOptions) => vmRunArgs({ name: 'v', guest: 'kvstore', memory: 4096, ft: { ...ft, mode } }).filter((a) => a.startsWith('--ft-mode') || a.startsWith('--ft-epoch') || a.startsWith('--no-ft') || a.startsWith('--ft-colo'))
  t.same(args({ mode: 'replay' }), ['--ft-mode=replay'])
  t.same(args({ mode: 'checkpoint', epochMs: 40, diff: false }), ['--ft-mode=checkpoint', '--ft-epoch-ms=40', '--no-ft-diff'])
  t.same(args({ mode: 'colo', coloTimeoutMs: 120 }), ['--ft-mode=colo', '--ft-colo-timeout-ms=120'])
  t.same(args({ mode: 'colo', coloTimeoutMs: 120, coloCheckpointMs: 500 }), ['--ft-mode=colo', '--ft-colo-timeout-ms=120', '--ft-colo-checkpoint-ms=500'])
})

t.test('a checkpoint pair (vm start --ft-mode) and a colo pair (REST ft.mode) through two host agents: both sides run the mode; each primary SIGKILLed under kv load, its backup live and every acknowledged key there', async (t) => {
  const dir = tmp(t, 'tandem-host-modes-')
  const { s, a, b } = await twoHosts(t)
  token = s.token
  const sw = await startSwitch(t)
  const ckMac = '02:00:00:00:00:51'
  const coMac = '02:00:00:00:00:52'
  const [ckStart, coStart] = await Promise.all([
    tandem('vm', 'start', 'ck', '--host', a.url, '--ft', b.url, '--ft-mode', 'checkpoint', '--ft-epoch-ms', '20', '--guest', 'kvstore', '--switch', sw.url, '--mac', ckMac, '--json'),
    api<VmInfo>(a.url, 'POST', '/api/v1/vms', { name: 'co', guest: 'kvstore', switch: sw.url, mac: coMac, ft: { host: b.url, mode: 'colo', coloTimeoutMs: 200 } }),
  ])
  t.equal(ckStart.status, 0, ckStart.stderr)
  t.equal(coStart.status, 201, coStart.text)
  const ck = JSON.parse(ckStart.stdout || '{}') as VmInfo
  t.match(ck, { ft: { side: 'primary', mode: 'checkpoint', epochMs: 20, diff: true } })
  t.match(coStart.body, { ft: { side: 'primary', mode: 'colo', coloTimeoutMs: 200 } })
  t.match(await hostVm(b.url, 'ck'), { state: 'running', ft: { side: 'backup', mode: 'checkpoint', epochMs: 20 } })
  t.match(await hostVm(b.url, 'co'), { state: 'running', ft: { side: 'backup', mode: 'colo', coloTimeoutMs: 200 } })
  const listed = await api<{ vms: { name: string; host: string; ft: { mode: string } | null }[] }>(s.url, 'GET', '/api/v1/vms')
  t.match(listed.body.vms.filter((v) => v.host === 'host-b').sort((x, y) => x.name.localeCompare(y.name)), [{ name: 'ck', ft: { mode: 'checkpoint' } }, { name: 'co', ft: { mode: 'colo' } }], 'the server\'s view shows each side\'s mode')

  const load = (name: string, mac: string) => {
    const acked = join(dir, `${name}.jsonl`)
    return { acked, mac, done: kv(['load', '--switch', sw.url, '--vm-mac', mac, '--keys', '30', '--rate', '200', '--duration', '2', '--log', acked, '--timeout', '20', '--json']).done }
  }
  const loads = { ck: load('ck', ckMac), co: load('co', coMac) }
  const acks = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8').split('\n').length : 0)
  t.ok(await until(30_000, async () => acks(loads.ck.acked) > 20 && acks(loads.co.acked) > 20), 'both loads are under way')
  // the modes run for real: a checkpoint primary sends epochs, a colo primary compares outputs
  const [ckA, coA] = await Promise.all([hostVm(a.url, 'ck'), hostVm(a.url, 'co')])
  t.ok((ckA.ft?.checkpoint?.epochs ?? 0) > 0, `the checkpoint primary sent ${ckA.ft?.checkpoint?.epochs} epochs of ${ckA.ft?.checkpoint?.epochMs} ms`)
  t.ok((coA.ft?.colo?.outputs ?? 0) > 0, `the colo primary compared ${coA.ft?.colo?.outputs} outputs`)
  for (const v of [ckA, coA]) process.kill(-v.pid!, 'SIGKILL')
  for (const name of ['ck', 'co'] as const) {
    t.ok(await until(30_000, async () => (await hostVm(b.url, name)).ft?.role === 'live'), `${name}: host B shows the backup live`)
    const l = await loads[name].done
    t.equal(l.code, 0, `${name}: kv load: ${l.err.slice(-300)}`)
    const c = await kv(['check', '--switch', sw.url, '--vm-mac', loads[name].mac, '--log', loads[name].acked, '--timeout', '20']).done
    t.equal(c.code, 0, `${name}: kv check: ${c.out}${c.err}`)
  }
  t.notOk(running(ckA.pid!) || running(coA.pid!), 'both primaries are gone')
})

t.test('a colo pair on a datastore disk through two host agents (FT_HOST_DISK=1): disklog appends, the primary SIGKILLed, the secondary live appends on; the disk checks clean with every synced record', { skip: process.env.FT_HOST_DISK ? (needs('qemu-img').skip ?? false) : 'set FT_HOST_DISK=1 (a heavier variant: a server, two hosts and a disk pair)' }, async (t) => {
  const dir = tmp(t, 'tandem-host-colo-disk-')
  const { s, a, b } = await twoHosts(t)
  token = s.token
  t.equal((await api(s.url, 'POST', '/api/v1/disks', { name: 'd1', size: '8M' })).status, 201)
  const start = await api<VmInfo>(a.url, 'POST', '/api/v1/vms', { name: 'cd', guest: 'disklog', disk: 'd1', memory: 16 << 20, ft: { host: b.url, mode: 'colo' } })
  t.equal(start.status, 201, start.text)
  t.ok(await until(30_000, async () => syncedIn((await hostVm(a.url, 'cd')).console) >= 16), 'the colo primary appends and syncs')
  process.kill(-start.body.pid!, 'SIGKILL')
  await until(30_000, async () => !running(start.body.pid!))
  // records the primary said were synced: outputs it released (each matched by the secondary's, or after a resync)
  const acked = syncedIn((await hostVm(a.url, 'cd')).console)
  const live = await until(30_000, async () => (await hostVm(b.url, 'cd')).ft?.role === 'live')
  t.ok(live, `host B shows the secondary live${live ? '' : `: ${(await hostVm(b.url, 'cd')).console.slice(-800)}`}`)
  t.ok(await until(30_000, async () => syncedIn((await hostVm(b.url, 'cd')).console) > acked + 16), `the live secondary syncs past ${acked}`)
  const last = syncedIn((await hostVm(b.url, 'cd')).console)
  t.equal((await api(b.url, 'DELETE', '/api/v1/vms/cd')).status, 200)
  s.child.kill('SIGTERM')
  await s.exited
  const layer = join(s.dir, 'd1', 'l-0000.vmdk')
  const check = await run('qemu-img', ['check', layer])
  t.equal(check.status, 0, `qemu-img check: ${check.stdout}${check.stderr}`)
  const raw = join(dir, 'd1.raw')
  t.equal((await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', layer, raw])).status, 0)
  const n = recordsOnDisk(raw, (8 << 20) / 512)
  t.ok(n >= Math.max(acked, last), `records 1..${n} on the disk: every one synced (${acked} by the primary, ${last} by the live secondary)`)
})

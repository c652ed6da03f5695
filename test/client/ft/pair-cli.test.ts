import t from 'tap'
import { join } from 'node:path'
import { tandem, tmp } from '../../helpers/peers.js'
import { startSwitch } from '../../helpers/switch-process.js'
import { KV_VM_MAC, initLockspace, killMatrix, kv, startPair, waitFor } from '../../helpers/ft-cli.js'

const VM_MAC = KV_VM_MAC

t.test('two processes on loopback: the backup follows; a clean end ends both identically', async (t) => {
  const dir = tmp(t, 'tandem-ft-cli-')
  const ls = initLockspace(dir)
  // a loss timeout that a loaded machine's scheduling cannot reach: this test is about the clean end
  const { backup, primary } = await startPair(t, { args: ['--guest', 'ticker', '--ft-loss-ms', '3000'], lockspace: ls })
  const [p, b] = await Promise.all([primary.exited, backup.exited])
  t.equal(p.code, 0, `primary: ${primary.stderr().slice(-400)}`)
  t.equal(b.code, 0, `backup: ${backup.stderr().slice(-400)}`)
  const ps = JSON.parse(primary.stdout())
  const bs = JSON.parse(backup.stdout())
  t.equal(bs.instructions, ps.instructions, 'same instruction count')
  t.equal(bs.stateHash, ps.stateHash, 'same final state')
  t.equal(bs.consoleHash, ps.consoleHash, 'same console')
  t.match(ps.ft, { role: 'primary', outcome: 'paired' }, JSON.stringify(ps.ft))
  t.match(bs.ft, { role: 'backup', outcome: 'paired' }, JSON.stringify(bs.ft))
  t.ok(ps.ft.logBytes > 0, `${ps.ft.logBytes} log bytes`)
  // the backup closing after the primary's BYE is the clean end, not a loss: no claim of the VM
  t.equal(ps.ft.channelEnd, 'BYE (stop)')
  t.notMatch(primary.stderr(), /backup is lost|claim/, 'the primary claimed nothing')
  const locks = JSON.parse(tandem(['lock', 'ls', '--lockspace', ls, '--json']).stdout) as { locks: { name: string; generation: number }[] }
  t.match(locks.locks.find((l) => l.name === 'vm/vm1'), { generation: 1 }, 'the VM\'s lock is still at the generation the pair started with')
})

t.test('a bad HELLO is refused with its reason; a missing lockspace is a usage error', async (t) => {
  const dir = tmp(t, 'tandem-ft-cli-')
  const ls = initLockspace(dir)
  const { backup, primary } = await startPair(t, { args: [], backupArgs: ['--guest', 'kvstore'], primaryArgs: ['--guest', 'ticker'], lockspace: ls })
  const [p, b] = await Promise.all([primary.exited, backup.exited])
  t.not(p.code, 0)
  t.match(primary.stderr(), /the FT backup refused: image: the primary runs a different guest image/)
  t.not(b.code, 0)
  t.match(backup.stderr(), /refused the FT primary/)
  const { tandem } = await import('../../helpers/peers.js')
  const r = tandem(['vm', 'run', '--guest', 'ticker', '--name', 'v', '--ft-backup', '127.0.0.1:0'])
  t.equal(r.status, 1)
  t.match(r.stderr, /--ft-backup needs --ft-lockspace/)
  // a backup still waiting for its primary ends on SIGTERM
  const { vmProcess } = await import('../../helpers/ft-cli.js')
  const waiting = vmProcess(t, ['--guest', 'kvstore', '--name', 'vm2', '--ft-lockspace', ls, '--ft-backup', '127.0.0.1:0'])
  await waitFor(waiting, /FT backup listening/)
  waiting.child.kill('SIGTERM')
  const w = await Promise.race([waiting.exited, new Promise<null>((res) => setTimeout(() => res(null), 15_000))])
  t.ok(w, 'it exits')
  t.match(waiting.stderr(), /stopped before a primary connected/)
})

t.test('SIGKILL of the primary while kv load runs: the backup goes live and every acknowledged key is there', async (t) => {
  await killMatrix(t, 1729, 2, { vmMac: VM_MAC })
})

t.test('planned switchover under kv load: the backup goes on live, no reply lost or sent twice, the primary exits 0', async (t) => {
  const dir = tmp(t, 'tandem-ft-switchover-')
  const ls = initLockspace(dir)
  const sw = await startSwitch(t)
  const control = join(dir, 'primary.sock')
  const { backup, primary } = await startPair(t, { args: ['--guest', 'kvstore', '--switch', sw.url, '--mac', VM_MAC], primaryArgs: ['--control', control], lockspace: ls })
  await waitFor(primary, /kvstore/)
  const acked = join(dir, 'acked.jsonl')
  const load = kv(['load', '--switch', sw.url, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '300', '--duration', '3', '--log', acked, '--timeout', '10', '--json'])
  await new Promise((res) => setTimeout(res, 800))
  const { tandem } = await import('../../helpers/peers.js')
  const r = tandem(['vm', 'switchover', '--control', control, '--json'])
  t.equal(r.status, 0, `switchover: ${r.stderr}`)
  const at = JSON.parse(r.stdout).instructions
  t.ok(at > 0, `handed over at instruction ${at}`)
  const p = await primary.exited
  t.equal(p.code, 0, 'the primary exits 0 after handing over')
  t.match(JSON.parse(primary.stdout()).ft, { outcome: 'handed-over' })
  await waitFor(backup, /going live/)
  const l = await load.done
  t.equal(l.code, 0, `kv load finished: ${l.err.slice(-300)}`)
  const c = await kv(['check', '--switch', sw.url, '--vm-mac', VM_MAC, '--log', acked, '--timeout', '10']).done
  t.equal(c.code, 0, `kv check on the backup, now live: ${c.out}${c.err}`)
  const notPrimary = tandem(['vm', 'switchover', '--control', join(dir, 'nope.sock')])
  t.not(notPrimary.status, 0, 'no socket: an error, not a hang')
  backup.child.kill('SIGTERM')
  await backup.exited
  t.match(JSON.parse(backup.stdout()).ft, { outcome: 'live', resent: 0 }, 'the backup sent none of the primary\'s outputs again')
})

import t from 'tap'
import { join } from 'node:path'
import { tandem, tmp } from '../../helpers/peers.js'
import { startSwitch } from '../../helpers/switch-process.js'
import { initLockspace, kv, startPair, vmProcess, waitFor } from '../../helpers/ft-cli.js'
import { requestJson } from '../../../src/client/api/http.js'

const VM_MAC = '02:00:00:00:00:43'
const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms))

t.test('redundancy restored: primary killed, backup live, a new backup from a live checkpoint; outputs held again; the restored pair survives a SIGKILL of its primary', async (t) => {
  const t0 = Date.now()
  const mark = (what: string) => process.env.FT_RESTORE_TIMES && t.comment(`${what} at ${Date.now() - t0} ms`)
  const dir = tmp(t, 'tandem-ft-restore-')
  // C is stopped for 1 s below, and must still hold a valid lease when it claims the VM after
  // that (the default lease leaves 1.5 s from a renewal: a busy machine's late renewal fenced C once)
  const ls = initLockspace(dir, ['--lease-ms', '4000'])
  const sw = await startSwitch(t)
  const sockB = join(dir, 'b.sock')
  const net = ['--guest', 'kvstore', '--switch', sw.url, '--mac', VM_MAC]
  const { backup: b, primary: a } = await startPair(t, { args: net, backupArgs: ['--control', sockB, '--no-lag-control'], lockspace: ls })
  await waitFor(a, /kvstore/)
  mark('pair up')
  const acked = join(dir, 'acked.jsonl')
  const load = (seconds: number) => kv(['load', '--switch', sw.url, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '200', '--duration', String(seconds), '--log', acked, '--timeout', '10', '--json'])

  // 1. the primary's host dies under load: B goes live and runs alone
  const l1 = load(1.5)
  await sleep(500)
  process.kill(-a.child.pid!, 'SIGKILL')
  await waitFor(b, /going live/, 10_000)
  t.equal((await l1.done).code, 0, 'kv load across the first failover')
  mark('first failover')

  // bad input first: typed errors, the VM unharmed
  const restore = (backup: unknown) => requestJson(`unix:${sockB}`, 'POST', '/api/v1/vm/ft/restore', { backup })
  await t.rejects(restore('127.0.0.1:1'), { message: /cannot reach the FT backup at 127\.0\.0\.1:1/ }, 'backup unreachable')
  await t.rejects(restore('nope'), { message: /"backup" must be HOST:PORT/ }, 'not HOST:PORT')
  const wrongImage = vmProcess(t, ['--json', '--name', 'vm1', '--ft-lockspace', ls, '--ft-loss-ms', '1500', '--guest', 'ticker', '--ft-backup', '127.0.0.1:0', '--ft-host', 'host-x'])
  const wrongPort = Number((await waitFor(wrongImage, /FT backup listening on 127\.0\.0\.1:(\d+)/))[1])
  await t.rejects(restore(`127.0.0.1:${wrongPort}`), { message: /the FT backup refused: image/ }, 'an image mismatch is refused by HELLO')
  await wrongImage.exited
  mark('bad input')

  // 2. a new backup C on another "host", started from a live checkpoint of the running VM
  const c = vmProcess(t, ['--json', '--name', 'vm1', '--ft-lockspace', ls, '--ft-loss-ms', '1500', ...net, '--ft-backup', '127.0.0.1:0', '--ft-host', 'host-c'])
  const port = Number((await waitFor(c, /FT backup listening on 127\.0\.0\.1:(\d+)/))[1])
  mark('C listening')
  const r = tandem(['vm', 'ft-restore', '--control', sockB, '--backup', `127.0.0.1:${port}`, '--json'])
  t.equal(r.status, 0, `ft-restore: ${r.stderr}`)
  mark('restored')
  const summary = JSON.parse(r.stdout)
  t.ok(summary.precopyPages > 0 && summary.precopyBytes > summary.precopyPages * 4096, `pre-copy: ${summary.precopyPages} pages (${summary.precopyBytes} bytes) in ${summary.precopyRounds} rounds while the VM ran; then ${summary.pages} dirty pages`)
  t.ok(summary.pauseMs < 500, `pause ${summary.pauseMs} ms (goal < 500 ms)`)
  await waitFor(c, /received the state of vm\/vm1 at instruction (\d+)/)
  await t.rejects(restore(`127.0.0.1:${port}`), { message: /already protected/ }, 'a protected VM is not restored twice')
  const st = await requestJson<{ ft: { protected: boolean; restores: number } }>(`unix:${sockB}`, 'GET', '/api/v1/vm')
  t.match(st.ft, { protected: true, restores: 1 }, 'B reports itself protected')

  // 3. outputs are held again: with C stopped (no acks, within the loss timeout), B's replies wait
  // (B runs without lag control: its throttle would slow replies too, and this is about the gate)
  const { statSync } = await import('node:fs')
  const size = () => statSync(acked).size
  const before = size()
  const l2 = load(3)
  // the load is under way (SETs acknowledged) before C stops
  for (let i = 0; i < 200 && size() === before; i++) await sleep(25)
  process.kill(-c.child.pid!, 'SIGSTOP')
  await sleep(1000)
  process.kill(-c.child.pid!, 'SIGCONT')
  const r2 = await l2.done
  t.equal(r2.code, 0, `kv load while C was stopped: ${r2.err.slice(-300)}`)
  const rtt = JSON.parse(r2.out).rttMs
  mark('held probe')
  t.ok(rtt.max >= 500, `a reply waited for C's ack: max RTT ${rtt.max} ms with C stopped for 1 s (p50 ${rtt.p50} ms)`)

  // 4. the restored pair's primary (B) dies under load: C goes live, no acknowledged SET lost
  const l3 = load(1.5)
  await sleep(500)
  process.kill(-b.child.pid!, 'SIGKILL')
  await waitFor(c, /going live/, 10_000)
  t.equal((await l3.done).code, 0, 'kv load across the second failover')
  mark('second failover')
  const check = await kv(['check', '--switch', sw.url, '--vm-mac', VM_MAC, '--log', acked, '--timeout', '10']).done
  t.equal(check.code, 0, `kv check on C: ${check.out}${check.err}`)
  mark('checked')
  c.child.kill('SIGTERM')
  await c.exited
  t.match(JSON.parse(c.stdout()).ft, { role: 'backup', outcome: 'live' })
  t.comment(`restore: pre-copy ${summary.precopyBytes} bytes, pause ${summary.pauseMs.toFixed(2)} ms, then ${summary.stateBytes} bytes; outputs held ${Math.round(summary.protectedMs)} ms from the pause to the first ACK`)
})

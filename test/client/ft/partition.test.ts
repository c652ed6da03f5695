import t, { type Test } from 'tap'
import { join } from 'node:path'
import { FaultLink } from '../../../src/client/ft/fault-link.js'
import { UdpSwitch } from '../../../src/client/net/udp-switch.js'
import { rng, run, tmp } from '../../helpers/peers.js'
import { createTestNet, netnsSkip } from '../../helpers/netns.js'
import { initLockspace, kv, vmProcess, waitFor, type VmProcess } from '../../helpers/ft-cli.js'

/**
 * Issue 17 "Done means" 2, ft-architecture §2 (d) test 3: a partition between the two hosts of a
 * pair while the storage (the lockspace) stays reachable. Both sides lose the channel, both claim
 * vm/<name> by one compare-and-write: exactly one ends live, the other halts (exit 123), and the
 * survivor answers every key the client saw acknowledged.
 */

const VM_MAC = '02:00:00:00:00:42'
/** a seeded moment of the 3 s load */
const partitionAt = (r: () => number) => 300 + Math.floor((r() / 2 ** 32) * 1500)
const FT_HALTED = 123

interface Where {
  /** the backup's listening address, and how each side's process is started */
  backupHost: string
  wrapPrimary?: string[]
  wrapBackup?: string[]
  /** the primary's address of the backup (after the backup printed its port) */
  primaryTarget(port: number): Promise<{ host: string; port: number }>
  partition(): Promise<void>
  switchHost: string
}

/** One pair, partitioned `at` ms into a kv load. */
async function partitionRun(t: Test, where: Where, at: number, i: number): Promise<void> {
  const dir = tmp(t, 'tandem-ft-part-')
  const ls = initLockspace(dir)
  const sw = await UdpSwitch.listen({ host: where.switchHost, port: 0 })
  t.teardown(() => sw.close())
  const swUrl = `udp:${where.switchHost}:${sw.address.port}`
  // a loss timeout a loaded machine's scheduling does not reach by itself (load 8 on 2 cores here)
  const common = ['--json', '--name', 'vm1', '--ft-lockspace', ls, '--ft-loss-ms', '1000', '--guest', 'kvstore', '--switch', swUrl, '--mac', VM_MAC]
  const backup = vmProcess(t, [...common, '--ft-backup', `${where.backupHost}:0`, '--ft-host', 'host-b'], { wrap: where.wrapBackup })
  const port = Number((await waitFor(backup, /FT backup listening on [^\s]+:(\d+)/))[1])
  const target = await where.primaryTarget(port)
  const primary = vmProcess(t, [...common, '--ft-primary', `${target.host}:${target.port}`, '--ft-host', 'host-p'], { wrap: where.wrapPrimary })
  await waitFor(primary, /kvstore/)
  const acked = join(dir, 'acked.jsonl')
  const load = kv(['load', '--switch', swUrl, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '300', '--duration', '3', '--log', acked, '--timeout', '10', '--json'])
  await new Promise((res) => setTimeout(res, at))
  await where.partition()
  const t0 = Date.now()
  const first = await Promise.race([
    primary.exited.then((x) => ({ side: 'primary' as const, ...x })),
    backup.exited.then((x) => ({ side: 'backup' as const, ...x })),
    new Promise<null>((res) => setTimeout(() => res(null), 15_000)),
  ])
  t.ok(first, `run ${i}: one side ended within 15 s of the partition at ${at} ms`)
  if (!first) {
    t.comment(`primary: ${primary.stderr().slice(-600)}${primary.stdout()}\nbackup: ${backup.stderr().slice(-600)}${backup.stdout()}`)
    return
  }
  const loser: VmProcess = first.side === 'primary' ? primary : backup
  const survivor: VmProcess = first.side === 'primary' ? backup : primary
  const haltedMs = Date.now() - t0
  t.equal(first.code, FT_HALTED, `run ${i}: the ${first.side} halted (exit 123) ${haltedMs} ms after the partition: ${loser.stderr().slice(-300)}`)
  // loss after 1 s of silence, one compare-and-write, the exit: nothing waits longer
  t.ok(haltedMs < 5000, `run ${i}: the halted side exited within 5 s (${haltedMs} ms)`)
  const ls0 = JSON.parse(loser.stdout() || '{}')
  t.match(ls0.ft, { outcome: 'halted' }, `run ${i}: the ${first.side}'s ft outcome says halted`)
  t.match(survivor.stderr(), /won vm\/vm1/, `run ${i}: the other side won the claim`)
  t.equal(survivor.child.exitCode, null, `run ${i}: the survivor still runs`)
  const l = await load.done
  t.equal(l.code, 0, `run ${i}: kv load finished: ${l.err.slice(-300)}`)
  const c = await kv(['check', '--switch', swUrl, '--vm-mac', VM_MAC, '--log', acked, '--timeout', '10']).done
  t.equal(c.code, 0, `run ${i}: kv check against the surviving ${first.side === 'primary' ? 'backup' : 'primary'}: ${c.out}${c.err}`)
  survivor.child.kill('SIGTERM')
  await survivor.exited
  const ss = JSON.parse(survivor.stdout() || '{}')
  t.match(ss.ft, { outcome: first.side === 'primary' ? 'live' : 'alone' }, `run ${i}: the survivor's outcome`)
  t.comment(`run ${i}: partition at ${at} ms; ${first.side} halted, the ${first.side === 'primary' ? 'backup went live' : 'primary runs alone'}; ${JSON.parse(l.out || '{}').acked ?? '?'} SETs acknowledged`)
}

t.test('a FaultLink blackhole between primary and backup, the lockspace reachable: exactly one side lives, every acknowledged key kept', async (t) => {
  const runs = Number(process.env.FT_PARTITION_RUNS ?? 2)
  const r = rng(4242)
  for (let i = 0; i < runs; i++) {
    let link: FaultLink | undefined
    await partitionRun(
      t,
      {
        backupHost: '127.0.0.1',
        switchHost: '127.0.0.1',
        primaryTarget: async (port) => {
          link = await FaultLink.start({ target: { host: '127.0.0.1', port } })
          t.teardown(() => link!.close())
          return { host: '127.0.0.1', port: link.port }
        },
        partition: async () => link!.blackhole(),
      },
      partitionAt(r),
      i,
    )
  }
})

t.test('in network namespaces: blackhole routes between the two hosts, the switch and the lockspace reachable', { skip: netnsSkip() }, async (t) => {
  const runs = Number(process.env.FT_PARTITION_NETNS_RUNS ?? 1)
  const r = rng(777)
  for (let i = 0; i < runs; i++) {
    const net = await createTestNet(t, ['hp', 'hb'])
    const { hp, hb } = net.nodes
    const ip = async (args: string[]) => {
      const r = await run('ip', args)
      if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr}`)
    }
    await partitionRun(
      t,
      {
        backupHost: hb.addr,
        switchHost: net.rootAddr,
        wrapPrimary: net.wrap('hp'),
        wrapBackup: net.wrap('hb'),
        primaryTarget: async (port) => ({ host: hb.addr, port }),
        // a /32 blackhole in each host's namespace: the pair's path is cut, each still reaches the switch
        partition: async () => {
          await ip(['-n', hp.ns, 'route', 'add', 'blackhole', `${hb.addr}/32`])
          await ip(['-n', hb.ns, 'route', 'add', 'blackhole', `${hp.addr}/32`])
        },
      },
      partitionAt(r),
      i,
    )
    await net.destroy()
  }
})

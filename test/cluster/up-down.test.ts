import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, run, tmp } from '../helpers/peers.js'

const netnsList = async () => (process.getuid?.() === 0 ? (await run('ip', ['netns', 'list'])).stdout.split('\n').map((l) => l.split(' ')[0]).filter(Boolean) : [])
const reachable = (url: string) => fetch(`${url}/api/v1/vms`, { signal: AbortSignal.timeout(2000) }).then(() => true, () => false)
const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function upCluster(t: Test, dir: string) {
  const file = join(dir, 'two.json')
  writeFileSync(file, JSON.stringify({ name: 'two', hosts: [{ name: 'h1' }, { name: 'h2' }], workloads: [{ kind: 'lock', lock: 'l1', durationMs: 1000 }] }))
  const child = spawn(process.execPath, [CLI, 'cluster', 'up', file, '--dir', join(dir, 'c')], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  let err = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (err += d))
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)))
  for (const end = Date.now() + 90_000; !out.includes('\n') && Date.now() < end && child.exitCode === null; ) await new Promise((r) => setTimeout(r, 100))
  const state = JSON.parse(readFileSync(join(dir, 'c', 'cluster.json'), 'utf8')) as { pid: number; network: string; namespaces: string[]; server: string; hosts: Record<string, string> }
  t.match(out, /"hosts":\{"h[12]":"http:/, "its URLs on stdout")
  t.ok(await reachable(state.hosts.h1), 'host h1 answers')
  const during = state.namespaces
  if (state.network === 'netns') t.same((await netnsList()).filter((n) => during.includes(n)).sort(), [...during].sort(), `its namespaces exist: ${during.join(', ')}`)
  t.equal(during.length, state.network === 'netns' ? 4 : 0, 'a bridge namespace and one per node')
  return { file, child, exited, state, during, err: () => err }
}

t.test('cluster up, then cluster down SCENARIO --dir (SIGTERM, the path of SIGINT too): every process ends and the namespaces are removed', { timeout: 120_000, skip: process.env.CLUSTER_FULL === '1' ? undefined : 'the CI budget of the harness goes to harness.test.ts: CLUSTER_FULL=1 runs it (~20 s on a quiet machine)' }, async (t) => {
  const dir = tmp(t, 'tandem-cluster-down-')
  const u = await upCluster(t, dir)
  const d = await run(process.execPath, [CLI, 'cluster', 'down', u.file, '--dir', join(dir, 'c')], { timeout: 90_000 })
  t.equal(d.status, 0, d.stderr)
  t.match(d.stderr, /two stopped/)
  t.equal(await u.exited, 0)
  t.notOk(alive(u.state.pid), 'cluster up has ended')
  t.notOk(await reachable(u.state.hosts.h2), 'host h2 is gone')
  const left = await netnsList()
  t.same(u.during.filter((n) => left.includes(n)), [], 'no namespace of the cluster is left')
  const again = await run(process.execPath, [CLI, 'cluster', 'down', u.file, '--dir', join(dir, 'c')])
  t.match(again.stderr, /two was not running/, 'down again: nothing to stop')
})

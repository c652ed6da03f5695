import { Command } from 'commander'
import { resolve } from 'node:path'
import { StorageError } from '../../disk-formats/errors.js'
import { loadLazy } from './lazy.js'

type Harness = typeof import('../cluster/index.js')
const harness = () => loadLazy<Harness>('../cluster/index.js')

const integer = (v: string, option: string, min: number, max: number) => {
  const n = Number(v)
  if (!(Number.isInteger(n) && n >= min && n <= max)) throw new StorageError('InvalidArgument', `invalid ${option} '${v}' (an integer from ${min} to ${max})`)
  return n
}

/**
 * SIGINT/SIGTERM while a cluster runs: every cluster still up is stopped and its network removed
 * (then exit 130); a second signal exits at once.
 */
function onSignals(h: Harness, ac: AbortController, exitOnSignal: boolean): void {
  let n = 0
  const stop = (sig: string) => {
    ac.abort()
    if (n++ > 0) process.exit(130)
    if (!exitOnSignal) return
    process.stderr.write(`tandem cluster: ${sig}: stopping the cluster and removing its network\n`)
    void Promise.allSettled([...h.pendingCleanups].map((f) => f())).then(() => process.exit(130))
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
}

const defaultDir = (name: string) => resolve(`cluster-${name}`)

/** `tandem cluster`: the integration harness (src/client/cluster; scenarios/SCENARIOS.md). */
export function clusterCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  const cluster = new Command('cluster').description('an integration harness: start a server, a switch, hosts and VMs from a scenario file, drive workloads, inject faults, check that nothing was lost, report (scenarios/SCENARIOS.md)')
  cluster
    .command('run')
    .description('run a scenario K times (seeds N..N+K-1): cluster up, workloads, the fault timeline, checkers, cluster down; an HTML report per run and JUnit XML. Exit 0 when every run passed, 1 otherwise (each failing run prints its seed, its timeline and the command that replays it)')
    .argument('<scenario>', 'the scenario file (.yaml/.yml: YAML, else JSON; tandem cluster schema prints its JSON Schema)')
    .option('--seed <n>', 'the first run\'s seed (fault times drawn from [min, max], kv keys)', '1')
    .option('--runs <k>', 'how many runs', '1')
    .option('--report <dir>', 'where the reports go (DIR/index.html, DIR/junit.xml, DIR/run-K-seed-S/report.html)', 'cluster-report')
    .action((file: string, o) =>
      run(async () => {
        const seed = integer(o.seed, '--seed', 0, 2 ** 31)
        const runs = integer(o.runs, '--runs', 1, 10_000)
        const h = await harness()
        const s = h.loadScenario(file)
        const ac = new AbortController()
        onSignals(h, ac, true)
        const reports = await h.runScenario(s, { file, seed, runs, reportDir: resolve(o.report), tandem: [process.execPath, process.argv[1]], signal: ac.signal })
        return reports.every((r) => r.ok) ? 0 : 1
      }).then(() => process.exit()),
    )
  cluster
    .command('up')
    .description('start a scenario\'s cluster (server, switch, hosts, VMs; no workloads or faults) and keep it up until SIGINT/SIGTERM or tandem cluster down; prints its URLs as JSON and writes them to DIR/cluster.json')
    .argument('<scenario>', 'the scenario file')
    .option('--dir <dir>', 'its datastore, logs and cluster.json (default ./cluster-<name>)')
    .action((file: string, o) =>
      run(async () => {
        const h = await harness()
        const s = h.loadScenario(file)
        const ac = new AbortController()
        onSignals(h, ac, false)
        await h.clusterUp(s, { dir: o.dir ? resolve(o.dir) : defaultDir(s.name), tandem: [process.execPath, process.argv[1]], signal: ac.signal })
      }).then(() => process.exit()),
    )
  cluster
    .command('down')
    .description('stop the cluster tandem cluster up started for this scenario (its processes, its network)')
    .argument('<scenario>', 'the scenario file')
    .option('--dir <dir>', 'the cluster up --dir (default ./cluster-<name>)')
    .action((file: string, o) =>
      run(async () => {
        const h = await harness()
        const s = h.loadScenario(file)
        const dir = o.dir ? resolve(o.dir) : defaultDir(s.name)
        const stopped = await h.clusterDown(dir)
        process.stderr.write(stopped ? `tandem cluster: ${s.name} stopped\n` : `tandem cluster: ${s.name} was not running\n`)
      }),
    )
  cluster
    .command('schema')
    .description('print the scenario file\'s JSON Schema')
    .action(() =>
      run(async () => {
        process.stdout.write(JSON.stringify((await harness()).SCENARIO_SCHEMA, null, 2) + '\n')
      }),
    )
  return cluster
}

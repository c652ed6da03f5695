/**
 * `npm run bench`: Tandem beside its peers on the same work, alternating, in one run.
 * Prints medians and ratios (Tandem time / peer time: below 1.0 means Tandem is faster).
 * Options (env): BENCH_DIR (default ./bench-work), BENCH_REPS (default 3), BENCH_ONLY=disk|nbd|iscsi|initiator|locks|vm|snapshot|vm-disk|cpu-limit|checkpoint|checkpoint-file|ft|ft-checkpoint|ft-colo|ft-restore|dos,
 * BENCH_FIO_SECONDS (default 4), BENCH_PORT_OFFSET (default 0: ports 10900 and 13900, tgtd control 39). For throughput (MiB/s, IOPS) the ratio is Tandem/peer: above 1 is faster.
 * Every row also shows CPU time (user + system) beside wall time: for a command, the command's own
 * (its process and the children it waited for); for a server, the server process's (all its
 * threads) while the item ran, per unit of work. The CPU ratio is Tandem/peer: below 1 uses less.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import { copyFileSync, mkdirSync, rmSync, existsSync, readdirSync, readFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { cpus, loadavg } from 'node:os'
import { fileURLToPath } from 'node:url'
import { createVmdk, openVmdk } from '../../src/disk-formats/index.js'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const CLI = join(ROOT, 'dist', 'src', 'client', 'cli', 'tandem.cjs')
const RSS = join(ROOT, 'dist', 'scripts', 'bench', 'rss.js')
const DIR = process.env.BENCH_DIR ?? join(ROOT, 'bench-work')
const REPS = Number(process.env.BENCH_REPS ?? 3)

function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0
}

/** Clock ticks per second of /proc's CPU times (USER_HZ: 100 on every Linux this runs on). */
const TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100

/**
 * CPU seconds (user + system) from a /proc/…/stat line: `self` the process's own (fields 14, 15),
 * or the children it has waited for (cutime, cstime: 16, 17). The command name (field 2) may
 * hold spaces, so fields are counted after its closing parenthesis.
 */
function cpuOf(pid: number | 'self', which: 'self' | 'children'): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ') // f[0] is field 3
  const i = which === 'self' ? 11 : 13
  return (Number(f[i]) + Number(f[i + 1])) / TICKS
}

/** Runs a command to completion: its wall time and its CPU time (from wait4's accounting). */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): { seconds: number; cpu: number; stderr: string } {
  const c0 = cpuOf('self', 'children')
  const t0 = process.hrtime.bigint()
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'], env })
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9
  const cpu = cpuOf('self', 'children') - c0
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`)
  return { seconds, cpu, stderr: r.stderr }
}

/**
 * The environment the `tandem` command runs in: this one without NODE_EXTRA_CA_CERTS. Node
 * reads and parses that file of CA certificates when it starts, before any JavaScript runs
 * (Node 20: ~36 ms here, more than half of `node -e 0`), and the sandbox this bench was written
 * in sets it for its TLS proxy; a stock machine does not, and `tandem disk` opens no TLS
 * connection. `nodeStartup()` prints what it costs where the bench runs; BENCH_KEEP_NODE_ENV=1
 * keeps the variable.
 */
const TANDEM_ENV = process.env.BENCH_KEEP_NODE_ENV === '1' ? process.env : { ...process.env, NODE_EXTRA_CA_CERTS: undefined }
const tandem = (...args: string[]) => run(process.execPath, [CLI, ...args], TANDEM_ENV)

/** Node's own start-up (`node -e 0`) with the environment as it is and as `tandem` gets it. */
function nodeStartup(): void {
  const ms = (env: NodeJS.ProcessEnv) => median(Array.from({ length: 11 }, () => run(process.execPath, ['-e', '0'], env).seconds)) * 1000
  const here = ms(process.env)
  const tandemEnv = ms(TANDEM_ENV)
  const note = process.env.NODE_EXTRA_CA_CERTS && TANDEM_ENV !== process.env ? ' (NODE_EXTRA_CA_CERTS removed for the tandem runs; BENCH_KEEP_NODE_ENV=1 keeps it)' : ''
  console.log(`node start-up (node -e 0): ${here.toFixed(0)} ms in this environment, ${tandemEnv.toFixed(0)} ms as tandem runs${note}`)
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

/** Median and spread (min–max) of a series, for printing. */
const spread = (xs: number[], digits: number) => `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}–${Math.max(...xs).toFixed(digits)}]`

type Timed = { seconds: number; cpu: number }

/**
 * Runs `setup` then each side REPS times, alternating which goes first. Prints wall and CPU
 * medians with their spread, and both ratios (Tandem/peer: below 1 is faster, or uses less CPU).
 */
function compare(name: string, peerName: string, setup: () => void, ours: () => Timed, theirs: () => Timed) {
  const a: Timed[] = []
  const b: Timed[] = []
  for (let i = 0; i < REPS; i++) {
    const order = i % 2 === 0 ? ['t', 'p'] : ['p', 't']
    for (const side of order) {
      setup()
      if (side === 't') a.push(ours())
      else b.push(theirs())
    }
  }
  const wall = (xs: Timed[]) => xs.map((x) => x.seconds)
  const cpu = (xs: Timed[]) => xs.map((x) => x.cpu)
  console.log(name)
  console.log(`  wall  tandem ${spread(wall(a), 3)} s   ${peerName} ${spread(wall(b), 3)} s   ratio ${(median(wall(a)) / median(wall(b))).toFixed(2)}x`)
  console.log(`  cpu   tandem ${spread(cpu(a), 2)} s   ${peerName} ${spread(cpu(b), 2)} s   ratio ${(median(cpu(a)) / median(cpu(b))).toFixed(2)}x   (user+sys)`)
}

async function diskBench() {
  if (!have('qemu-img') || !have('qemu-io')) {
    console.log('disk: SKIP (qemu-img/qemu-io not installed: scripts/install-peers.sh)')
    return
  }
  const d = join(DIR, 'disk')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  // A 512 MiB chain: 256 MiB of data in the base, a delta of 256 scattered 64 KiB writes.
  const base = join(d, 'base.vmdk')
  const delta = join(d, 'delta.vmdk')
  await createVmdk(base, { size: 512 << 20 })
  const b = await openVmdk(base)
  const chunk = Buffer.alloc(4 << 20)
  for (let o = 0; o < 256 << 20; o += chunk.length) {
    for (let i = 0; i < chunk.length; i += 8) chunk.writeDoubleLE(Math.random(), i)
    await b.write(o, chunk)
  }
  const bcid = b.cid // the CID the writes gave it
  await b.close()
  await createVmdk(delta, { size: 512 << 20, parent: { path: base, cid: bcid } })
  const dl = await openVmdk(delta)
  const g = Buffer.alloc(65536)
  for (let i = 0; i < 256; i++) {
    for (let k = 0; k < g.length; k += 8) g.writeDoubleLE(Math.random(), k)
    await dl.write(Math.floor(Math.random() * 8192) * 65536, g)
  }
  await dl.close()
  const outRaw = join(d, 'out.raw')
  nodeStartup()
  // Before every run (untimed): the previous output removed, the page cache written back, the
  // inputs dropped from it and read in again (`warm`), as for the servers below.
  compare('512 MiB chain -> raw (convert)', 'qemu-img', () => (rmSync(outRaw, { force: true }), warm([base, delta])),
    () => tandem('disk', 'convert', '-O', 'raw', delta, outRaw),
    () => run('qemu-img', ['convert', '-O', 'raw', delta, outRaw]))
  // 256 MiB raw -> VMDK
  const raw = join(d, 'src.raw')
  run('qemu-img', ['convert', '-O', 'raw', base, join(d, 'full.raw')])
  spawnSync('truncate', ['-s', String(256 << 20), join(d, 'full.raw')])
  copyFileSync(join(d, 'full.raw'), raw)
  const outV = join(d, 'out.vmdk')
  compare('256 MiB raw -> vmdk (convert)', 'qemu-img', () => (rmSync(outV, { force: true }), warm([raw])),
    () => tandem('disk', 'convert', '-f', 'raw', '-O', 'vmdk', raw, outV),
    () => run('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', raw, outV]))
  // commit of the delta into the base (fresh copies each time)
  const cdesc = () => {
    copyFileSync(base, join(d, 'c', 'base.vmdk'))
    copyFileSync(delta, join(d, 'c', 'delta.vmdk'))
    warm([join(d, 'c', 'base.vmdk'), join(d, 'c', 'delta.vmdk')])
  }
  mkdirSync(join(d, 'c'), { recursive: true })
  compare('commit of 256 x 64 KiB delta', 'qemu-img', cdesc,
    () => tandem('disk', 'commit', join(d, 'c', 'delta.vmdk')),
    () => run('qemu-img', ['commit', join(d, 'c', 'delta.vmdk')]))
  // Peak memory: convert of a 10 GiB sparse disk with 512 MiB of data spread over it.
  const big = join(d, 'big.vmdk')
  await createVmdk(big, { size: 10 * 2 ** 30 })
  const bg = await openVmdk(big)
  const piece = Buffer.alloc(1 << 20)
  for (let i = 0; i < 512; i++) {
    for (let k = 0; k < piece.length; k += 8) piece.writeDoubleLE(Math.random(), k)
    await bg.write(i * 20 * (1 << 20), piece)
  }
  await bg.close()
  const bigOut = join(d, 'big-out.vmdk')
  rmSync(bigOut, { force: true })
  const r = run(process.execPath, ['--import', RSS, CLI, 'disk', 'convert', big, bigOut], TANDEM_ENV)
  const kb = Number(/TANDEM_MAXRSS_KB=(\d+)/.exec(r.stderr)?.[1] ?? 0)
  console.log(`${'10 GiB sparse (512 MiB data) convert'.padEnd(44)} tandem ${r.seconds.toFixed(3)} s (cpu ${r.cpu.toFixed(2)} s), peak RSS ${(kb / 1024).toFixed(0)} MiB (target < 200 MiB)`)
  rmSync(d, { recursive: true, force: true })
}

// ---- NBD: Tandem vs qemu-nbd on the same VMDK, nbdkit's file plugin on raw as a reference ----

interface Served {
  uri: string
  /** the server's process, whose CPU time is measured */
  pid: number
  stop(): Promise<void>
}

/** Fixed so peers' command lines stay simple; BENCH_PORT_OFFSET moves them (another bench on the machine). */
const PORT_OFFSET = Number(process.env.BENCH_PORT_OFFSET ?? 0)
const NBD_PORT = 10900 + PORT_OFFSET
const ISCSI_PORT = 13900 + PORT_OFFSET

function waitExit(child: ChildProcess): Promise<void> {
  return new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())))
}

async function serveTandem(ds: string): Promise<Served> {
  const child = spawn(process.execPath, [CLI, 'serve', '--datastore', ds, '--nbd-port', String(NBD_PORT), '--iscsi-port', String(ISCSI_PORT), '--http-port', '0', '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'inherit'] })
  // ready when the NBD port answers
  for (let i = 0; i < 100; i++) {
    if (spawnSync('nbdinfo', ['--size', `nbd://127.0.0.1:${NBD_PORT}/bench`]).status === 0) break
    await new Promise((r) => setTimeout(r, 100))
  }
  void createInterface
  return {
    uri: `nbd://127.0.0.1:${NBD_PORT}/bench`,
    pid: child.pid!,
    stop: async () => {
      child.kill('SIGTERM')
      await waitExit(child)
    },
  }
}

async function servePeer(cmd: string, args: string[], uri: string, pidfile?: string): Promise<Served> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] })
  for (let i = 0; i < 100; i++) {
    if (spawnSync('nbdinfo', ['--size', uri]).status === 0) break
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    uri,
    // nbdkit -f stays in the foreground: the process spawned is the server
    pid: child.pid!,
    stop: async () => {
      if (pidfile && existsSync(pidfile)) {
        const pid = Number(spawnSync('cat', [pidfile], { encoding: 'utf8' }).stdout.trim())
        try {
          process.kill(pid, 'SIGTERM')
        } catch {
          /* gone */
        }
        for (let i = 0; i < 50 && spawnSync('kill', ['-0', String(pid)]).status === 0; i++) await new Promise((r) => setTimeout(r, 50))
      }
      child.kill('SIGTERM')
      await waitExit(child)
    },
  }
}

/** One measurement: the rate, and the work done (MiB or I/Os) to put the server's CPU time over. */
type Result = { rate: number; work: number }
type Work = [label: string, unit: 'MiB/s' | 'IOPS', fn: (uri: string) => Result]
/** A measurement with the server's CPU seconds over the item. */
type Measured = Result & { cpu: number }

/** A server under test: its name, how to start it, and the files it serves (or reads from). */
type Side = [name: string, start: () => Promise<Served>, files: string[]]

/**
 * Writes the page cache back, drops the cached pages of `files` and reads them in again, so that
 * every side starts every item with its files fully cached in the same shape. Without this the
 * sides are not comparable: this machine pages out file cache idle for a minute (DAMON), and
 * small overwrites cost several times more in large page-cache folios (left by big sequential
 * writes or readahead) than in small ones (left by random I/O): a file's history decides.
 */
function warm(files: string[]): void {
  spawnSync('sync')
  for (const f of files) {
    spawnSync('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none'])
    spawnSync('dd', [`if=${f}`, 'of=/dev/null', 'bs=1M', 'status=none'])
  }
}

/**
 * Starts each server in turn (REPS times, alternating which goes first), runs every item of
 * `work` against it, stops it; returns label → server name → measurements. Before each item
 * (untimed) the page cache is written back and the side's files are dropped from it and read in
 * again (`warm`), so no item pays for the previous one's writes or finds its data paged out.
 */
async function serveAndMeasure(sides: Side[], work: Work[]): Promise<Record<string, Record<string, Measured[]>>> {
  const results: Record<string, Record<string, Measured[]>> = {}
  for (let rep = 0; rep < REPS; rep++) {
    const order = rep % 2 === 0 ? sides : [...sides].reverse()
    for (const [name, start, files] of order) {
      const srv = await start()
      try {
        for (const [label, , fn] of work) {
          warm(files)
          const c0 = cpuOf(srv.pid, 'self')
          const r = fn(srv.uri)
          ;((results[label] ??= {})[name] ??= []).push({ ...r, cpu: cpuOf(srv.pid, 'self') - c0 })
        }
      } finally {
        await srv.stop()
      }
    }
  }
  return results
}

function fio(uri: string, rw: string, qd: number, seconds: number): Result {
  const r = spawnSync('fio', ['--name=b', '--ioengine=nbd', `--uri=${uri}`, `--rw=${rw}`, '--bs=4k', `--iodepth=${qd}`, `--runtime=${seconds}`, '--time_based', '--output-format=json', '--size=1g'], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`fio failed: ${r.stderr}`)
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')))
  const s = rw.includes('read') ? j.jobs[0].read : j.jobs[0].write
  return { rate: s.iops, work: s.total_ios }
}

/** nbdcopy of 1 GiB: MiB/s. */
function nbdcopy(src: string, dst: string): Result {
  return { rate: 1024 / run('nbdcopy', [src, dst]).seconds, work: 1024 }
}

/** CPU per unit of work: µs per I/O, or ms per GiB. */
const cpuPer = (unit: 'MiB/s' | 'IOPS', ms: Measured[]) => {
  const xs = ms.map((m) => (m.cpu / m.work) * (unit === 'IOPS' ? 1e6 : 1024 * 1e3))
  return { text: `${spread(xs, 0)} ${unit === 'IOPS' ? 'µs/IO' : 'ms/GiB'}`, median: median(xs) }
}
const rates = (ms: Measured[]) => ms.map((m) => m.rate)

/**
 * A 1 GiB disk, fully written with random data, in a fresh Tandem datastore under `d`; the peers
 * serve the very same VMDK file (`vmdk`) or a raw copy of it (`raw`); `src` is another raw copy.
 */
async function benchDisk(d: string): Promise<{ ds: string; vmdk: string; raw: string; src: string }> {
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  const ds = join(d, 'ds')
  const SIZE = 1 << 30
  const { Datastore } = await import('../../src/server/datastore/index.js')
  const store = await Datastore.open(ds)
  await store.createDisk('bench', SIZE)
  const h = await store.openExport('bench')
  const buf = Buffer.alloc(8 << 20)
  for (let o = 0; o < SIZE; o += buf.length) {
    for (let i = 0; i < buf.length; i += 8) buf.writeDoubleLE(Math.random(), i)
    await h.device.write(o, buf)
  }
  await h.release()
  await store.close()
  const vmdk = join(ds, 'bench', 'l-0000.vmdk')
  const raw = join(d, 'bench.raw')
  run('qemu-img', ['convert', '-O', 'raw', vmdk, raw])
  const src = join(d, 'src.raw')
  run('qemu-img', ['convert', '-O', 'raw', vmdk, src])
  return { ds, vmdk, raw, src }
}

async function nbdBench() {
  for (const tool of ['qemu-nbd', 'nbdcopy', 'nbdinfo', 'fio']) {
    if (!have(tool)) {
      console.log(`nbd: SKIP (${tool} not installed: scripts/install-peers.sh)`)
      return
    }
  }
  const d = join(DIR, 'nbd')
  const { ds, vmdk, raw, src } = await benchDisk(d)
  const qemuUri = `nbd://127.0.0.1:${NBD_PORT}/bench`
  const sides: Side[] = [
    ['tandem', () => serveTandem(ds), [vmdk, src]],
    ['qemu-nbd', () => servePeer('qemu-nbd', ['-f', 'vmdk', '-x', 'bench', '-b', '127.0.0.1', '-p', String(NBD_PORT), '--persistent', '--shared=8', '--cache=writeback', vmdk], qemuUri), [vmdk, src]],
  ]
  if (have('nbdkit')) {
    const pid = join(d, 'nbdkit.pid')
    sides.push(['nbdkit-file(raw)', () => servePeer('nbdkit', ['-f', '-P', pid, '-i', '127.0.0.1', '-p', String(NBD_PORT), '-e', 'bench', 'file', raw], qemuUri, pid), [raw, src]])
  }
  const secs = Number(process.env.BENCH_FIO_SECONDS ?? 4)
  const work: Work[] = [
    ['1 GiB sequential read (nbdcopy)', 'MiB/s', (u) => nbdcopy(u, 'null:')],
    ['1 GiB sequential write (nbdcopy)', 'MiB/s', (u) => nbdcopy(src, u)],
    ['4k random read QD1 (fio nbd)', 'IOPS', (u) => fio(u, 'randread', 1, secs)],
    ['4k random read QD32 (fio nbd)', 'IOPS', (u) => fio(u, 'randread', 32, secs)],
    ['4k random write QD1 (fio nbd)', 'IOPS', (u) => fio(u, 'randwrite', 1, secs)],
    ['4k random write QD32 (fio nbd)', 'IOPS', (u) => fio(u, 'randwrite', 32, secs)],
  ]
  const results = await serveAndMeasure(sides, work)
  for (const [label, unit] of work) {
    const r = results[label]
    const t = median(rates(r.tandem))
    const q = median(rates(r['qemu-nbd']))
    const k = r['nbdkit-file(raw)'] ? `   nbdkit-file(raw) ${median(rates(r['nbdkit-file(raw)'])).toFixed(0)}` : ''
    const [ct, cq] = [cpuPer(unit, r.tandem), cpuPer(unit, r['qemu-nbd'])]
    const ck = r['nbdkit-file(raw)'] ? `   nbdkit-file(raw) ${cpuPer(unit, r['nbdkit-file(raw)']).text}` : ''
    console.log(label)
    console.log(`  rate  tandem ${spread(rates(r.tandem), 0)} ${unit}   qemu-nbd ${spread(rates(r['qemu-nbd']), 0)}${k}   tandem/qemu-nbd ${(t / q).toFixed(2)}x`)
    console.log(`  cpu   tandem ${ct.text}   qemu-nbd ${cq.text}${ck}   tandem/qemu-nbd ${(ct.median / cq.median).toFixed(2)}x   (server user+sys per unit of work)`)
  }
  rmSync(d, { recursive: true, force: true })
}

// ---- iSCSI: Tandem beside tgtd (reference/peers.md), load from scripts/bench/iscsi-load.c ----

/** Polls until `iscsi-inq` answers on `url`. */
async function iscsiReady(url: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (spawnSync('iscsi-inq', [url], { stdio: 'ignore' }).status === 0) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`no iSCSI target answered at ${url}`)
}

/** scripts/bench/iscsi-load.c built against libiscsi, or null (the reason printed) when it cannot be. */
function buildIscsiLoad(what: string): string | null {
  for (const tool of ['tgtd', 'tgtadm', 'iscsi-inq', 'cc', 'qemu-img']) {
    if (!have(tool)) {
      console.log(`${what}: SKIP (${tool} not installed: scripts/install-peers.sh)`)
      return null
    }
  }
  mkdirSync(DIR, { recursive: true })
  const load = join(DIR, 'iscsi-load')
  const cc = spawnSync('cc', ['-O2', '-o', load, join(ROOT, 'scripts', 'bench', 'iscsi-load.c'), '-liscsi'], { encoding: 'utf8' })
  if (cc.status !== 0) {
    console.log(`${what}: SKIP (cannot build the load generator; libiscsi-dev missing? ${cc.stderr.trim()})`)
    return null
  }
  return load
}

/** Tandem's target serving the bench disk of datastore `ds` (file `vmdk`), and tgtd serving its raw copy. */
function iscsiTargets(ds: string, vmdk: string, raw: string): Side[] {
  const TGT_CONTROL = String(39 + PORT_OFFSET)
  return [
    [
      'tandem',
      async () => {
        const srv = await serveTandem(ds)
        const url = `iscsi://127.0.0.1:${ISCSI_PORT}/iqn.2026-11.local.tandem:bench/0`
        await iscsiReady(url)
        return { uri: url, pid: srv.pid, stop: srv.stop }
      },
      [vmdk],
    ],
    [
      'tgtd',
      async () => {
        const child = spawn('tgtd', ['-f', '-C', TGT_CONTROL, '--iscsi', `portal=127.0.0.1:${ISCSI_PORT}`], { stdio: ['ignore', 'ignore', 'ignore'] })
        const adm = (...a: string[]) => {
          for (let i = 0; i < 50; i++) {
            if (spawnSync('tgtadm', ['-C', TGT_CONTROL, '--lld', 'iscsi', ...a], { stdio: 'ignore' }).status === 0) return
            spawnSync('sleep', ['0.1'])
          }
          throw new Error(`tgtadm ${a.join(' ')} failed`)
        }
        adm('--op', 'new', '--mode', 'target', '--tid', '1', '-T', 'iqn.2026-11.local.bench:tgt')
        adm('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', raw)
        adm('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL')
        const url = `iscsi://127.0.0.1:${ISCSI_PORT}/iqn.2026-11.local.bench:tgt/1`
        await iscsiReady(url)
        return {
          uri: url,
          // tgtd -f stays in the foreground: the process spawned is the server (all its threads)
          pid: child.pid!,
          stop: async () => {
            // tgtd does not end on SIGTERM while it has targets
            child.kill('SIGKILL')
            await waitExit(child)
          },
        }
      },
      [raw],
    ],
  ]
}

async function iscsiBench() {
  const load = buildIscsiLoad('iscsi')
  if (!load) return
  const d = join(DIR, 'iscsi')
  const { ds, vmdk, raw } = await benchDisk(d)
  const sides = iscsiTargets(ds, vmdk, raw)
  const secs = String(Number(process.env.BENCH_FIO_SECONDS ?? 4))
  const gen = (url: string, mode: string, bs: number, qd: number, key: 'mibps' | 'iops'): Result => {
    const r = spawnSync(load, [url, mode, String(bs), String(qd), secs], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`iscsi-load ${mode} failed: ${r.stderr}`)
    const j = JSON.parse(r.stdout) as Record<string, number>
    return { rate: j[key], work: key === 'iops' ? j.ops : j.bytes / 1048576 }
  }
  const work: Work[] = [
    ['1 MiB sequential read QD32', 'MiB/s', (u) => gen(u, 'read', 1 << 20, 32, 'mibps')],
    ['1 MiB sequential write QD32', 'MiB/s', (u) => gen(u, 'write', 1 << 20, 32, 'mibps')],
    ['4k random read QD1', 'IOPS', (u) => gen(u, 'randread', 4096, 1, 'iops')],
    ['4k random read QD32', 'IOPS', (u) => gen(u, 'randread', 4096, 32, 'iops')],
    ['4k random write QD1', 'IOPS', (u) => gen(u, 'randwrite', 4096, 1, 'iops')],
    ['4k random write QD32', 'IOPS', (u) => gen(u, 'randwrite', 4096, 32, 'iops')],
  ]
  const results = await serveAndMeasure(sides, work)
  for (const [label, unit] of work) {
    const r = results[label]
    const [t, g] = [median(rates(r.tandem)), median(rates(r.tgtd))]
    const [ct, cg] = [cpuPer(unit, r.tandem), cpuPer(unit, r.tgtd)]
    console.log(label)
    console.log(`  rate  tandem ${spread(rates(r.tandem), 0)} ${unit}   tgtd(raw) ${spread(rates(r.tgtd), 0)}   tandem/tgtd ${(t / g).toFixed(2)}x`)
    console.log(`  cpu   tandem ${ct.text}   tgtd(raw) ${cg.text}   tandem/tgtd ${(ct.median / cg.median).toFixed(2)}x   (server user+sys per unit of work)`)
  }
  rmSync(d, { recursive: true, force: true })
}

// ---- iSCSI initiator: Tandem's beside libiscsi's (iscsi-load.c) on the same target ----

/**
 * The same load from libiscsi (scripts/bench/iscsi-load.c) and from Tandem's initiator
 * (scripts/bench/initiator-load.ts), alternating, on one target at a time (Tandem's, then tgtd).
 * Rates, the ratio Tandem/libiscsi (goal >= 0.8), the client's CPU per unit of work (libiscsi's
 * whole process; the initiator's timed part, without Node's start-up) and the target's.
 */
async function initiatorBench() {
  const load = buildIscsiLoad('initiator')
  if (!load) return
  const d = join(DIR, 'initiator')
  const { ds, vmdk, raw } = await benchDisk(d)
  const secs = String(Number(process.env.BENCH_FIO_SECONDS ?? 4))
  const ours = join(ROOT, 'dist', 'scripts', 'bench', 'initiator-load.js')
  type Client = [name: string, go: (url: string, mode: string, bs: number, qd: number) => { j: Record<string, number>; cpu: number }]
  const clients: Client[] = [
    [
      'libiscsi',
      (url, mode, bs, qd) => {
        const c0 = cpuOf('self', 'children')
        const r = spawnSync(load, [url, mode, String(bs), String(qd), secs], { encoding: 'utf8' })
        if (r.status !== 0) throw new Error(`iscsi-load ${mode} failed: ${r.stderr}`)
        return { j: JSON.parse(r.stdout) as Record<string, number>, cpu: cpuOf('self', 'children') - c0 }
      },
    ],
    [
      'tandem',
      (url, mode, bs, qd) => {
        const r = spawnSync(process.execPath, [ours, url, mode, String(bs), String(qd), secs], { encoding: 'utf8', env: TANDEM_ENV })
        if (r.status !== 0) throw new Error(`initiator-load ${mode} failed: ${r.stderr}`)
        const j = JSON.parse(r.stdout) as Record<string, number>
        return { j, cpu: j.cpu }
      },
    ],
  ]
  const work: [label: string, unit: 'MiB/s' | 'IOPS', mode: string, bs: number, qd: number][] = [
    ['4k random read QD32', 'IOPS', 'randread', 4096, 32],
    ['1 MiB sequential read QD32', 'MiB/s', 'read', 1 << 20, 32],
  ]
  console.log('initiator: Tandem\'s iSCSI initiator beside libiscsi, same load, same target (client CPU: libiscsi whole process, tandem timed part)')
  for (const [target, start, files] of iscsiTargets(ds, vmdk, raw)) {
    const srv = await start()
    const got: Record<string, Record<string, { client: Measured; server: Measured }[]>> = {}
    try {
      for (let rep = 0; rep < REPS; rep++) {
        for (const [label, unit, mode, bs, qd] of work) {
          for (const [name, go] of rep % 2 === 0 ? clients : [...clients].reverse()) {
            warm(files)
            const s0 = cpuOf(srv.pid, 'self')
            const { j, cpu } = go(srv.uri, mode, bs, qd)
            const server = cpuOf(srv.pid, 'self') - s0
            const r = { rate: unit === 'IOPS' ? j.iops : j.mibps, work: unit === 'IOPS' ? j.ops : j.bytes / 1048576 }
            ;((got[label] ??= {})[name] ??= []).push({ client: { ...r, cpu }, server: { ...r, cpu: server } })
          }
        }
      }
    } finally {
      await srv.stop()
    }
    for (const [label, unit] of work) {
      const t = got[label].tandem
      const l = got[label].libiscsi
      const [rt, rl] = [rates(t.map((x) => x.client)), rates(l.map((x) => x.client))]
      const [ct, cl] = [cpuPer(unit, t.map((x) => x.client)), cpuPer(unit, l.map((x) => x.client))]
      const [st, sl] = [cpuPer(unit, t.map((x) => x.server)), cpuPer(unit, l.map((x) => x.server))]
      console.log(`${label} on ${target}'s target`)
      console.log(`  rate        tandem ${spread(rt, 0)} ${unit}   libiscsi ${spread(rl, 0)}   tandem/libiscsi ${(median(rt) / median(rl)).toFixed(2)}x (goal >= 0.8)`)
      console.log(`  client cpu  tandem ${ct.text}   libiscsi ${cl.text}   tandem/libiscsi ${(ct.median / cl.median).toFixed(2)}x`)
      console.log(`  target cpu  with tandem ${st.text}   with libiscsi ${sl.text}`)
    }
  }
  rmSync(d, { recursive: true, force: true })
}

// ---- VM engine: MIPS of both engines on the cpu and ticker guests beside qemu-system-riscv32; cross-engine replay; cost of record, speed of replay ----

async function vmBench() {
  const d = join(DIR, 'vm')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  const vmRun = (...args: string[]) => {
    const r = spawnSync(process.execPath, [CLI, 'vm', 'run', '--json', ...args], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`tandem vm run ${args.join(' ')} failed: ${r.stderr}`)
    return JSON.parse(r.stdout) as { instructions: number; seconds: number; cpuSeconds: number; runCpuSeconds: number; mips: number; stateHash: string; consoleHash: string }
  }
  const cpuElf = join(ROOT, 'guests', 'cpu.elf')
  const engines = ['interp', 'jit'] as const
  // MIPS by wall time and by the VM process's CPU time over the run (user+sys, every thread: runCpuSeconds, the span of `seconds`; start-up and the final state hash left out): on a busy machine the second is the steadier
  const wall: Record<string, number[]> = { interp: [], jit: [] }
  const cpu: Record<string, number[]> = { interp: [], jit: [] }
  const qemuMips: number[] = []
  const withQemu = have('qemu-system-riscv32')
  for (let i = 0; i < REPS; i++) {
    const order = i % 2 === 0 ? ['interp', 'jit', 'q'] : ['q', 'jit', 'interp']
    for (const side of order) {
      if (side !== 'q') {
        const r = vmRun('--guest', 'cpu', '--engine', side)
        wall[side].push(r.mips)
        cpu[side].push(r.instructions / r.runCpuSeconds / 1e6)
      } else if (withQemu) {
        const n = vmRun('--guest', 'cpu', '--max-instructions', '1000000000').instructions
        const secs = run('qemu-system-riscv32', ['-machine', 'virt', '-bios', 'none', '-m', '64M', '-nographic', '-monitor', 'none', '-serial', 'null', '-kernel', cpuElf]).seconds
        qemuMips.push(n / secs / 1e6)
      }
    }
  }
  const engineLine = (what: string, goal: string) => {
    for (const e of engines) console.log(`${`${what}, --engine ${e}`.padEnd(36)} ${median(wall[e]).toFixed(0)} MIPS (wall)   ${median(cpu[e]).toFixed(0)} MIPS per CPU second of the run`)
    console.log(`${`${what}, jit / interp`.padEnd(36)} ${(median(wall.jit) / median(wall.interp)).toFixed(2)}x (wall)   ${(median(cpu.jit) / median(cpu.interp)).toFixed(2)}x (CPU)   (goal ${goal})`)
  }
  engineLine('cpu guest', '>= 3x')
  const q = median(qemuMips)
  console.log(withQemu ? `${'cpu guest, qemu-system-riscv32'.padEnd(36)} ${q.toFixed(0)} MIPS (TCG, whole process, wall)   jit/qemu ${(median(wall.jit) / q).toFixed(2)}x` : 'cpu guest: qemu-system-riscv32 SKIP (not installed)')
  // ticker: 10^8 instructions with timer interrupts, time, entropy and clock reads
  for (const e of engines) (wall[e] = []), (cpu[e] = [])
  for (let i = 0; i < REPS; i++) {
    for (const e of i % 2 ? [...engines].reverse() : engines) {
      const r = vmRun('--guest', 'ticker', '--engine', e)
      wall[e].push(r.mips)
      cpu[e].push(r.instructions / r.runCpuSeconds / 1e6)
    }
  }
  engineLine('ticker guest', '>= 4x')
  // a log recorded under one engine replays under the other to the same state and console
  for (const [a, b] of [['interp', 'jit'], ['jit', 'interp']]) {
    const log = join(d, `ticker-${a}.log`)
    const rec = vmRun('--guest', 'ticker', '--engine', a, '--record', log)
    const rep = vmRun('--guest', 'ticker', '--engine', b, '--replay', log)
    const same = rep.instructions === rec.instructions && rep.stateHash === rec.stateHash && rep.consoleHash === rec.consoleHash
    console.log(`${`ticker recorded ${a}, replayed ${b}`.padEnd(36)} ${same ? 'identical' : 'DIFFERENT'} (instructions, state hash, console hash)   replay ${rep.mips.toFixed(0)} MIPS (wall)`)
  }
  const plain: number[] = []
  const rec: number[] = []
  const rep: number[] = []
  const log = join(d, 'ticker.log')
  vmRun('--guest', 'ticker', '--record', log) // the log every replay below follows
  const modes: [number[], string[]][] = [
    [plain, []],
    [rec, ['--record', join(d, 'again.log')]],
    [rep, ['--replay', log]],
  ]
  // single runs vary by +-10 % here; many runs in rotating order, medians
  const reps = Math.max(REPS, 11)
  for (let i = 0; i < reps; i++) {
    for (let k = 0; k < 3; k++) {
      const [into, args] = modes[(i + k) % 3]
      const r = vmRun('--guest', 'ticker', ...args)
      into.push(r.instructions / r.cpuSeconds / 1e6)
    }
  }
  const [p, r, y] = [median(plain), median(rec), median(rep)]
  console.log(`${'ticker (jit), plain / record / replay'.padEnd(36)} ${p.toFixed(0)} / ${r.toFixed(0)} / ${y.toFixed(0)} MIPS per CPU second   recording costs ${(((p - r) / p) * 100).toFixed(1)} % (goal < 5 %)   replay at ${((y / r) * 100).toFixed(0)} % of recording (goal >= 90 %)`)
  await diskioBench(d)
  rmSync(d, { recursive: true, force: true })
}

/**
 * The diskio guest (129 SCSI requests, 512 KiB written and read) on a raw file (an in-process LU),
 * over nbd:// (an in-process LU on the NBD client) and over iscsi:// (pass-through to the target,
 * under the VM's identity), each against `tandem serve` on this machine: the guest's run time,
 * the VM process's CPU and the server's CPU.
 */
async function diskioBench(d: string) {
  const { Datastore } = await import('../../src/server/datastore/index.js')
  const ds = join(d, 'ds')
  const store = await Datastore.open(ds)
  await store.createDisk('bench', 64 << 20)
  await store.close()
  const raw = join(d, 'diskio.raw')
  run('truncate', ['-s', '64M', raw])
  // free ports (other benches on this machine may hold the fixed ones), read from the ready line
  const child = spawn(process.execPath, [CLI, 'serve', '--datastore', ds, '--nbd-port', '0', '--iscsi-port', '0', '--http-port', '0', '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'inherit'], env: TANDEM_ENV })
  const ports = await new Promise<{ nbdPort: number; iscsiPort: number }>((resolve, reject) => {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.includes('"tandem serve ready"')) resolve(JSON.parse(line) as { nbdPort: number; iscsiPort: number })
    })
    child.once('exit', (code) => reject(new Error(`tandem serve exited ${code}`)))
  })
  const served = { pid: child.pid!, stop: async () => (child.kill('SIGTERM'), await waitExit(child)) }
  const sides: [string, string][] = [
    ['file', raw],
    ['nbd', `nbd://127.0.0.1:${ports.nbdPort}/bench`],
    ['iscsi', `iscsi://127.0.0.1:${ports.iscsiPort}/iqn.2026-11.local.tandem:bench/0`],
  ]
  const got: Record<string, { secs: number[]; cpu: number[]; server: number[] }> = {}
  for (const [k] of sides) got[k] = { secs: [], cpu: [], server: [] }
  try {
    const reps = Math.max(REPS, 5)
    for (let i = 0; i < reps; i++) {
      for (let k = 0; k < sides.length; k++) {
        const [name, disk] = sides[(i + k) % sides.length]
        const s0 = cpuOf(served.pid, 'self')
        const c0 = cpuOf('self', 'children')
        const r = spawnSync(process.execPath, [CLI, 'vm', 'run', '--json', '--guest', 'diskio', '--disk', disk, '--name', 'bench'], { encoding: 'utf8', env: TANDEM_ENV })
        if (r.status !== 0) throw new Error(`tandem vm run diskio --disk ${disk} failed: ${r.stderr}`)
        got[name].cpu.push(cpuOf('self', 'children') - c0)
        got[name].server.push(cpuOf(served.pid, 'self') - s0)
        got[name].secs.push((JSON.parse(r.stdout) as { seconds: number }).seconds)
      }
    }
  } finally {
    await served.stop()
  }
  const row = (k: string) => `${k} ${(median(got[k].secs) * 1000).toFixed(0)} ms (vm cpu ${median(got[k].cpu).toFixed(2)} s, server cpu ${median(got[k].server).toFixed(2)} s)`
  console.log(`${'diskio guest: file / nbd / iscsi'.padEnd(36)} ${row('file')}   ${row('nbd')}   ${row('iscsi')}   iscsi/file ${(median(got.iscsi.secs) / median(got.file.secs)).toFixed(1)}x`)
}

// ---- VM CPU limit: the cpu guest at 100 / 50 / 25 % of a core ----

/**
 * The cpu guest for a fixed number of instructions at `--cpu-limit` 100, 50 and 25: MIPS, their
 * share of the 100 % MIPS (goal: 50 % → 50 ± 5 %), and CPU time (user+sys) beside wall time.
 * First warm, in one process (cpu-limit-runs.ts: after a warm-up run, so the JIT's warm-up, which
 * a limited run overlaps with its sleeps, is not in the ratio); then cold, as `tandem vm run`
 * processes (the process's CPU from wait4). Runs rotate so each level sees the same background load;
 * the load average is printed. On a machine busy with other work the scheduler favours a process
 * that has just slept, so a limited VM gets more of a core in its busy part than an unlimited one:
 * BENCH_CPU_LIMIT_RT=1 runs the VMs under `chrt -f 1` (real-time, root), each with a core of its own
 * as on a free machine.
 */
async function cpuLimitBench() {
  const N = Number(process.env.BENCH_CPU_LIMIT_INSTRUCTIONS ?? 60_000_000) // the cpu guest exits after ~63 M
  const reps = Math.max(REPS, 5) // single runs vary by +-20 % on a busy machine
  const levels = [100, 50, 25]
  const rt = process.env.BENCH_CPU_LIMIT_RT === '1'
  const spawnVm = (args: string[]) => (rt ? spawnSync('chrt', ['-f', '1', process.execPath, ...args], { encoding: 'utf8', env: TANDEM_ENV }) : spawnSync(process.execPath, args, { encoding: 'utf8', env: TANDEM_ENV }))
  type Row = { mips: number; seconds: number; cpu: number; slept?: number; proc?: number; wall?: number }
  const print = (title: string, got: Map<number, Row[]>) => {
    const full = median(got.get(100)!.map((r) => r.mips))
    console.log(title)
    for (const p of levels) {
      const rows = got.get(p)!
      const m = median(rows.map((r) => r.mips))
      const asleep = rows[0].slept !== undefined ? `   asleep ${(median(rows.map((r) => r.slept! / r.seconds)) * 100).toFixed(1)} % of the run` : ''
      const proc = rows[0].proc !== undefined ? `   process cpu ${median(rows.map((r) => r.proc!)).toFixed(2)} s in ${median(rows.map((r) => r.wall!)).toFixed(2)} s wall` : ''
      console.log(
        `  --cpu-limit ${String(p).padStart(3)}   ${spread(rows.map((r) => r.mips), 1)} MIPS   ${((m / full) * 100).toFixed(1)} % of the 100 % MIPS${p === 100 ? '' : ` (goal ${p} ± 5)`}   run cpu ${median(rows.map((r) => r.cpu)).toFixed(2)} s in ${median(rows.map((r) => r.seconds)).toFixed(2)} s = ${(median(rows.map((r) => r.cpu / r.seconds)) * 100).toFixed(0)} % of a core${asleep}${proc}`,
      )
    }
  }
  const load0 = loadavg()[0]
  const warm = new Map<number, Row[]>(levels.map((p) => [p, []]))
  const w = spawnVm([join(ROOT, 'dist', 'scripts', 'bench', 'cpu-limit-runs.js'), String(N), String(reps), ...levels.map(String)])
  if (w.status !== 0) throw new Error(`cpu-limit-runs failed: ${w.stderr}`)
  for (const line of w.stdout.trim().split('\n')) {
    const r = JSON.parse(line) as Row & { pct: number }
    warm.get(r.pct)!.push(r)
  }
  const cold = new Map<number, Row[]>(levels.map((p) => [p, []]))
  for (let i = 0; i < reps; i++) {
    for (let k = 0; k < levels.length; k++) {
      const pct = levels[(i + k) % levels.length]
      const c0 = cpuOf('self', 'children')
      const t0 = process.hrtime.bigint()
      const r = spawnVm([CLI, 'vm', 'run', '--json', '--guest', 'cpu', '--max-instructions', String(N), '--cpu-limit', String(pct)])
      const wall = Number(process.hrtime.bigint() - t0) / 1e9
      if (r.status !== 124) throw new Error(`tandem vm run --guest cpu --cpu-limit ${pct} ended with ${r.status}: ${r.stderr}`)
      const s = JSON.parse(r.stdout) as { mips: number; seconds: number; cpuSeconds: number }
      cold.get(pct)!.push({ mips: s.mips, seconds: s.seconds, cpu: s.cpuSeconds, proc: cpuOf('self', 'children') - c0, wall })
    }
  }
  const how = `${N / 1e6} M instructions of the cpu guest, ${reps} runs per level, rotating${rt ? ', under chrt -f 1 (real-time)' : ''}`
  print(`VM CPU limit, warm (one process, after a warm-up run): ${how}`, warm)
  print(`VM CPU limit, cold (tandem vm run --cpu-limit PCT): ${how}`, cold)
  console.log(`  load average ${load0.toFixed(1)} → ${loadavg()[0].toFixed(1)} on ${cpus().length} cores`)
}

// ---- Locks: Tandem beside sanlock (reference/peers.md) ----

async function locksBench() {
  const { FileLockStorage, LockManager, initLockspace, regionSize } = await import('../../src/disk-formats/lock-region/index.js')
  const d = join(DIR, 'locks')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  const N = 30
  const t = () => performance.now()
  // Tandem: library calls on a local file (what a host agent does).
  const ls = join(d, 'lockspace')
  const { openSync, closeSync, ftruncateSync } = await import('node:fs')
  const fd = openSync(ls, 'w')
  ftruncateSync(fd, regionSize({ maxHosts: 64, maxLocks: 256 }))
  closeSync(fd)
  const st = await FileLockStorage.open(ls)
  let t0 = t()
  await initLockspace(st)
  const initMs = t() - t0
  const joins: number[] = []
  const mgrs = []
  for (let i = 0; i < 8; i++) {
    const m = new LockManager(st, `host-${i}`)
    t0 = t()
    await m.join()
    joins.push(t() - t0)
    mgrs.push(m)
  }
  const acq: number[] = []
  const rel: number[] = []
  for (let i = 0; i < N; i++) {
    t0 = t()
    await mgrs[0].acquire(`res-${i % 4}`)
    acq.push(t() - t0)
    t0 = t()
    await mgrs[0].release(`res-${i % 4}`)
    rel.push(t() - t0)
  }
  // takeover: a `tandem lock run` holder is SIGKILLed (its whole process group); host-1 waits.
  const takeovers: number[] = []
  for (let k = 0; k < 3; k++) {
    const holder = spawn(process.execPath, [CLI, 'lock', 'run', 'victim', '--lockspace', ls, '--host', `victim-${k}`, '--', 'sleep', '60'], { detached: true, stdio: 'ignore' })
    for (let i = 0; i < 200; i++) {
      const v = (await mgrs[1].view()).locks.find((l) => l.name === 'victim')
      if (v && v.state === 'exclusive' && v.owner === `victim-${k}`) break
      await new Promise((r) => setTimeout(r, 20))
    }
    await new Promise((r) => setTimeout(r, 300))
    process.kill(-holder.pid!, 'SIGKILL')
    t0 = t()
    await mgrs[1].acquire('victim', { waitMs: 10_000, pollMs: 10 })
    takeovers.push(t() - t0)
    await mgrs[1].release('victim')
  }
  for (const m of mgrs) await m.leave()
  await st.close()
  const f = (x: number) => (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(2)} ms`)
  const row = (what: string, ours: string, theirs: string) => console.log(`${what.padEnd(40)} tandem ${ours.padEnd(12)} sanlock ${theirs}`)
  let sl: { init: number; join: number; acq: number; rel: number; base: number; takeover?: number } | null = null
  if (have('sanlock')) sl = sanlockBench(join(d, 'sanlock'), N)
  console.log('locks (defaults: heartbeat 250 ms, lease 2 s; sanlock at its fastest, io_timeout 1)')
  row('init lockspace', f(initMs), sl ? f(sl.init) : 'not installed')
  row('join (median of 8 hosts)', f(median(joins)), sl ? f(sl.join) : '-')
  row('uncontended acquire (median of 30)', f(median(acq)), sl ? `${f(sl.acq)} (CLI; its spawn alone: ${f(sl.base)})` : '-')
  row('release (median of 30)', f(median(rel)), sl ? `${f(sl.rel)} (CLI)` : '-')
  row('takeover after SIGKILL (median of 3)', f(median(takeovers)), sl?.takeover ? f(sl.takeover) : '70.2 s (reference/peers.md; BENCH_SANLOCK_TAKEOVER=1 measures it)')
  const ov = await iscsiLocksBench(join(d, 'ds'), 200)
  row(`acquire over iSCSI (median of ${ov.n})`, f(ov.acq), '-')
  row(`release over iSCSI (median of ${ov.n})`, f(ov.rel), '-')
  console.log(`${''.padEnd(40)} CPU per acquire + release over iSCSI: host ${f(ov.hostCpu)}, server ${f(ov.serverCpu)} (user + sys, heartbeats included)`)
  rmSync(d, { recursive: true, force: true })
}

/**
 * The lockspace of a `tandem serve` (another process) as a LUN, used from this process by SCSI
 * COMPARE AND WRITE (`--lockspace iscsi://…`): wall time per uncontended acquire and release, and
 * the CPU time of this host and of the server per acquire + release.
 */
async function iscsiLocksBench(ds: string, n: number) {
  const { IscsiLockStorage } = await import('../../src/client/locks/iscsi-storage.js')
  const { LockManager } = await import('../../src/disk-formats/lock-region/index.js')
  mkdirSync(ds, { recursive: true })
  const child = spawn(process.execPath, [CLI, 'serve', '--datastore', ds, '--nbd-port', '0', '--iscsi-port', String(ISCSI_PORT), '--http-port', '0', '--log-level', 'warn'], { stdio: 'ignore', env: TANDEM_ENV })
  const uri = `iscsi://127.0.0.1:${ISCSI_PORT}/iqn.2026-11.local.tandem:lockspace/0`
  let st: Awaited<ReturnType<typeof IscsiLockStorage.open>> | null = null
  for (let i = 0; !st; i++) {
    st = await IscsiLockStorage.open(uri).catch((e: unknown) => {
      if (i >= 100) throw e
      return new Promise<null>((r) => setTimeout(() => r(null), 100))
    })
  }
  const m = new LockManager(st, 'host-iscsi')
  await m.join()
  const acq: number[] = []
  const rel: number[] = []
  const host0 = process.cpuUsage()
  const server0 = cpuOf(child.pid!, 'self')
  for (let i = 0; i < n; i++) {
    let t0 = performance.now()
    await m.acquire(`res-${i % 4}`)
    acq.push(performance.now() - t0)
    t0 = performance.now()
    await m.release(`res-${i % 4}`)
    rel.push(performance.now() - t0)
  }
  const host = process.cpuUsage(host0)
  const serverCpu = ((cpuOf(child.pid!, 'self') - server0) * 1000) / n
  await m.leave()
  await st.close()
  child.kill('SIGTERM')
  await waitExit(child)
  return { n, acq: median(acq), rel: median(rel), hostCpu: (host.user + host.system) / 1000 / n, serverCpu }
}

/** sanlock with the commands of reference/peers.md; CLI wall times. */
function sanlockBench(d: string, n: number) {
  mkdirSync(join(d, 'run1'), { recursive: true })
  mkdirSync(join(d, 'run2'), { recursive: true })
  spawnSync('truncate', ['-s', '1M', join(d, 'ls'), join(d, 'res')])
  const env = (r: string) => ({ ...process.env, SANLOCK_PRIVILEGED: '0', SANLOCK_RUN_DIR: join(d, r) })
  const daemon = (r: string) => spawn('sanlock', ['daemon', '-D', '-w', '0', '-l', '0', '-h', '0', '-U', 'root', '-G', 'root', '-L', '-1', '-S', '-1', '-o', '1'], { env: env(r), stdio: 'ignore' })
  const cli = (r: string, ...args: string[]) => {
    const t0 = performance.now()
    const x = spawnSync('sanlock', ['client', ...args], { env: env(r), encoding: 'utf8' })
    return { ms: performance.now() - t0, ok: x.status === 0 && !/done -/.test(x.stdout), out: x.stdout }
  }
  const d1 = daemon('run1')
  const sleepWait = (m: number) => spawnSync('sleep', [String(m / 1000)])
  sleepWait(500)
  const ls = `LS:0:${join(d, 'ls')}:0`
  const init = cli('run1', 'init', '-s', ls, '-o', '1').ms
  cli('run1', 'init', '-r', `LS:res1:${join(d, 'res')}:0`)
  const join1 = cli('run1', 'add_lockspace', '-s', `LS:1:${join(d, 'ls')}:0`, '-o', '1').ms
  const holder = spawn('sleep', ['3000'], { stdio: 'ignore' })
  const reg = spawn('sanlock', ['client', 'command', '-c', '/bin/sleep', '3000'], { env: env('run1'), stdio: 'ignore' })
  sleepWait(500)
  const pid = spawnSync('pgrep', ['-n', '-f', '^/bin/sleep 3000'], { encoding: 'utf8' }).stdout.trim()
  const acq: number[] = []
  const rel: number[] = []
  const base: number[] = []
  for (let i = 0; i < n; i++) {
    acq.push(cli('run1', 'acquire', '-r', `LS:res1:${join(d, 'res')}:0`, '-p', pid).ms)
    rel.push(cli('run1', 'release', '-r', `LS:res1:${join(d, 'res')}:0`, '-p', pid).ms)
    base.push(cli('run1', 'status').ms)
  }
  let takeover: number | undefined
  if (process.env.BENCH_SANLOCK_TAKEOVER === '1') {
    const d2 = daemon('run2')
    sleepWait(500)
    cli('run2', 'add_lockspace', '-s', `LS:2:${join(d, 'ls')}:0`, '-o', '1')
    const reg2 = spawn('sanlock', ['client', 'command', '-c', '/bin/sleep', '3001'], { env: env('run2'), stdio: 'ignore' })
    sleepWait(500)
    const pid2 = spawnSync('pgrep', ['-n', '-f', '^/bin/sleep 3001'], { encoding: 'utf8' }).stdout.trim()
    cli('run1', 'acquire', '-r', `LS:res1:${join(d, 'res')}:0`, '-p', pid)
    d1.kill('SIGKILL')
    const t0 = performance.now()
    while (performance.now() - t0 < 300_000) {
      if (cli('run2', 'acquire', '-r', `LS:res1:${join(d, 'res')}:0`, '-p', pid2).ok) break
      sleepWait(1000)
    }
    takeover = performance.now() - t0
    d2.kill('SIGKILL')
    reg2.kill('SIGKILL')
  }
  d1.kill('SIGKILL')
  reg.kill('SIGKILL')
  holder.kill('SIGKILL')
  spawnSync('pkill', ['-f', '^/bin/sleep 300[01]'])
  return { init, join: join1, acq: median(acq), rel: median(rel), base: median(base), takeover }
}

// ---- Snapshot create under a QD1 writer: how long the writer stalls ----

/**
 * A 256 MiB disk in a datastore under BENCH_DIR (the file system the datastore would live on) and
 * its read-write export open in this process, as `tandem serve` holds it; a writer issues 4 KiB
 * writes at random offsets one at a time (QD1) while BENCH_SNAPSHOTS (default 20) snapshots are
 * taken, each after a quiet spell: first by create, then by prepare + commit (the checkpoint's
 * way: the delta made beforehand, the commit a switch with writes held until the record is
 * in place). A step's stall is the longest write latency among the writes that overlapped it;
 * printed per way: the max and p50 of those over the snapshots (for prepare + commit: the
 * commit's, from its start until it settled, as it answers before its folder sync and the old
 * top's freeze; and the prepare's apart), how long writes were held, when the commit answered,
 * the writer's latency outside any step (the machine's own noise), each step's wall time, and
 * this process's CPU (user+sys) over the steps.
 */
async function snapshotBench() {
  const d = join(DIR, 'snapshot')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  const N = Number(process.env.BENCH_SNAPSHOTS ?? 20)
  const SIZE = 256 << 20
  const { Datastore } = await import('../../src/server/datastore/index.js')
  const { LiveDisk } = await import('../../src/disk-formats/filters/index.js')
  /** how long each commit held writes (the switch to the record in place) */
  const held: number[] = []
  const [hold, release] = [LiveDisk.prototype.holdWrites, LiveDisk.prototype.releaseWrites]
  let h0 = 0
  LiveDisk.prototype.holdWrites = function (this: InstanceType<typeof LiveDisk>) {
    h0 = performance.now()
    hold.call(this)
  }
  LiveDisk.prototype.releaseWrites = function (this: InstanceType<typeof LiveDisk>, ...a: Parameters<typeof release>) {
    // the first release after a hold lets writes go on (a second one lets flushes go on)
    if (h0) held.push(performance.now() - h0)
    h0 = 0
    release.apply(this, a)
  }
  const store = await Datastore.open(join(d, 'ds'))
  await store.createDisk('bench', SIZE)
  const h = await store.openExport('bench')
  const buf = Buffer.alloc(4096, 0xa5)
  /** [start, end] of every write, in ms */
  const writes: [number, number][] = []
  let stop = false
  const writer = (async () => {
    while (!stop) {
      const t0 = performance.now()
      await h.device.write(Math.floor(Math.random() * (SIZE / 4096)) * 4096, buf)
      writes.push([t0, performance.now()])
      // the next request comes in a later turn, as a client's over a socket does (a write served
      // synchronously from the page cache would otherwise never let the snapshot's steps run)
      await new Promise((r) => setImmediate(r))
    }
  })()
  const pause = (ms: number) => new Promise((r) => setTimeout(r, ms))
  await pause(200) // the writer's first grains allocated
  const timed = async (spans: [number, number][], fn: () => Promise<unknown>) => {
    const t0 = performance.now()
    await fn()
    spans.push([t0, performance.now()])
  }
  const creates: [number, number][] = []
  const prepares: [number, number][] = []
  /** from the commit's start: to its answer (commits: to the settled end) */
  const answered: number[] = []
  const commits: [number, number][] = []
  let cpu0 = process.cpuUsage()
  for (let i = 0; i < N; i++) {
    await pause(50)
    await timed(creates, () => store.createSnapshot('bench', `s${i}`))
  }
  const cpuCreate = process.cpuUsage(cpu0)
  cpu0 = process.cpuUsage()
  for (let i = 0; i < N; i++) {
    await pause(50)
    await timed(prepares, () => store.prepareSnapshot('bench', `p${i}`))
    await pause(20)
    const t0 = performance.now()
    await store.commitSnapshot('bench', `p${i}`)
    answered.push(performance.now() - t0)
    await store.describe('bench') // waits for what the commit finishes after answering (folder sync, freeze)
    commits.push([t0, performance.now()])
  }
  const cpuPrepared = process.cpuUsage(cpu0)
  stop = true
  await writer
  await h.release()
  await store.close()
  const most = (xs: number[]) => xs.reduce((m, x) => Math.max(m, x), 0)
  const stallsOf = (spans: [number, number][]) => spans.map(([a, b]) => most(writes.filter(([s, e]) => e > a && s < b).map(([s, e]) => e - s)))
  const steps = [...creates, ...prepares, ...commits]
  const quiet = writes.filter(([s, e]) => !steps.some(([a, b]) => e > a && s < b)).map(([s, e]) => e - s)
  const ms = (xs: number[]) => xs.map((x) => x.toFixed(2))
  const wall = (spans: [number, number][]) => spans.map(([a, b]) => b - a)
  const cpuMs = (c: NodeJS.CpuUsage) => ((c.user + c.system) / 1000).toFixed(0)
  const stallLine = (xs: number[]) => `max ${most(xs).toFixed(2)} ms   p50 ${median(xs).toFixed(2)} ms`
  console.log(`snapshot under a QD1 4 KiB writer (${N} each way, 256 MiB disk, ${d})`)
  const sorted = [...quiet].sort((a, b) => a - b)
  const [sc, sp, sm] = [stallsOf(creates), stallsOf(prepares), stallsOf(commits)]
  console.log(`  create:             writer stall ${stallLine(sc)}   wall ${spread(wall(creates), 2)} ms   cpu (this process, user+sys) ${cpuMs(cpuCreate)} ms`)
  console.log(`  prepared, commit:   writer stall ${stallLine(sm)}   answered ${spread(answered, 2)} ms   settled (folder synced, old top frozen) ${spread(wall(commits), 2)} ms   writes held (switch to record in place) ${stallLine(held)}`)
  console.log(`  prepared, prepare:  writer stall ${stallLine(sp)}   wall ${spread(wall(prepares), 2)} ms   cpu (prepare + commit) ${cpuMs(cpuPrepared)} ms`)
  console.log(`  writer latency outside them: p50 ${median(quiet).toFixed(3)} ms   p99 ${sorted[Math.floor(sorted.length * 0.99)].toFixed(2)} ms   max ${most(quiet).toFixed(2)} ms   (${writes.length} writes)`)
  console.log(`  stalls, create ${ms(sc).join(' ')}`)
  console.log(`  stalls, commit ${ms(sm).join(' ')}`)
  rmSync(d, { recursive: true, force: true })
}

const only = process.env.BENCH_ONLY
console.log(`Tandem benchmarks — ${REPS} runs each side, alternating, medians; ratio = Tandem/peer time (< 1 is faster)`)
if (!only || only === 'disk') await diskBench()
if (!only || only === 'nbd') await nbdBench()
if (!only || only === 'iscsi') await iscsiBench()
if (!only || only === 'initiator') await initiatorBench()
if (!only || only === 'locks') await locksBench()
if (!only || only === 'vm') await vmBench()
if (!only || only === 'snapshot') await snapshotBench()
if (!only || only === 'cpu-limit') await cpuLimitBench()
if (!only || only === 'checkpoint') {
  const d = join(DIR, 'checkpoint')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  const { checkpointBench } = await import('./checkpoint.js')
  await checkpointBench(d, REPS)
  rmSync(d, { recursive: true, force: true })
}
if (only === 'checkpoint-file') {
  const d = join(DIR, 'checkpoint-file')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  const { checkpointFileBench } = await import('./checkpoint-file.js')
  await checkpointFileBench(d, REPS)
  rmSync(d, { recursive: true, force: true })
}
if (!only || only === 'ft') {
  const { ftBench } = await import('./ft.js')
  await ftBench({ dir: join(DIR, 'ft'), reps: REPS, cli: CLI, env: TANDEM_ENV })
}
if (only === 'dos') {
  const { dosBench } = await import('./dos.js')
  await dosBench({ cli: CLI, reps: REPS })
}
if (!only || only === 'ft-colo') {
  const { coloBench } = await import('./ft-colo.js')
  await coloBench({ dir: join(DIR, 'ft-colo'), reps: REPS, cli: CLI, env: TANDEM_ENV })
}
if (!only || only === 'ft-checkpoint') {
  const { ftCheckpointBench } = await import('./ft-checkpoint.js')
  await ftCheckpointBench({ dir: join(DIR, 'ft-checkpoint'), cli: CLI, env: TANDEM_ENV })
  rmSync(join(DIR, 'ft-checkpoint'), { recursive: true, force: true })
}
if (!only || only === 'ft-restore') {
  const { ftRestoreBench } = await import('./ft-restore.js')
  await ftRestoreBench({ reps: REPS })
}
if (only === 'vm-disk') {
  const d = join(DIR, 'vm-disk')
  rmSync(d, { recursive: true, force: true })
  mkdirSync(d, { recursive: true })
  await diskioBench(d)
  rmSync(d, { recursive: true, force: true })
}
if (existsSync(DIR) && readdirSync(DIR).length === 0) rmSync(DIR, { recursive: true, force: true })

/**
 * `npm test`: runs the suite with tap in two lanes —
 *   1. the files listed in test/lanes.json ("shared"), `jobs` at a time: formats, the VM engine's
 *      own checks, crash-and-check loops, the libiscsi suite (no timing bound in them). They are
 *      split between `jobs` tap runs of one file at a time by their CI times (lanes.json
 *      "seconds"), longest first: tap orders a run's files by name, so one tap run with --jobs=2
 *      started the longest file (the VMDK crash loop, ~6 min at nice 19) near the end and the lane
 *      ran ~3 min past the point where its work was evenly shared;
 *   2. every other test file alone (jobs 1): leases, heartbeats, FT pairs, stall and lag bounds
 *      need the CPU when they want it.
 * By default the lanes run at the same time, lane 1 at the lowest CPU priority (nice 19): lane 2's
 * files mostly wait (timers, leases, peers), and whenever one of them wants a core the scheduler
 * gives it before lane 1 (CFS weights 1024 to 15). TANDEM_TEST_LANES=serial runs lane 1 and then
 * lane 2, each with the machine to itself.
 * The lanes run the test files as `npm test`'s build (pretest: tsc -p tsconfig.test.json) compiled
 * them, each test/x.test.ts as dist/test/x.test.js, with test/tap-compiled.yaml as tap's config: no loader, where
 * tsx (package.json's tap config) costs each file ~0.7 s of CPU more (it hooks every module loaded). tap's output names the compiled files; lanes.json the sources.
 * Arguments go to both tap runs; given test files, tap runs just those, one at a time, from their
 * sources (tsx), as `npx tap test/x.test.ts` does.
 * Lane 2 prints tap's output as it comes, lane 1's follows when both have ended; at the end one
 * summary line adds up the lanes' (`# { total: N, pass: N, fail: N, skip: N }`, the form
 * .ci/run counts), and the exit code is the first failing lane's.
 */
import { spawn } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
const TAP = join(ROOT, 'node_modules', 'tap', 'dist', 'esm', 'run.mjs')

interface Lanes {
  jobs: number
  shared: string[]
  /** each shared file's time in CI's lane, in seconds */
  seconds?: Record<string, number>
}

/** A file lanes.json gives no time for counts this many seconds. */
const UNTIMED_SECONDS = 15

/** Where `npm test`'s build puts test file `f` (test/a/b.test.ts → dist/test/a/b.test.js). */
const compiled = (f: string) => `dist/${f.replace(/\.ts$/, '.js')}`

/** tap's config for the compiled files (TAP_RCFILE). */
const COMPILED_RC = join(ROOT, 'test', 'tap-compiled.yaml')

/** `files` split into `n` groups of about equal time: longest first, each to the group with the least so far. */
function splitByTime(files: string[], n: number, seconds: Record<string, number> = {}): string[][] {
  const groups = Array.from({ length: Math.max(1, n) }, () => ({ files: [] as string[], total: 0 }))
  const time = (f: string) => seconds[f] ?? UNTIMED_SECONDS
  for (const f of [...files].sort((a, b) => time(b) - time(a) || a.localeCompare(b))) {
    const g = groups.reduce((min, x) => (x.total < min.total ? x : min))
    g.files.push(f)
    g.total += time(f)
  }
  return groups.filter((g) => g.files.length > 0).map((g) => g.files)
}

/** Every test file under test/, as a path relative to the project (forward slashes). */
function testFiles(): string[] {
  return (readdirSync(join(ROOT, 'test'), { recursive: true }) as string[])
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => relative(ROOT, join(ROOT, 'test', f)).split(sep).join('/'))
    .sort()
}

const SUMMARY = /^# \{ (total: \d+.*) \}\s*$/

/**
 * Runs tap with `args`, passing its output through (or into `held`, when given); resolves its
 * exit code and summary counts. `nice`: the run's (and its test files') CPU priority.
 */
function tap(args: string[], o: { held?: Buffer[]; nice?: number; rc?: string } = {}): Promise<{ code: number; counts: Map<string, number> | null }> {
  return new Promise((resolve) => {
    const argv = [process.execPath, TAP, ...args]
    if (o.nice) argv.unshift('nice', '-n', String(o.nice))
    const env = o.rc ? { ...process.env, TAP_RCFILE: o.rc } : process.env
    const child = spawn(argv[0], argv.slice(1), { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'inherit'] })
    let counts: Map<string, number> | null = null
    let rest = ''
    child.stdout.on('data', (b: Buffer) => {
      if (o.held) o.held.push(b)
      else process.stdout.write(b)
      const lines = (rest + b.toString('utf8')).split('\n')
      rest = lines.pop()!
      for (const line of lines) {
        const m = SUMMARY.exec(line)
        if (m) counts = new Map(m[1].split(', ').map((kv) => kv.split(': ')).map(([k, v]) => [k, Number(v)]))
      }
    })
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 1 : 0), counts }))
  })
}

/**
 * Brings tap's plugged-in Test class in line with package.json's plugin list (`tap build`) when a
 * plugin the list removes is still built in: a fresh `npm ci` has tap's defaults, and tap rebuilds
 * them only inside a run, after the loaders of that run's first files were chosen.
 */
async function tapPlugins(): Promise<void> {
  const removed = ((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { tap?: { plugin?: string[] } }).tap?.plugin ?? [])
    .filter((p) => p.startsWith('!'))
    .map((p) => p.slice(1))
  let built = ''
  try {
    built = readFileSync(join(ROOT, 'node_modules', '@tapjs', 'test', 'test-built', 'dist', 'esm', 'index.js'), 'utf8')
  } catch {
    // not built yet: tap build makes it
  }
  if (built && !removed.some((p) => built.includes(`"${p}"`))) return
  await new Promise<void>((resolve) => spawn(process.execPath, [TAP, 'build'], { cwd: ROOT, stdio: ['ignore', 'ignore', 'inherit'] }).on('close', () => resolve()))
}

async function main(argv: string[]): Promise<number> {
  await tapPlugins()
  const files = argv.filter((a) => !a.startsWith('-'))
  const options = argv.filter((a) => a.startsWith('-'))
  if (files.length > 0) return (await tap(argv)).code
  const lanes = JSON.parse(readFileSync(join(ROOT, 'test', 'lanes.json'), 'utf8')) as Lanes
  const all = testFiles()
  const missing = lanes.shared.filter((f) => !all.includes(f))
  if (missing.length > 0) {
    console.error(`test/lanes.json names test files that do not exist: ${missing.join(', ')}`)
    return 2
  }
  const stale = all.filter((f) => !existsSync(join(ROOT, compiled(f))))
  if (stale.length > 0) {
    console.error(`not compiled: ${stale.slice(0, 3).map(compiled).join(', ')}${stale.length > 3 ? ` and ${stale.length - 3} more` : ''} (npm test compiles the tests first; run it, or tsc -p tsconfig.test.json)`)
    return 2
  }
  const shared = new Set(lanes.shared)
  const firsts = splitByTime(lanes.shared, lanes.jobs, lanes.seconds).map((files) => ['--jobs=1', ...options, ...files.map(compiled)])
  const second = ['--jobs=1', ...options, ...all.filter((f) => !shared.has(f)).map(compiled)]
  let runs: { code: number; counts: Map<string, number> | null }[]
  if (process.env.TANDEM_TEST_LANES === 'serial') {
    runs = [...(await Promise.all(firsts.map((f) => tap(f, { rc: COMPILED_RC })))), await tap(second, { rc: COMPILED_RC })]
  } else {
    const held = firsts.map(() => [] as Buffer[])
    runs = await Promise.all([...firsts.map((f, i) => tap(f, { held: held[i], nice: 19, rc: COMPILED_RC })), tap(second, { rc: COMPILED_RC })])
    for (const h of held) process.stdout.write(Buffer.concat(h))
  }
  const total = new Map<string, number>()
  for (const r of runs) for (const [k, v] of r.counts ?? []) total.set(k, (total.get(k) ?? 0) + v)
  if (runs.every((r) => r.counts)) console.log(`# { ${[...total].map(([k, v]) => `${k}: ${v}`).join(', ')} }`)
  return runs.find((r) => r.code !== 0)?.code ?? 0
}

process.exitCode = await main(process.argv.slice(2))

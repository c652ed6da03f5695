/**
 * `npm test`: runs the suite with tap in two lanes, one after the other —
 *   1. the files listed in test/lanes.json ("shared"), `jobs` at a time: formats, the VM engine's
 *      own checks, crash-and-check loops, the libiscsi suite (no timing bound in them);
 *   2. every other test file alone (jobs 1): leases, heartbeats, FT pairs, stall and lag bounds
 *      need the machine to themselves.
 * Arguments go to both tap runs; given test files, tap runs just those, one at a time.
 * Each lane prints tap's own output; at the end one summary line adds up the lanes'
 * (`# { total: N, pass: N, fail: N, skip: N }`, the form .ci/run counts), and the exit code is
 * the first failing lane's.
 */
import { spawn } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { join, relative, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')
const TAP = join(ROOT, 'node_modules', 'tap', 'dist', 'esm', 'run.mjs')

interface Lanes {
  jobs: number
  shared: string[]
}

/** Every test file under test/, as a path relative to the project (forward slashes). */
function testFiles(): string[] {
  return (readdirSync(join(ROOT, 'test'), { recursive: true }) as string[])
    .filter((f) => f.endsWith('.test.ts'))
    .map((f) => relative(ROOT, join(ROOT, 'test', f)).split(sep).join('/'))
    .sort()
}

const SUMMARY = /^# \{ (total: \d+.*) \}\s*$/

/** Runs tap with `args`, passing its output through; resolves its exit code and summary counts. */
function tap(args: string[]): Promise<{ code: number; counts: Map<string, number> | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [TAP, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
    let counts: Map<string, number> | null = null
    let rest = ''
    child.stdout.on('data', (b: Buffer) => {
      process.stdout.write(b)
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
  const shared = new Set(lanes.shared)
  const runs = [
    await tap([`--jobs=${lanes.jobs}`, ...options, ...lanes.shared]),
    await tap(['--jobs=1', ...options, ...all.filter((f) => !shared.has(f))]),
  ]
  const total = new Map<string, number>()
  for (const r of runs) for (const [k, v] of r.counts ?? []) total.set(k, (total.get(k) ?? 0) + v)
  if (runs.every((r) => r.counts)) console.log(`# { ${[...total].map(([k, v]) => `${k}: ${v}`).join(', ')} }`)
  return runs.find((r) => r.code !== 0)?.code ?? 0
}

process.exitCode = await main(process.argv.slice(2))

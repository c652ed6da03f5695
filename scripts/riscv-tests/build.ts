/**
 * riscv-tests' rv32ui and rv32um "p" ISA tests (github.com/riscv-software-src/riscv-tests, BSD
 * licence) built for Tandem's VM with Tandem's own environment: riscv_test.h (pass, fail and
 * traps reported through the test finisher) and link.ld, both beside this file. Only the tests'
 * sources come from riscv-tests; its env submodule is not used.
 *
 * test/client/vm/riscv-tests.test.ts runs them under both engines: from a checkout named by
 * RISCV_TESTS (built here, cached by content), or from a pack this script writes, named by
 * RISCV_TESTS_PACK (neither is committed: the images are riscv-tests' code):
 *
 *   npx tsx scripts/riscv-tests/build.ts <riscv-tests checkout> [pack file]
 */
import { execFileSync, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { gunzipSync, gzipSync } from 'node:zlib'

const HERE = dirname(fileURLToPath(import.meta.url))
export const SUITES = ['rv32ui', 'rv32um'] as const
export const DEFAULT_PACK = join(HERE, '..', '..', 'riscv-tests.json.gz')
const CROSS = process.env.RISCV_CROSS ?? 'riscv64-unknown-elf-'
const FLAGS = ['-march=rv32im_zicsr_zifencei', '-mabi=ilp32', '-static', '-mcmodel=medany', '-nostdlib', '-nostartfiles', '-Wl,--build-id=none', '-Wl,--no-warn-rwx-segments']

export interface RiscvTest {
  /** e.g. rv32ui-p-add */
  name: string
  /** the image, symbols stripped */
  elf: Buffer
  /** the address of the first test (tandem_tests in riscv_test.h) */
  start: number
  /** the address of the test's fail path (TEST_PASSFAIL's `fail`; `simple` has none) */
  fail: number | null
}

/** the cross compiler is on PATH */
export function haveCompiler(): boolean {
  return spawnSync(`${CROSS}gcc`, ['--version']).status === 0
}

/** The tests a suite's Makefrag lists (`rv32ui_sc_tests = \ ...`), in its order. */
export function testNames(src: string, suite: string): string[] {
  const text = readFileSync(join(src, 'isa', suite, 'Makefrag'), 'utf8')
  const m = new RegExp(`^${suite}_sc_tests\\s*=\\s*\\\\\\n((?:.*\\\\\\n)*)`, 'm').exec(text)
  if (!m) throw new Error(`${suite}/Makefrag: no ${suite}_sc_tests list`)
  return m[1].replace(/\\/g, ' ').split(/\s+/).filter(Boolean)
}

/**
 * Builds every test of SUITES from the checkout `src` into `cache` (a test is rebuilt only when its
 * sources, the environment or the flags change). Throws with the compiler's message.
 */
export function buildRiscvTests(src: string, cache: string): RiscvTest[] {
  mkdirSync(cache, { recursive: true })
  const env = ['riscv_test.h', 'link.ld'].map((f) => readFileSync(join(HERE, f)))
  const macros = readFileSync(join(src, 'isa', 'macros', 'scalar', 'test_macros.h'))
  const out: RiscvTest[] = []
  for (const suite of SUITES) {
    for (const t of testNames(src, suite)) {
      const source = join(src, 'isa', suite, `${t}.S`)
      // an rv32 test includes its rv64 counterpart (../rv64ui/add.S)
      const included = join(src, 'isa', suite.replace('32', '64'), `${t}.S`)
      const h = createHash('sha256').update(JSON.stringify(FLAGS))
      for (const b of [...env, macros, readFileSync(source), existsSync(included) ? readFileSync(included) : Buffer.alloc(0)]) h.update(b)
      const key = join(cache, `${suite}-p-${t}-${h.digest('hex').slice(0, 16)}`)
      if (!existsSync(`${key}.json`)) {
        const full = `${key}.full`
        const r = spawnSync(`${CROSS}gcc`, [...FLAGS, '-I', HERE, '-I', join(src, 'isa', 'macros', 'scalar'), '-T', join(HERE, 'link.ld'), source, '-o', full], { encoding: 'utf8' })
        if (r.status !== 0) throw new Error(`building ${suite}-p-${t}: ${r.error?.message ?? r.stderr}`)
        const syms = new Map(execFileSync(`${CROSS}nm`, [full], { encoding: 'utf8' }).split('\n').map((l) => [l.split(' ')[2], parseInt(l.split(' ')[0], 16)]))
        if (syms.get('tandem_tests') === undefined) throw new Error(`${suite}-p-${t}: no tandem_tests symbol (not built with scripts/riscv-tests/riscv_test.h?)`)
        execFileSync(`${CROSS}objcopy`, ['--strip-all', full, `${key}.elf`])
        writeFileSync(`${key}.tmp`, JSON.stringify({ start: syms.get('tandem_tests'), fail: syms.get('fail') ?? null }))
        renameSync(`${key}.tmp`, `${key}.json`)
      }
      const a = JSON.parse(readFileSync(`${key}.json`, 'utf8')) as { start: number; fail: number | null }
      out.push({ name: `${suite}-p-${t}`, elf: readFileSync(`${key}.elf`), ...a })
    }
  }
  return out
}

interface Pack {
  source: string
  tests: { name: string; start: number; fail: number | null; elf: string }[]
}

export function writePack(file: string, tests: RiscvTest[], source: string): void {
  const pack: Pack = { source, tests: tests.map((t) => ({ name: t.name, start: t.start, fail: t.fail, elf: t.elf.toString('base64') })) }
  writeFileSync(file, gzipSync(JSON.stringify(pack), { level: 9 }))
}

export function readPack(file: string): RiscvTest[] {
  const pack = JSON.parse(gunzipSync(readFileSync(file)).toString('utf8')) as Pack
  return pack.tests.map((t) => ({ ...t, elf: Buffer.from(t.elf, 'base64') }))
}

if (process.argv[1] && pathToFileURL(resolve(process.argv[1])).href === import.meta.url) {
  const [src, pack = DEFAULT_PACK] = process.argv.slice(2)
  if (!src) {
    console.error('usage: npx tsx scripts/riscv-tests/build.ts <riscv-tests checkout> [pack file]')
    process.exit(2)
  }
  const commit = spawnSync('git', ['-C', src, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).stdout.trim() || 'unknown commit'
  const tests = buildRiscvTests(src, join(src, '.tandem-build'))
  mkdirSync(dirname(pack), { recursive: true })
  writePack(pack, tests, `riscv-software-src/riscv-tests ${commit} (BSD licence), ${SUITES.join(' and ')} "p" tests, built by scripts/riscv-tests/build.ts`)
  console.log(`riscv-tests: ${tests.length} tests from ${src} (${commit}) into ${pack}`)
}

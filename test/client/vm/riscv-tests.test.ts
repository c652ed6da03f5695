import t from 'tap'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ENGINES, JitHart, Machine, RAM_BASE } from '../../../src/client/vm/index.js'
import { buildRiscvTests, haveCompiler, readPack, type RiscvTest } from '../../../scripts/riscv-tests/build.js'
import { rv } from '../../helpers/rv.js'

/**
 * The official RISC-V ISA tests (riscv-tests' rv32ui and rv32um, "p" environment) under both
 * engines, built with Tandem's own environment (scripts/riscv-tests/): each passes, and ends with
 * the same instruction count and state under the interpreter and the JIT. The images are built
 * from a riscv-tests checkout named by RISCV_TESTS (cached in the system's temporary folder), or
 * read from a pack scripts/riscv-tests/build.ts wrote, named by RISCV_TESTS_PACK. Neither is in
 * the repository (riscv-tests is another project's code, its images too): SKIP without them, or
 * without the cross compiler.
 */
const src = process.env.RISCV_TESTS
const pack = process.env.RISCV_TESTS_PACK
const source = src ? `built from ${src}` : `the pack ${pack}`
const skip = src
  ? haveCompiler()
    ? undefined
    : 'riscv64-unknown-elf-gcc not installed (apt-get install gcc-riscv64-unknown-elf)'
  : pack
    ? undefined
    : 'RISCV_TESTS (a riscv-tests checkout) or RISCV_TESTS_PACK (a pack built from one) not set: riscv-tests is not vendored'
const load = (): RiscvTest[] => (src ? buildRiscvTests(src, join(tmpdir(), 'tandem-riscv-tests')) : readPack(pack!))
/** the tests take at most ~1000 instructions: a stuck one stops here */
const LIMIT = 100_000

async function run(test: RiscvTest, engine: (typeof ENGINES)[number], patch?: (m: Machine) => void) {
  const m = new Machine({ image: test.elf, memory: 1 << 20, engine, maxInstructions: LIMIT })
  patch?.(m)
  const s = await m.run()
  return { s, compiled: m.hart instanceof JitHart ? m.hart.stats.compiled : 0 }
}

t.test(`riscv-tests rv32ui and rv32um pass under both engines, with the same state (${source})`, { skip }, async (t) => {
  const tests = load()
  t.ok(tests.length >= 50 && tests.some((x) => x.name === 'rv32ui-p-ma_data') && tests.some((x) => x.name === 'rv32um-p-mulhsu'), `${tests.length} tests`)
  let compiled = 0
  const failed: string[] = []
  for (const test of tests) {
    const ends: string[] = []
    for (const engine of ENGINES) {
      const { s, compiled: c } = await run(test, engine)
      compiled += c
      if (s.end !== 'exit' || s.exitCode !== 0) failed.push(`${test.name} under ${engine}: ${s.end}, exit code ${s.exitCode} (odd: test ${(s.exitCode ?? 0) >> 1} failed; >= 0x8000: trap ${(s.exitCode ?? 0) & 0x7fff}) ${s.message ?? ''}`)
      ends.push(`${s.instructions} ${s.stateHash}`)
    }
    t.equal(ends[1], ends[0], `${test.name}: the same count and state under ${ENGINES.join(' and ')}`)
  }
  t.same(failed, [], 'every test passes under every engine')
  t.ok(compiled > tests.length, `the JIT ran the tests as compiled blocks (${compiled} compiled)`)
})

t.test('a failing test is reported as failing (the environment\'s fail path reaches the finisher)', { skip }, async (t) => {
  for (const test of load().filter((x) => x.name === 'rv32ui-p-add' || x.name === 'rv32um-p-mul')) {
    for (const engine of ENGINES) {
      // the first test's first instruction becomes a jump to the fail path (TESTNUM is 0 there)
      const { s } = await run(test, engine, (m) => (m.mem.i32[(test.start - RAM_BASE) >>> 2] = rv.jal(0, test.fail! - test.start)))
      t.same([s.end, s.exitCode], ['exit', 1], `${test.name} under ${engine}: exit code 1 (test 0 failed)`)
    }
  }
})

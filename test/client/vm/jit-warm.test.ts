import t from 'tap'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { INNER, OUTER } from '../../helpers/jit-loop.js'

/**
 * A looping block's first runs are held short (jit.ts, COLD_BUDGET), so that V8 has seen the code
 * after its loop run before it compiles the loop. Without that, a block whose first run loops for
 * most of a slice gets its loop compiled on the stack with that code never run, and every later
 * call of the block deoptimizes on leaving the loop (`cpu10` had ~1 700 in two runs out of three).
 * The guest here calls such a block OUTER times; `node --trace-deopt` counts the deoptimizations
 * (`--no-concurrent-osr`: the loop is compiled at once, not when a background compile happens to
 * finish, so that without the held runs the storm comes every time: ~270).
 */
t.test('a block that loops for most of a slice is not deoptimized on every later call', async (t) => {
  const script = fileURLToPath(new URL('../../helpers/jit-loop.js', import.meta.url))
  const r = spawnSync(process.execPath, ['--trace-deopt', '--no-concurrent-osr', script], { encoding: 'utf8' })
  t.equal(r.status, 0, r.stderr)
  const lines = r.stdout.trim().split('\n')
  const bailouts = lines.filter((l) => l.startsWith('[bailout')).length
  const end = JSON.parse(lines.filter((l) => l.startsWith('{')).at(-1) ?? 'null') as { instret: number; x5: number; x6: number; x7: number; x8: number }
  let x7 = 0
  let x8 = 0
  for (let i = 0; i < OUTER * INNER; i++) {
    x7 = (x7 + 3) | 0
    x8 ^= x7
  }
  t.same(end, { instret: 1 + OUTER * (3 + INNER * 4 + 2), x5: 0, x6: 0, x7, x8 }, 'the guest ran to its end with the right registers')
  t.ok(bailouts < 20, `${bailouts} deoptimizations in the run (~${2 * OUTER} when the block's first runs are not held short)`)
})

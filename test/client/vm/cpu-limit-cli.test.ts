import t from 'tap'
import { tandem } from '../../helpers/peers.js'

type Summary = { end: string; instructions: number; seconds: number; cpuSeconds: number }

t.test('--cpu-limit outside 1..100 is refused with one clear line, exit status 1', async (t) => {
  for (const bad of ['0', 'abc', '101']) {
    const r = tandem(['vm', 'run', '--guest', 'cpu', `--cpu-limit=${bad}`])
    t.equal(r.status, 1, `'${bad}': exit status 1`)
    t.equal(r.stderr, `tandem: invalid --cpu-limit '${bad}': a whole percentage of one core, 1 to 100\n`, `'${bad}': the message, no stack trace`)
    t.equal(r.stdout, '', 'the guest did not run')
  }
  // vm start checks it before asking the host (nothing listens on port 1)
  const s = tandem(['vm', 'start', 'w', '--host', 'http://127.0.0.1:1', '--guest', 'cpu', '--cpu-limit', '0'])
  t.equal(s.status, 1)
  t.equal(s.stderr, "tandem: invalid --cpu-limit '0': a whole percentage of one core, 1 to 100\n")
})

t.test('a run at --cpu-limit 50 uses about half a core; without it, clearly more', async (t) => {
  // the same instructions both ways: the ratio CPU/wall is the share of a core the run got (on a
  // busy machine both get less, the limited run still about half of what the other got)
  const run = (...args: string[]) => {
    const r = tandem(['vm', 'run', '--guest', 'cpu', '--max-instructions', '10000000', '--json', ...args])
    t.equal(r.status, 124, `${args.join(' ') || 'no limit'}: ran to the instruction limit`)
    const s = JSON.parse(r.stdout) as Summary
    return { ...s, share: s.cpuSeconds / s.seconds }
  }
  const free = run()
  const half = run('--cpu-limit', '50')
  t.ok(half.share < 0.7, `at 50 %: ${half.cpuSeconds} s CPU in ${half.seconds} s (${(half.share * 100).toFixed(0)} % of a core)`)
  t.ok(half.share < free.share * 0.75, `unlimited: ${free.cpuSeconds} s CPU in ${free.seconds} s (${(free.share * 100).toFixed(0)} % of a core)`)
})

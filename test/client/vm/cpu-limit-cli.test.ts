import t from 'tap'
import { CLI, run, tandem } from '../../helpers/peers.js'

type Summary = { end: string; instructions: number; seconds: number; cpuSeconds: number; runCpuSeconds: number }

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

t.test('a run at --cpu-limit 50 uses about half a core; one beside it without the limit, clearly more', async (t) => {
  // Both at once, so that both see the same load from the rest of the machine; the unlimited one
  // runs twice the instructions, so that both run about as long. CPU/wall is the share of a core
  // the run got (more than 1 unlimited on a free machine: V8's own threads). The run's own CPU
  // (runCpuSeconds), not the process's: start-up and the closing hash are ~0.3 s of CPU outside the
  // run's span, which put a limited run at 108 % of a core once in CI. The limiter holds the main
  // thread to the share; V8's GC and compiler threads add ~20 % beside it (a free machine, 2026-12-02:
  // 74 % at 50, 134 % unlimited).
  const vm = async (n: number, ...args: string[]) => {
    const r = await run(process.execPath, [CLI, 'vm', 'run', '--guest', 'cpu', '--max-instructions', String(n), '--json', ...args], { timeout: 60_000 })
    t.equal(r.status, 124, `${args.join(' ') || 'no limit'}: ran to the instruction limit`)
    const s = JSON.parse(r.stdout) as Summary
    return { ...s, share: s.runCpuSeconds / s.seconds }
  }
  // on the interpreter: the cpu guest ends on its own after fewer instructions than the JIT runs
  // in the time the limiter needs to show (this is a test of the limiter, not of the engine)
  const [free, half] = await Promise.all([vm(60_000_000, '--engine', 'interp'), vm(30_000_000, '--engine', 'interp', '--cpu-limit', '50')])
  t.ok(half.share < 0.9, `at 50 %: ${half.runCpuSeconds} s CPU in ${half.seconds} s (${(half.share * 100).toFixed(0)} % of a core)`)
  t.ok(half.share < free.share * 0.85, `beside it unlimited: ${free.runCpuSeconds} s CPU in ${free.seconds} s (${(free.share * 100).toFixed(0)} % of a core)`)
})

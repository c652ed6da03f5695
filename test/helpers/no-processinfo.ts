/**
 * Loaded before each test file by `npm test` (test/tap-compiled.yaml, node-arg): keeps tap's
 * @tapjs/processinfo out of the processes the tests start. tap loads processinfo into every test
 * process (coverage and `tap --changed` bookkeeping; this project runs with coverage off) and, through
 * process-on-spawn, into every Node process started from one, whatever `env` the spawn gives: each
 * `tandem` CLI, host, VM and crash writer then pays ~0.3 s of CPU to start a module-hooks thread and
 * writes a JSON record at its exit (~650 such processes in a CI run, 2026-12-02: a tandem --version
 * took 0.45 s of CPU with it, 0.15 s without). Here the spawn hook is removed and processinfo's
 * --import taken out of NODE_OPTIONS, so children start as they would for a user. Should a tap
 * release change those internals, this does nothing and children start as before.
 */
const SPAWN_HOOKS = Symbol.for('process-on-spawn@*:singletonId')
const hooks = (globalThis as unknown as Record<symbol, { listeners?: unknown[] } | undefined>)[SPAWN_HOOKS]
if (hooks && Array.isArray(hooks.listeners)) hooks.listeners = []
const options = process.env.NODE_OPTIONS
if (options !== undefined) {
  const kept = options
    .split(/\s+/)
    .filter((o) => o && !/@tapjs[/\\]processinfo/.test(o))
    .join(' ')
  if (kept) process.env.NODE_OPTIONS = kept
  else delete process.env.NODE_OPTIONS
}
export {}

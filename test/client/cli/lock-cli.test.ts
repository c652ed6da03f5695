import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tandem, tmp, run, CLI } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

t.test('lock init, run and ls from the command line', async (t) => {
  const d = tmp(t)
  const ls = join(d, 'ls')
  t.equal(tandem(['lock', 'init', '--lockspace', ls, '--hosts', '8', '--locks', '16']).status, 0)
  const again = tandem(['lock', 'init', '--lockspace', ls])
  t.equal(again.status, 1)
  t.match(again.stderr, /refusing to overwrite/)
  const foreign = join(d, 'foreign')
  writeFileSync(foreign, 'not a lockspace at all')
  const bad = tandem(['lock', 'ls', '--lockspace', foreign])
  t.equal(bad.status, 1)
  t.match(bad.stderr, /^tandem: '.*foreign' is not a Tandem lockspace/)
  const missing = tandem(['lock', 'run', 'x', '--lockspace', join(d, 'nope'), '--host', 'a', '--', 'true'])
  t.match(missing.stderr, /does not exist \(create it with 'tandem lock init/)
  // the command gets the token, and lock run exits with the command's status
  const r = tandem(['lock', 'run', 'res', '--lockspace', ls, '--host', 'a', '--', 'sh', '-c', 'echo "gen=$TANDEM_LOCK_GENERATION lock=$TANDEM_LOCK_NAME"; exit 7'])
  t.equal(r.status, 7)
  t.match(r.stdout, /gen=1 lock=res/)
  const r2 = tandem(['lock', 'run', 'res', '--lockspace', ls, '--host', 'b', '--', 'sh', '-c', 'echo gen=$TANDEM_LOCK_GENERATION'])
  t.match(r2.stdout, /gen=2/, 'a new owner, a new generation')
  const shown = JSON.parse(tandem(['lock', 'ls', '--lockspace', ls, '--json']).stdout)
  t.same(shown.locks.map((l: { name: string; state: string; generation: number }) => [l.name, l.state, l.generation]), [['res', 'free', 2]])
  // b reused the slot a left (a new generation, so nothing of a's carries over)
  t.same(shown.hosts.map((h: { name: string; state: string; generation: number }) => [h.name, h.state, h.generation]), [['b', 'left', 2]])
  const bad2 = tandem(['lock', 'run', 'res', '--lockspace', ls, '--host', 'x'.repeat(80), '--', 'true'])
  t.match(bad2.stderr, /host name must be 1 to 64 bytes/)
})

t.test('lock ls --server reads a running server', async (t) => {
  const s = await startServer(t)
  const r = await run(process.execPath, [CLI, 'lock', 'ls', '--server', `http://127.0.0.1:${s.httpPort}`, '--json'])
  t.equal(r.status, 0, r.stderr)
  const shown = JSON.parse(r.stdout) as { hosts: { name: string }[]; locks: unknown[] }
  t.same(shown.locks, [])
  t.same(shown.hosts.map((h) => h.name), [s.locks.hostName], 'the server itself is a host')
  const down = await run(process.execPath, [CLI, 'lock', 'ls', '--server', 'http://127.0.0.1:1'])
  t.equal(down.status, 1)
  t.match(down.stderr, /could not reach http:\/\/127\.0\.0\.1:1/)
})

import t from 'tap'
import { rng, tmp } from '../../helpers/peers.js'
import { initLockspace, killMatrix, killRun, startPair } from '../../helpers/ft-cli.js'

const CKPT = ['--ft-mode', 'checkpoint']

t.test('checkpoint mode, two processes: the backup applies every epoch and ends in the primary\'s state', async (t) => {
  const dir = tmp(t, 'tandem-ckpt-cli-')
  const ls = initLockspace(dir)
  const { backup, primary } = await startPair(t, { args: ['--guest', 'ticker', '--ft-loss-ms', '3000'], primaryArgs: [...CKPT, '--ft-epoch-ms', '10'], lockspace: ls })
  const [p, b] = await Promise.all([primary.exited, backup.exited])
  t.equal(p.code, 0, `primary: ${primary.stderr().slice(-400)}`)
  t.equal(b.code, 0, `backup: ${backup.stderr().slice(-400)}`)
  const ps = JSON.parse(primary.stdout())
  const bs = JSON.parse(backup.stdout())
  t.equal(bs.instructions, ps.instructions, 'same instruction count')
  t.equal(bs.stateHash, ps.stateHash, 'same final state: memory, registers, devices')
  const c = ps.ft.checkpoint
  t.match(ps.ft, { role: 'primary', outcome: 'paired' })
  // ticker runs ~0.3 s under the JIT: 10 ms epochs give a dozen or more
  t.ok(c.epochs >= 8 && c.acked === c.epochs, `${c.epochs} epochs, ${c.acked} acknowledged`)
  t.equal(bs.ft.checkpoint.epochs, c.epochs, 'the backup applied each')
  t.ok(c.pagesDiff > 0, `${c.pagesDiff} pages sent as diffs`)
})

t.test('checkpoint mode: SIGKILL of the primary under kv load — the backup goes live from its last epoch, every acknowledged key is there', async (t) => {
  await killMatrix(t, 1848, 2, { primaryArgs: CKPT })
})

t.test('checkpoint mode: SIGKILL of the backup under kv load — the primary runs on alone, every acknowledged key is there', async (t) => {
  await killRun(t, 0, rng(7), { victim: 'backup', primaryArgs: CKPT })
})

import t from 'tap'
import { spawn } from 'node:child_process'
import { closeSync, existsSync, openSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, needs, run, shmTmp, tandem } from '../../helpers/peers.js'

/** `tandem vm run|restore … --json` in the background: its console (stderr) as it grows, its end. */
function background(args: string[]) {
  const p = spawn(process.execPath, [CLI, 'vm', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let console = ''
  let stdout = ''
  p.stderr.on('data', (d: Buffer) => (console += d.toString()))
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  const ended = new Promise<number | null>((r) => p.on('exit', (code) => r(code)))
  const synced = () => Math.max(0, ...[...console.matchAll(/disklog: synced (\d+)/g)].map((m) => Number(m[1])))
  return {
    synced,
    console: () => console,
    summary: () => JSON.parse(stdout) as { end: string },
    ended,
    async until(n: number) {
      for (let i = 0; i < 400 && synced() < n; i++) await new Promise((r) => setTimeout(r, 25))
      return synced()
    },
    stop: () => p.kill('SIGTERM'),
  }
}

t.test('vm checkpoint --control of disklog on a local VMDK (copy-and-commit), then vm restore on the copy: the log goes on with no gap', needs('qemu-img'), async (t) => {
  const d = shmTmp(t, 'tandem-ckpt-cli-')
  const disk = join(d, 'log.vmdk')
  t.equal(tandem(['disk', 'create', '--size', '16M', disk]).status, 0)
  const sock = join(d, 'vm.sock')
  const vm = background(['run', '--guest', 'disklog', '--memory', '16M', '--disk', disk, '--control', sock])
  t.ok((await vm.until(64)) >= 64, 'disklog writes its log')
  const file = join(d, 'vm.ckpt')
  const ck = await run(process.execPath, [CLI, 'vm', 'checkpoint', '--control', sock, '--file', file, '--afterwards', 'copy-and-commit', '--json'])
  t.equal(ck.status, 0, ck.stderr)
  const s = JSON.parse(ck.stdout) as { instructions: number; stunMs: number; disk: string; afterwards: string; cowPages: number }
  t.match(s, { afterwards: 'copy-and-commit', disk: join(d, 'vm-disk.vmdk') })
  t.ok(s.stunMs < 100, `stun ${s.stunMs.toFixed(3)} ms`)
  const atCheckpoint = vm.synced()
  t.ok((await vm.until(atCheckpoint + 64)) >= atCheckpoint + 64, 'the VM ran on after the checkpoint')
  vm.stop()
  t.equal(await vm.ended, 130, 'stopped by SIGTERM')
  // the live disk: the delta committed back into it, one consistent file
  t.equal((await run('qemu-img', ['check', disk])).status, 0, 'qemu-img check: the live disk is clean')
  t.notMatch((await run('qemu-img', ['info', disk])).stdout, /backing file/, 'and has no extra layer')
  t.notMatch((await run('qemu-img', ['info', s.disk])).stdout, /backing file/, 'the checkpoint\'s disk is standalone')
  t.ok(existsSync(s.disk))
  // restored on the copy: it goes on from its saved state (no new boot: no "resumed after" line)
  const back = background(['restore', file, '--disk', s.disk])
  t.ok((await back.until(atCheckpoint + 128)) >= atCheckpoint + 128, `the restored VM logs on (${back.synced()} records)`)
  t.notMatch(back.console(), /resumed after/, 'without booting again')
  back.stop()
  t.equal(await back.ended, 130)
  const last = back.synced()
  // a fresh boot of disklog scans the log: every record up to the last synced is there, in order
  const scan = tandem(['vm', 'run', '--guest', 'disklog', '--memory', '16M', '--disk', s.disk, '--max-instructions', '40000000'])
  const resumed = Number(/disklog: resumed after (\d+)/.exec(scan.stdout + scan.stderr)?.[1] ?? -1)
  t.ok(resumed >= last, `a new boot on the restored disk finds ${resumed} records, at least the ${last} the restored VM synced: memory and disk agreed`)
})

t.test('bad checkpoint requests: one line, exit 1', async (t) => {
  const d = shmTmp(t, 'tandem-ckpt-cli-')
  const raw = join(d, 'd.raw')
  closeSync(openSync(raw, 'w'))
  truncateSync(raw, 8 << 20)
  const sock = join(d, 'vm.sock')
  const vm = background(['run', '--guest', 'disklog', '--memory', '16M', '--disk', raw, '--control', sock])
  await vm.until(8)
  const r = await run(process.execPath, [CLI, 'vm', 'checkpoint', '--control', sock, '--file', join(d, 'x.ckpt')])
  t.equal(r.status, 1)
  t.match(r.stderr, /^tandem: this VM's disk cannot be switched onto a new layer/, 'a raw disk cannot be checkpointed')
  const nosock = await run(process.execPath, [CLI, 'vm', 'checkpoint', '--control', join(d, 'none.sock'), '--file', join(d, 'x.ckpt')])
  t.equal(nosock.status, 1)
  t.match(nosock.stderr, /could not reach unix:.*none\.sock: ENOENT/)
  const both = await run(process.execPath, [CLI, 'vm', 'checkpoint', 'x', '--file', join(d, 'x.ckpt')])
  t.match(both.stderr, /give NAME --host URL, or --control PATH/)
  const how = await run(process.execPath, [CLI, 'vm', 'checkpoint', '--control', sock, '--file', 'x', '--afterwards', 'later'])
  t.match(how.stderr, /invalid --afterwards 'later'/)
  vm.stop()
  await vm.ended
  const bad = tandem(['vm', 'restore', raw])
  t.equal(bad.status, 1)
  t.match(bad.stderr, /is not a Tandem checkpoint \(no TNDMCKPT header\)/)
})

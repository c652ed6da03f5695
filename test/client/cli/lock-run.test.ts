import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, openSync, readFileSync, readdirSync, writeSync, closeSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, ROOT, run, tandem, tmp, within } from '../../helpers/peers.js'
import { pathToFileURL } from 'node:url'
import type { WatchdogLink as Link } from '../../../src/client/locks/index.js'

// lock run's own exit statuses, as the README documents them
const BUSY = 75
const TIMED_OUT = 124
const LOCKSPACE = 74
const RELEASE_FAILED = 71
const LEASE_LOST = 70

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A `lock run` in the background; `ready` resolves once its command has started (it touches `mark`). */
function hold(t: Test, args: string[], script: string, mark: string): { proc: ChildProcess; exit: Promise<number | null>; stderr: () => string; ready: Promise<void> } {
  const proc = spawn(process.execPath, [CLI, 'lock', 'run', ...args, '--', 'sh', '-c', `touch ${mark}; ${script}`], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] })
  let err = ''
  proc.stderr!.on('data', (d) => (err += d))
  const exit = new Promise<number | null>((r) => proc.on('exit', (c) => r(c)))
  t.teardown(() => {
    try {
      process.kill(-proc.pid!, 'SIGKILL')
    } catch {
      /* gone */
    }
  })
  const ready = (async () => {
    for (let i = 0; i < 400 && !existsSync(mark); i++) await sleep(25)
    if (!existsSync(mark)) throw new Error(`lock run ${args.join(' ')} never started its command: ${err}`)
  })()
  return { proc, exit, stderr: () => err, ready }
}

/**
 * A lockspace with a 4 s lease: on a loaded machine (CI runs other files beside this one) a
 * `lock run` starting its watchdog process outlived the default 2 s lease before its command started
 * ("host 'A' has no valid lease"); no test here measures the lease.
 */
function lockspace(t: Test): { dir: string; ls: string } {
  const dir = tmp(t, 'tandem-lockrun-')
  const ls = join(dir, 'ls')
  t.equal(tandem(['lock', 'init', '--lockspace', ls, '--hosts', '8', '--locks', '16', '--lease-ms', '4000']).status, 0)
  return { dir, ls }
}

t.test('exit statuses: busy, timed out (and says after how long), lockspace error, the command\'s own', async (t) => {
  const { dir, ls } = lockspace(t)
  const a = hold(t, ['res', '--lockspace', ls, '--host', 'A'], 'sleep 30', join(dir, 'a.started'))
  await a.ready
  const busy = await run(process.execPath, [CLI, 'lock', 'run', 'res', '--lockspace', ls, '--host', 'B', '--', 'true'])
  t.equal(busy.status, BUSY, busy.stderr)
  t.match(busy.stderr, /^tandem: lock 'res' is held by host 'A' \(generation 1\)\n$/)
  const waited = await run(process.execPath, [CLI, 'lock', 'run', 'res', '--lockspace', ls, '--host', 'B', '--wait', '1', '--', 'true'])
  t.equal(waited.status, TIMED_OUT, waited.stderr)
  t.match(waited.stderr, /held by host 'A'.*timed out after 1 s/)
  // while B waited, `lock ls` showed it waiting (an exclusive, unmanaged waiter)
  const b = hold(t, ['res', '--lockspace', ls, '--host', 'B', '--wait', '20'], 'true', join(dir, 'b.started'))
  let waiting: string[] = []
  for (let i = 0; i < 40 && waiting.length === 0; i++) {
    await sleep(100)
    const shown = JSON.parse(tandem(['lock', 'ls', '--lockspace', ls, '--json']).stdout) as { locks: { name: string; waiting: string[] }[] }
    waiting = shown.locks.find((l) => l.name === 'res')?.waiting ?? []
  }
  t.same(waiting, ['B'], 'an unmanaged waiter is listed as waiting')
  process.kill(-a.proc.pid!, 'SIGTERM')
  t.equal(await a.exit, 143, 'A: its command\'s own status (SIGTERM: 128 + 15)')
  t.equal(await b.exit, 0, 'B ran once A was done')
  const missing = await run(process.execPath, [CLI, 'lock', 'run', 'res', '--lockspace', join(dir, 'nope'), '--host', 'B', '--', 'true'])
  t.equal(missing.status, LOCKSPACE, missing.stderr)
  const fd = openSync(ls, 'r+')
  writeSync(fd, Buffer.from('garbage!'), 0, 8, 0) // the header
  closeSync(fd)
  const damaged = await run(process.execPath, [CLI, 'lock', 'run', 'res', '--lockspace', ls, '--host', 'B', '--', 'true'])
  t.equal(damaged.status, LOCKSPACE, damaged.stderr)
  t.match(damaged.stderr, /not a Tandem lockspace/)
})

t.test('--wait 0 does not block while another live process uses the same --host name', async (t) => {
  const { dir, ls } = lockspace(t)
  const a = hold(t, ['one', '--lockspace', ls, '--host', 'A'], 'sleep 30', join(dir, 'a.started'))
  await a.ready
  const t0 = Date.now()
  const dup = await run(process.execPath, [CLI, 'lock', 'run', 'two', '--lockspace', ls, '--host', 'A', '--', 'true'], { timeout: 20_000 })
  const took = Date.now() - t0
  t.equal(dup.status, BUSY, dup.stderr)
  t.match(dup.stderr, /host name 'A' is in use by a live process/)
  t.ok(took < 10_000, `answered in ${took} ms`)
})

t.test('release failed: lock run says so with its own status, after the command\'s', async (t) => {
  const { ls } = lockspace(t)
  // the command damages its own lock record (found by its name), so the release cannot succeed
  const damage = `node -e "const fs=require('fs');const b=fs.readFileSync('${ls}');for(let o=0;o<b.length;o+=512){if(b.toString('utf8',o+32,o+41)==='precious\\0'){const fd=fs.openSync('${ls}','r+');fs.writeSync(fd,Buffer.alloc(16,0xa5),0,16,o+8);fs.closeSync(fd)}}"`
  const r = await run(process.execPath, [CLI, 'lock', 'run', 'precious', '--lockspace', ls, '--host', 'A', '--', 'sh', '-c', `${damage}; exit 3`])
  t.equal(r.status, RELEASE_FAILED, r.stderr)
  t.match(r.stderr, /the command ended \(status 3\) but could not release: lock 'precious'/)
})

t.test('--managed --yield: the owner\'s command is asked to end, and the lock passes to the requester', async (t) => {
  const { dir, ls } = lockspace(t)
  const log = join(dir, 'a.log')
  const a = hold(t, ['vm', '--lockspace', ls, '--host', 'A', '--managed', '--yield'], `trap 'echo term >> ${log}; exit 0' TERM; echo "$TANDEM_LOCK_GENERATION" >> ${log}; while :; do sleep 0.05; done`, join(dir, 'a.started'))
  await a.ready
  const b = await run(process.execPath, [CLI, 'lock', 'run', 'vm', '--lockspace', ls, '--host', 'B', '--managed', '--wait', '20', '--', 'sh', '-c', 'echo "$TANDEM_LOCK_GENERATION"'], { timeout: 30_000 })
  t.equal(b.status, 0, b.stderr)
  t.equal(await a.exit, 0, 'the owner\'s command ended on SIGTERM, cleanly')
  const aLog = readFileSync(log, 'utf8').trim().split('\n')
  t.equal(aLog[1], 'term', 'A\'s command got SIGTERM')
  t.equal(Number(b.stdout.trim()), Number(aLog[0]) + 1, 'B holds the next generation')
  t.match(a.stderr(), /host 'B' asks for lock 'vm'/)
  const yieldAlone = tandem(['lock', 'run', 'vm', '--lockspace', ls, '--host', 'C', '--yield', '--', 'true'])
  t.match(yieldAlone.stderr, /--yield needs --managed/)
})

/** The pid of the watchdog `lock run` `pid` started (its child running watchdog.js). */
function watchdogOf(pid: number): number | null {
  for (const p of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (ppid === pid && readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('watchdog.js')) return Number(p)
    } catch {
      /* gone */
    }
  }
  return null
}

t.test('a watchdog that dies takes the command with it: no command runs unfenced', async (t) => {
  const { dir, ls } = lockspace(t)
  const a = hold(t, ['res', '--lockspace', ls, '--host', 'A'], 'sleep 30', join(dir, 'a.started'))
  await a.ready
  const dog = watchdogOf(a.proc.pid!)
  t.ok(dog, 'found the watchdog')
  process.kill(dog!, 'SIGKILL')
  const code = await within(a.exit, 10_000, 'still running')
  t.equal(code, LEASE_LOST, a.stderr())
  t.match(a.stderr(), /the watchdog ended \(SIGKILL\)/)
})

t.test('WatchdogLink: writes after the watchdog died are no EPIPE crash, but one onLost', async (t) => {
  const group = spawn('sleep', ['30'], { detached: true, stdio: 'ignore' })
  t.teardown(() => group.kill('SIGKILL'))
  // the built module: it starts the built watchdog.js next to it, as `lock run` does
  const { WatchdogLink } = (await import(pathToFileURL(join(ROOT, 'dist', 'src', 'client', 'locks', 'watchdog-link.js')).href)) as { WatchdogLink: typeof Link }
  const link = new WatchdogLink()
  const lost: string[] = []
  link.onLost = (r) => lost.push(r)
  link.group(group.pid!)
  link.deadline(performance.now() + 60_000)
  await sleep(1500) // let it start and read its input
  t.same(lost, [], 'the watchdog runs')
  process.kill(link.pid!, 'SIGKILL')
  // Block this thread without running the event loop, so the watchdog's exit is not yet seen:
  // the next writes meet a pipe with no reader (EPIPE), as in `lock run` under load.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 300)
  for (let i = 0; i < 3; i++) link.deadline(performance.now() + 60_000)
  await sleep(500)
  t.equal(lost.length, 1, `lost once: ${lost.join('; ')}`)
  t.match(lost[0], /EPIPE|SIGKILL/)
})

t.test('lock ls does not call a host alive that died before it looked', async (t) => {
  const { dir, ls } = lockspace(t)
  const a = hold(t, ['res', '--lockspace', ls, '--host', 'A'], 'sleep 30', join(dir, 'a.started'))
  await a.ready
  process.kill(a.proc.pid!, 'SIGKILL') // lock run only: its slot still says live
  await a.exit
  await sleep(300)
  const r = await run(process.execPath, [CLI, 'lock', 'ls', '--lockspace', ls, '--json'])
  t.equal(r.status, 0, r.stderr)
  const hosts = (JSON.parse(r.stdout) as { hosts: { name: string; alive: boolean | null }[] }).hosts
  t.same(hosts.map((h) => [h.name, h.alive]), [['A', false]], 'dead after a lease of watching, not "alive"')
  const text = await run(process.execPath, [CLI, 'lock', 'ls', '--lockspace', ls])
  t.match(text.stdout, /A\s+no\s/)
})

t.test('a lock claimed by another host (LockManager.claim) kills the command: lease lost', async (t) => {
  const { dir, ls } = lockspace(t)
  const a = hold(t, ['vm/x', '--lockspace', ls, '--host', 'A'], 'sleep 30', join(dir, 'a.started'))
  await a.ready
  const { FileLockStorage, LockManager } = await import('../../../src/disk-formats/lock-region/index.js')
  const st = await FileLockStorage.open(ls)
  const b = new LockManager(st, 'B')
  await b.join()
  t.teardown(async () => {
    await b.leave()
    await st.close()
  })
  t.match(await b.claim('vm/x', 1), { generation: 2 }, 'B claims generation 1 from the live holder A')
  const code = await within(a.exit, 10_000, 'still running')
  t.equal(code, LEASE_LOST, a.stderr())
  t.match(a.stderr(), /lock 'vm\/x' lost \(lock 'vm\/x' \(generation 1\) is now held by host 'B' at generation 2\); the command was killed/)
  t.ok(b.holds('vm/x'), 'B keeps it')
})

import { open } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Command } from 'commander'
import { StorageError } from '../../disk-formats/errors.js'
import { regionSize } from '../../disk-formats/lock-region/index.js'
import type * as Locks from '../locks/index.js'
import { loadLazy } from './lazy.js'

/** The lock manager is loaded by the `lock` commands that use it: the other commands start faster without it. */
const loadLocks = () => loadLazy<typeof Locks>('../locks/index.js')

/** node:child_process, loaded when a command spawns: it loads net, stream and dgram, ~4 ms of every command's start. */
const childProcess = () => createRequire(import.meta.url)('node:child_process') as typeof import('node:child_process')

const WATCHDOG = join(dirname(fileURLToPath(import.meta.url)), '..', 'locks', 'watchdog.js')

/** How an LU is named: on `tandem serve`, its datastore's lockspace is iqn.2026-11.local.tandem:lockspace, LUN 0. */
const ISCSI_LOCKSPACE = 'iscsi://HOST[:PORT]/IQN/LUN (locked by SCSI COMPARE AND WRITE)'

function int(v: string, what: string): number {
  const n = Number(v)
  if (!Number.isInteger(n) || n <= 0) throw new StorageError('InvalidArgument', `invalid ${what} '${v}'`)
  return n
}

export function lockCommand(run: (fn: () => Promise<number | void>) => Promise<void>): Command {
  const lock = new Command('lock').description('on-disk locks shared by many hosts through the storage (no lock server)')

  lock
    .command('init')
    .description('create and initialise a lockspace file, or one at the start of an iSCSI LU')
    .requiredOption('--lockspace <path>', `the lockspace file (created; must not exist or be empty), or ${ISCSI_LOCKSPACE} (its first sector must be zero)`)
    .option('--hosts <n>', 'host slots', '64')
    .option('--locks <n>', 'lock records', '256')
    .option('--heartbeat-ms <ms>', 'heartbeat interval', '250')
    .option('--lease-ms <ms>', 'a heartbeat silent this long is dead; a crashed host\'s locks are taken over after it', '2000')
    .option('--fence-margin-ms <ms>', 'holders stop using a lock this long before it may be taken', '500')
    .action((o) =>
      run(async () => {
        const maxHosts = int(o.hosts, 'host count')
        const maxLocks = int(o.locks, 'lock count')
        const size = regionSize({ maxHosts, maxLocks })
        const { isIscsiUri, openLockStorage, initLockspace } = await loadLocks()
        if (!isIscsiUri(o.lockspace)) {
          const fh = await open(o.lockspace, 'a+').catch((e) => {
            throw new StorageError('IoError', `could not create '${o.lockspace}': ${e.message}`)
          })
          try {
            const st = await fh.stat()
            if (st.size === 0) await fh.truncate(size)
            else if (st.size !== size) throw new StorageError('Exists', `'${o.lockspace}' exists (${st.size} bytes) and is not an empty ${size}-byte lockspace; refusing to overwrite it`)
          } finally {
            await fh.close()
          }
        }
        // on an LU the lockspace is its first `size` bytes
        const s = await openLockStorage(o.lockspace, { size })
        try {
          const h = await initLockspace(s, { maxHosts, maxLocks, heartbeatMs: int(o.heartbeatMs, 'heartbeat'), leaseMs: int(o.leaseMs, 'lease'), fenceMarginMs: int(o.fenceMarginMs, 'fence margin') })
          process.stdout.write(`Initialised lockspace '${o.lockspace}': ${h.maxHosts} hosts, ${h.maxLocks} locks, heartbeat ${h.heartbeatMs} ms, lease ${h.leaseMs} ms\n`)
        } finally {
          await s.close()
        }
      }),
    )

  lock
    .command('ls')
    .description('show hosts and locks of a lockspace (or of a server\'s datastore)')
    .option('--lockspace <path>', `the lockspace file, or ${ISCSI_LOCKSPACE}`)
    .option('--server <url>', 'a tandem serve, e.g. http://127.0.0.1:8080')
    .option('--json', 'JSON output', false)
    .action((o) =>
      run(async () => {
        let view: { hosts: unknown[]; locks: unknown[] }
        if (o.server) {
          const base = String(o.server).replace(/\/$/, '')
          const [h, l] = await Promise.all([fetch(`${base}/api/v1/hosts`), fetch(`${base}/api/v1/locks`)]).catch((e) => {
            throw new StorageError('IoError', `could not reach ${base}: ${e.message}`)
          })
          if (!h.ok || !l.ok) throw new StorageError('IoError', `${base} answered ${h.status}/${l.status}`)
          view = { hosts: ((await h.json()) as { hosts: unknown[] }).hosts, locks: ((await l.json()) as { locks: unknown[] }).locks }
        } else if (o.lockspace) {
          const { openLockStorage, LockManager } = await loadLocks()
          const s = await openLockStorage(o.lockspace)
          try {
            const m = new LockManager(s, 'tandem-ls')
            view = await m.view()
            // liveness needs two observations a heartbeat apart
            await new Promise((r) => setTimeout(r, m.header.heartbeatMs * 1.5))
            view = await m.view()
          } finally {
            await s.close()
          }
        } else throw new StorageError('InvalidArgument', 'give --lockspace PATH or --server URL')
        if (o.json) {
          process.stdout.write(JSON.stringify(view, null, 2) + '\n')
          return
        }
        const hosts = view.hosts as { slot: number; name: string; alive: boolean; heartbeatAgeMs: number | null; generation: number }[]
        const locks = view.locks as { name: string; state: string; managed: boolean; owner: string | null; generation: number; sharedHolders: string[]; waiting: string[] }[]
        let out = 'HOSTS\nslot  name                             alive  generation  heartbeat-age\n'
        for (const h of hosts) out += `${String(h.slot).padEnd(6)}${h.name.padEnd(33)}${(h.alive ? 'yes' : 'no').padEnd(7)}${String(h.generation).padEnd(12)}${h.heartbeatAgeMs ?? '-'} ms\n`
        out += '\nLOCKS\nname                             state      managed  generation  owner / holders\n'
        for (const l of locks) {
          const who = l.owner ?? (l.sharedHolders.length ? l.sharedHolders.join(',') : '-')
          out += `${l.name.padEnd(33)}${l.state.padEnd(11)}${(l.managed ? 'yes' : 'no').padEnd(9)}${String(l.generation).padEnd(12)}${who}${l.waiting.length ? `  (waiting: ${l.waiting.join(',')})` : ''}\n`
        }
        process.stdout.write(out)
      }),
    )

  lock
    .command('run')
    .description('hold a lock while a command runs; the command gets the fencing token in TANDEM_LOCK_GENERATION and is killed if the lease is lost')
    .argument('<name>', 'the lock')
    .argument('<command...>', 'the command and its arguments (after --)')
    .requiredOption('--lockspace <path>', `the lockspace file, or ${ISCSI_LOCKSPACE}`)
    .requiredOption('--host <name>', 'this host\'s name (its heartbeat slot is found or claimed by name)')
    .option('--shared', 'take the lock in shared mode', false)
    .option('--managed', 'managed mode: ownership passes by the owner\'s rewrite when another host asks', false)
    .option('--wait <seconds>', 'wait this long for the lock (default: try once)', '0')
    .action((name: string, command: string[], o) =>
      run(async () => {
        const waitMs = Number(o.wait) * 1000
        if (!Number.isFinite(waitMs) || waitMs < 0) throw new StorageError('InvalidArgument', `invalid --wait '${o.wait}'`)
        const { openLockStorage, LockManager } = await loadLocks()
        const storage = await openLockStorage(o.lockspace)
        const mgr = new LockManager(storage, o.host)
        await mgr.join()
        let held
        try {
          held = await mgr.acquire(name, { shared: o.shared, managed: o.managed, waitMs })
        } catch (e) {
          await mgr.leave().catch(() => undefined)
          await storage.close()
          throw e
        }
        const dog = childProcess().spawn(process.execPath, [WATCHDOG], { detached: true, stdio: ['pipe', 'ignore', 'inherit'] })
        dog.unref()
        const toNs = (deadlineMs: number) => process.hrtime.bigint() + BigInt(Math.floor((deadlineMs - performance.now()) * 1e6))
        const feed = (line: string) => {
          if (dog.stdin && !dog.stdin.destroyed) dog.stdin.write(line + '\n')
        }
        feed(`D ${toNs(mgr.fenceDeadline)}`)
        const child = childProcess().spawn(command[0], command.slice(1), {
          detached: true,
          stdio: 'inherit',
          env: { ...process.env, TANDEM_LOCK_GENERATION: String(held.generation), TANDEM_LOCK_NAME: name, TANDEM_LOCK_HOST: o.host },
        })
        if (child.pid) feed(`P ${child.pid}`)
        let fenced = ''
        mgr.onRenew = (deadline) => feed(`D ${toNs(deadline)}`)
        mgr.onFence = (reason) => {
          fenced = reason
          try {
            if (child.pid) process.kill(-child.pid, 'SIGKILL')
          } catch {
            /* gone */
          }
        }
        const forward = (sig: NodeJS.Signals) => {
          try {
            if (child.pid) process.kill(-child.pid, sig)
          } catch {
            /* gone */
          }
        }
        process.on('SIGTERM', () => forward('SIGTERM'))
        process.on('SIGINT', () => forward('SIGINT'))
        const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
          child.on('exit', (c, s) => res({ code: c, signal: s }))
          child.on('error', (e) => {
            process.stderr.write(`tandem: could not run '${command[0]}': ${e.message}\n`)
            res({ code: 127, signal: null })
          })
        })
        feed('S')
        dog.stdin?.end()
        await mgr.leave().catch(() => undefined)
        await storage.close()
        if (fenced) {
          process.stderr.write(`tandem: lock '${name}' lost (${fenced}); the command was killed\n`)
          return 1
        }
        return code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1)
      }),
    )
  return lock
}

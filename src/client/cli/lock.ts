import { open } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { constants as osConstants } from 'node:os'
import { Command } from 'commander'
import { isStorageError, StorageError } from '../../disk-formats/errors.js'
import { regionSize } from '../../disk-formats/lock-region/layout.js'
import type * as Region from '../../disk-formats/lock-region/index.js'
import type * as Locks from '../locks/index.js'
import { loadLazy } from './lazy.js'
import { baseUrl, isApiError, requestJson } from '../api/http.js'

/** The lock manager is loaded by the `lock` commands that use it: the other commands start faster without it. */
const loadLocks = async () => {
  const [region, locks] = await Promise.all([loadLazy<typeof Region>('../../disk-formats/lock-region/index.js'), loadLazy<typeof Locks>('../locks/index.js')])
  return { ...region, ...locks }
}

/** node:child_process, loaded when a command spawns: it loads net, stream and dgram, ~4 ms of every command's start. */
const childProcess = () => createRequire(import.meta.url)('node:child_process') as typeof import('node:child_process')

/** `lock run`'s own exit statuses (README "Exit status of lock run"); any other is the command's. */
export const LOCK_RUN_EXIT = { busy: 75, timedOut: 124, lockspace: 74, releaseFailed: 71, leaseLost: 70 } as const
const EXIT_MEANING: Record<keyof typeof LOCK_RUN_EXIT, string> = {
  busy: 'the command did not run: the lock (or the --host name) is in use by a live host',
  timedOut: 'the command did not run: --wait ran out (the message says after how many seconds)',
  lockspace: 'the command did not run: the lockspace is missing, damaged or unreadable',
  releaseFailed: 'the command ran, but the lock could not be released (the message gives its status)',
  leaseLost: 'the command ran and was killed: the lease was lost, another host claimed the lock, or its watchdog died',
}

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
          const base = baseUrl(o.server)
          const get = <T>(path: string) =>
            requestJson<T>(base, 'GET', path).catch((e: unknown) => {
              throw isApiError(e) ? new StorageError('IoError', `${base} answered ${e.status}: ${e.message}`) : e
            })
          const [h, l] = await Promise.all([get<{ hosts: unknown[] }>('/api/v1/hosts'), get<{ locks: unknown[] }>('/api/v1/locks')])
          view = { hosts: h.hosts, locks: l.locks }
        } else if (o.lockspace) {
          const { openLockStorage, LockspaceObserver } = await loadLocks()
          const s = await openLockStorage(o.lockspace)
          try {
            const m = new LockspaceObserver(s)
            let v = await m.view()
            // A host is alive once seen advancing, dead once silent for a whole lease: watch until
            // every live-marked host is one or the other (at most a lease and a heartbeat).
            const until = performance.now() + m.header.leaseMs + m.header.heartbeatMs
            while (v.hosts.some((h) => h.alive === null) && performance.now() < until) {
              await new Promise((r) => setTimeout(r, m.header.heartbeatMs / 2))
              v = await m.view()
            }
            view = v
          } finally {
            await s.close()
          }
        } else throw new StorageError('InvalidArgument', 'give --lockspace PATH or --server URL')
        if (o.json) {
          process.stdout.write(JSON.stringify(view, null, 2) + '\n')
          return
        }
        const hosts = view.hosts as Region.HostView[]
        const locks = view.locks as Region.LockView[]
        let out = 'HOSTS\nslot  name                             alive    generation  heartbeat-age\n'
        for (const h of hosts) {
          const alive = h.alive === null ? 'unknown' : h.alive ? 'yes' : 'no'
          out += `${String(h.slot).padEnd(6)}${(h.error ? `(damaged: ${h.error})` : h.name).padEnd(33)}${alive.padEnd(9)}${String(h.generation).padEnd(12)}${h.heartbeatAgeMs ?? '-'} ms\n`
        }
        out += '\nLOCKS\nname                             state      managed  generation  owner / holders\n'
        for (const l of locks) {
          if (l.error) {
            out += `${`(record ${l.record})`.padEnd(33)}damaged    ${l.error}\n`
            continue
          }
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
    .option('--yield', 'with --managed: send the command SIGTERM when another host asks for the lock', false)
    .option('--wait <seconds>', 'wait this long for the lock (default: try once)', '0')
    .addHelpText(
      'after',
      `\nExit status: the command's own when it ran (128+N if killed by signal N); otherwise\n` +
        Object.entries(LOCK_RUN_EXIT).map(([k, v]) => `  ${v}  ${EXIT_MEANING[k as keyof typeof LOCK_RUN_EXIT]}`).join('\n'),
    )
    .action((name: string, command: string[], o) =>
      run(async () => {
        const waitMs = Number(o.wait) * 1000
        if (!Number.isFinite(waitMs) || waitMs < 0) throw new StorageError('InvalidArgument', `invalid --wait '${o.wait}'`)
        if (o.yield && !o.managed) throw new StorageError('InvalidArgument', '--yield needs --managed (only a managed lock is handed over on request)')
        const fail = (code: number, msg: string) => (process.stderr.write(`tandem: ${msg}\n`), code)
        const { openLockStorage, LockManager, WatchdogLink } = await loadLocks()
        let storage: Region.LockStorage
        try {
          storage = await openLockStorage(o.lockspace)
        } catch (e) {
          return fail(LOCK_RUN_EXIT.lockspace, (e as Error).message)
        }
        let mgr: Region.LockManager
        try {
          mgr = new LockManager(storage, o.host)
        } catch (e) {
          await storage.close()
          throw e
        }
        let held: Region.Held
        try {
          await mgr.join({ waitMs })
          held = await mgr.acquire(name, { shared: o.shared, managed: o.managed, waitMs })
        } catch (e) {
          await mgr.leave().catch(() => undefined)
          await storage.close()
          if (!isStorageError(e) || e.code === 'InvalidArgument') throw e
          if (e.code !== 'Busy') return fail(LOCK_RUN_EXIT.lockspace, e.message)
          return fail((e as { timedOut?: boolean }).timedOut ? LOCK_RUN_EXIT.timedOut : LOCK_RUN_EXIT.busy, e.message)
        }
        let fenced = ''
        let child: import('node:child_process').ChildProcess | null = null
        const signalCommand = (sig: NodeJS.Signals) => {
          try {
            if (child?.pid) process.kill(-child.pid, sig)
          } catch {
            /* gone */
          }
        }
        const lose = (reason: string) => {
          if (!fenced) fenced = reason
          signalCommand('SIGKILL')
        }
        const dog = new WatchdogLink()
        dog.onLost = lose
        dog.deadline(mgr.fenceDeadline)
        child = childProcess().spawn(command[0], command.slice(1), {
          detached: true,
          stdio: 'inherit',
          env: { ...process.env, TANDEM_LOCK_GENERATION: String(held.generation), TANDEM_LOCK_NAME: name, TANDEM_LOCK_HOST: o.host },
        })
        if (child.pid) dog.group(child.pid)
        mgr.onRenew = (deadline) => dog.deadline(deadline)
        mgr.onFence = lose
        // another host claimed the lock (LockManager.claim): the command must stop as if fenced
        mgr.onLost = (lock, reason) => lock === name && lose(reason)
        let yielded = false
        mgr.onRequested = (lock, by) => {
          if (!o.yield || yielded || lock !== name) return
          yielded = true
          process.stderr.write(`tandem: host '${by}' asks for lock '${name}': ending the command (SIGTERM)\n`)
          signalCommand('SIGTERM')
        }
        process.on('SIGTERM', () => signalCommand('SIGTERM'))
        process.on('SIGINT', () => signalCommand('SIGINT'))
        const { code, signal } = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
          child!.on('exit', (c, s) => res({ code: c, signal: s }))
          child!.on('error', (e) => {
            process.stderr.write(`tandem: could not run '${command[0]}': ${e.message}\n`)
            res({ code: 127, signal: null })
          })
        })
        dog.stop()
        const status = code ?? 128 + (signal ? osConstants.signals[signal] : 0)
        let releaseError = ''
        await mgr.leave().catch((e: Error) => (releaseError = e.message))
        await storage.close()
        if (fenced) return fail(LOCK_RUN_EXIT.leaseLost, `lock '${name}' lost (${fenced}); the command was killed`)
        if (releaseError) return fail(LOCK_RUN_EXIT.releaseFailed, `the command ended (status ${status}) but ${releaseError}`)
        return status
      }),
    )
  return lock
}

import type { Logger } from 'pino'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { isAbsolute, join } from 'node:path'
import { isStorageError, StorageError } from '../../disk-formats/errors.js'
import { isApiError, requestJson } from '../api/http.js'
import { backgroundClock, LockManager, type Clock, type LockStorage } from '../../disk-formats/lock-region/index.js'
import { openLockStorage } from '../locks/open-storage.js'
import { ftHostName, hostIqn, LOCKSPACE_IQN, validHostName, validVmName, vmIqn, vmLockName } from './names.js'
import { vmRunArgs, type VmFtLaunch, type VmLaunch } from './vm-command.js'
import type { FtStatus, RestoreSummary } from '../ft/run-ft.js'
import { parseFtModeOptions, type FtModeOptions } from '../ft/mode-options.js'
import { VmProcess, type VmExit } from './vm-process.js'
import { checkCpuPercent } from '../vm/cpu-limit.js'
import { readCheckpoint } from '../vm/checkpoint-file.js'
import { checkPriority, DEFAULT_PRIORITY } from '../net/dos-guard.js'
import { HostDos, type HostDosOptions } from './host-dos.js'
import { followWallOffset, MAX_OFFSET_MS, setWallOffset, WALL_OFFSET_ENV, wallOffsetMs, writeWallOffset } from './wall-clock.js'

export interface HostAgentOptions {
  /** the host's name in the lockspace (its iSCSI name for the lockspace is hostIqn(name)) */
  name: string
  /** `tandem serve`'s REST API, e.g. http://127.0.0.1:8080 */
  server: string
  /** the server's iSCSI portal as this host reaches it, HOST:PORT (default: the one the server advertises) */
  iscsi?: string
  /** this host's REST API, registered with the server so that its view can link to it */
  api: string
  /** how to run `tandem`: the VM's child process is this plus vmRunArgs(…) */
  tandem: string[]
  log: Logger
  /** a VM told to stop (SIGTERM) is SIGKILLed after this long (default 10 s) */
  stopTimeoutMs?: number
  /** how often the host registers its API with the server (default 5 s) */
  registerEveryMs?: number
  /** how long after losing its lease (or failing to join) the host tries to join again (default 2 s) */
  rejoinMs?: number
  /** the lock manager's clock (the default's timers do not keep the process alive) */
  clock?: Clock
  /** the address a pair's backup started here listens on for its primary, port 0 (default 127.0.0.1) */
  ftListen?: string
  /** that address as other hosts reach it, when ftListen is unspecified (0.0.0.0, ::) */
  ftAdvertise?: string
  /** the DoS guard on the ports of this host's VMs (none: VMs join their switch directly) */
  dos?: HostDosOptions
  /** run-time faults on this host (`tandem host --fault-injection`): a clock jump (setClockOffset) */
  faultInjection?: boolean
}

/** `exited` (by itself) and `stopped` (by request) are shown once the VM's lock is released; `lost`: killed because it could no longer be fenced (the lease was lost, or its watchdog died). */
export type VmState = 'starting' | 'running' | 'stopping' | 'exited' | 'stopped' | 'lost'

/** A VM as the host's REST API shows it. */
export interface VmInfo {
  name: string
  guest: string
  memory: number
  disk: string | null
  /** the disk's iSCSI URI the VM was started with */
  diskUri: string | null
  /** the VM's own iSCSI name for its disk (null without a disk) */
  initiatorName: string | null
  net: string | null
  /** the VM's share of one core in percent (null: no limit) */
  cpuLimit: number | null
  state: VmState
  pid: number | null
  /** the generation of `vm/<name>` when it was taken: the fencing token */
  generation: number
  startedAt: string
  endedAt: string | null
  /** the exit status (128 + N when killed by signal N), once it ended */
  exitStatus: number | null
  /** why it was stopped or lost */
  reason: string | null
  /** udp:HOST:PORT of the tandem switch its NIC is on */
  switch: string | null
  /** a side of a fault-tolerant pair; null for a VM alone */
  ft: VmFtInfo | null
  /** the DoS guard suspends lower priorities first (default 100) */
  priority: number
  /** its port under the host's DoS guard: suspended now, inbound frames seen and dropped; null when not guarded */
  dos: { suspended: boolean; dropped: number; framesIn: number } | null
}

/** A pair's role as `vm ls` shows it: paired (primary, backup), or after a failover live (the backup took over), alone (the primary won), halted (lost the claim). */
export type FtRoleName = 'primary' | 'backup' | 'live' | 'alone' | 'halted' | 'handed-over'

/** The pair side of a VM (VmInfo.ft): how it was started (its mode and the mode's options among it), then its figures from its control socket. */
export interface VmFtInfo extends FtModeOptions {
  side: 'primary' | 'backup'
  /** primary: the host API that runs the backup */
  peer: string | null
  /** the FT channel: the backup listens there, the primary connects to it */
  address: string | null
  backupReads: 'disk' | 'log'
  /** the child's own host name in the lockspace (its arbiter holds vm/<name> under it) */
  lockHost: string
  /** null until the VM's control socket answered (a backup's, once its primary said HELLO) */
  role: FtRoleName | null
  /** a backup follows this side's running VM now (its outputs wait for the backup's acks); null until it answered */
  protected: boolean | null
  lagMs: number | null
  /** percent of one core */
  cpuLimit: number | null
  logBytes: number | null
  /** log bytes per second over the last second or more between two looks (the average since start at the first) */
  logBytesPerSecond: number | null
  /** ms outputs were held, over recent releases */
  outputDelay: { count: number; p50: number; p99: number } | null
  /** a checkpoint pair's epoch figures (ft/SPEC.md "Checkpoint mode", Metrics) */
  checkpoint?: FtStatus['checkpoint']
  /** a colo pair's figures: outputs compared, resyncs (colo/SPEC.md) */
  colo?: FtStatus['colo']
}

/** The body of `POST /api/v1/vms`. */
export interface VmStartRequest {
  name: string
  guest: string
  /** a datastore disk's name */
  disk?: string
  /** bytes (default 64 MiB) */
  memory?: number
  net?: string
  /** percent of one core, 1 to 100 (`vm run --cpu-limit`) */
  cpuLimit?: number
  /** start from this checkpoint file on the host (`vm restore`): its memory size, and its guest unless `guest` is given */
  checkpoint?: string
  /** udp:HOST:PORT of a tandem switch (not with `net`) */
  switch?: string
  /** the NIC's MAC, aa:bb:cc:dd:ee:ff */
  mac?: string
  /** a fault-tolerant pair: this host runs the primary and asks the host at `ft.host` to run the backup; `mode` (default replay) and its options as vm run's --ft-mode … */
  ft?: { host: string; backupReads: 'disk' | 'log' } & FtModeOptions
  /** 'backup': run the backup of a pair whose primary another host starts (that host asks; the answer names the FT address) */
  role?: 'backup'
  /** with role 'backup': the primary's choice, for the record (the backup takes it from the primary's HELLO) */
  backupReads?: 'disk' | 'log'
  /** with role 'backup': the pair's mode and its options (`mode`, `epochMs`, `diff`, `coloTimeoutMs`, `coloCheckpointMs` in the body); a colo secondary runs as one, a replay or checkpoint backup follows the primary's HELLO */
  mode?: FtModeOptions
  /** 0 to 1000 (default 100): under a DoS guard, lower priorities are suspended first */
  priority?: number
}

interface Vm {
  info: VmInfo
  proc: VmProcess | null
  /** what it was started with (a restore starts its new backup alike) */
  req: VmStartRequest
  /** a redundancy restore is under way */
  restoring?: boolean
  /** the process ended and its lock was released */
  done?: Promise<void>
  /** the log rate's last sample (performance.now() ms, bytes) */
  rate?: { t: number; bytes: number }
  /** performance.now() at the start (rates are measured on monotonic time: the wall clock may jump) */
  startedMono: number
}

/** The host cannot start VMs now (no valid lease): HTTP 503, whatever the code. */
class NoLease extends StorageError {
  readonly unavailable = true
}

/** A VM that runs elsewhere (or here): 409, with the host that has it. */
class VmBusy extends StorageError {
  constructor(
    message: string,
    readonly details: { holder: string | null },
  ) {
    super('Busy', message)
  }
}

const DEFAULT_MEMORY = 64 << 20
/** vm run's own bounds: whole 4 KiB pages, at most 1 GiB. */
const MAX_MEMORY = 1 << 30
const NET = /^udp:(\[[^\]]+\]|[^:\s]+):(\d{1,5})$/
const MAC = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i
/** a host API's URL: http(s), at most this long */
const MAX_URL = 1024
/** how long a backup may take from its start to listening (the machine may be busy) */
const BACKUP_LISTEN_MS = 60_000
/** how long a VM's control socket may take to answer a status request */
const STATUS_MS = 2000
const DISK = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/
const MAX_GUEST = 1024


/** A pair side's mode and options from its start request (the primary's in `ft`, a backup's `mode`). */
function modeOf(req: VmStartRequest): FtModeOptions {
  const { mode, epochMs, diff, coloTimeoutMs, coloCheckpointMs } = req.ft ?? req.mode ?? { mode: 'replay' }
  return { mode, ...(epochMs !== undefined ? { epochMs } : {}), ...(diff !== undefined ? { diff } : {}), ...(coloTimeoutMs !== undefined ? { coloTimeoutMs } : {}), ...(coloCheckpointMs !== undefined ? { coloCheckpointMs } : {}) }
}

/** `b.host`: the API URL of the host for a pair's backup, or InvalidArgument naming `what`. */
function hostUrl(b: Record<string, unknown>, what: string): string {
  const host = field<string>(b, 'host', 'string')
  if (!host || host.length > MAX_URL || !/^https?:\/\/[^\s/]+\/?$/.test(host)) throw new StorageError('InvalidArgument', `${what} must be the backup host's API URL, e.g. http://127.0.0.1:7801`)
  return host
}

/** A body field: absent, or of the type asked. */
function field<T>(b: Record<string, unknown>, k: string, type: 'string' | 'number'): T | undefined {
  const v = b[k]
  if (v === undefined || v === null) return undefined
  if (typeof v !== type) throw new StorageError('InvalidArgument', `"${k}" must be a ${type}`)
  return v as T
}

/** Checks a start request once, at the edge; what it returns is trusted from there on. */
export function parseStartRequest(body: unknown): VmStartRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new StorageError('InvalidArgument', 'the request body must be a JSON object')
  const b = body as Record<string, unknown>
  const name = validVmName(b.name)
  const checkpoint = field<string>(b, 'checkpoint', 'string')
  if (checkpoint !== undefined && (!isAbsolute(checkpoint) || checkpoint.length > 4096 || checkpoint.includes('\0'))) throw new StorageError('InvalidArgument', '"checkpoint" must be the absolute path of a checkpoint file on the host')
  const guest = field<string>(b, 'guest', 'string') ?? (checkpoint ? '' : undefined)
  if (guest === undefined || (guest === '' && !checkpoint) || guest.length > MAX_GUEST || guest.includes('\0')) throw new StorageError('InvalidArgument', `"guest" must be a committed guest's name or an ELF file on the host (1 to ${MAX_GUEST} characters)`)
  const disk = field<string>(b, 'disk', 'string')
  if (disk !== undefined && !DISK.test(disk)) throw new StorageError('InvalidArgument', `invalid disk name ${JSON.stringify(disk)}: a datastore disk's name`)
  const memory = field<number>(b, 'memory', 'number')
  if (memory !== undefined && (!Number.isSafeInteger(memory) || memory <= 0 || memory % 4096 !== 0 || memory > MAX_MEMORY)) {
    throw new StorageError('InvalidArgument', `invalid "memory" ${memory}: bytes, a multiple of 4096, at most 1 GiB`)
  }
  const net = field<string>(b, 'net', 'string')
  if (net !== undefined) {
    const m = NET.exec(net)
    if (!m || Number(m[2]) > 65535) throw new StorageError('InvalidArgument', `invalid "net" ${JSON.stringify(net)}: udp:HOST:PORT, e.g. udp:127.0.0.1:5555`)
  }
  const cpuLimit = field<number>(b, 'cpuLimit', 'number')
  if (cpuLimit !== undefined) checkCpuPercent(cpuLimit, '"cpuLimit"')
  const sw = field<string>(b, 'switch', 'string')
  if (sw !== undefined) {
    const m = NET.exec(sw)
    if (!m || Number(m[2]) > 65535 || Number(m[2]) === 0) throw new StorageError('InvalidArgument', `invalid "switch" ${JSON.stringify(sw)}: udp:HOST:PORT of a tandem switch, e.g. udp:127.0.0.1:5555`)
    if (net !== undefined) throw new StorageError('InvalidArgument', '"net" and "switch" cannot be used together')
  }
  const priority = field<number>(b, 'priority', 'number')
  if (priority !== undefined) checkPriority(priority, '"priority"')
  const mac = field<string>(b, 'mac', 'string')
  if (mac !== undefined && !MAC.test(mac)) throw new StorageError('InvalidArgument', `invalid "mac" ${JSON.stringify(mac)}: six hex bytes, e.g. 02:00:00:00:00:01`)
  const reads = (v: unknown, what: string): 'disk' | 'log' => {
    if (v === undefined || v === null) return 'disk'
    if (v !== 'disk' && v !== 'log') throw new StorageError('InvalidArgument', `${what} must be "disk" or "log"`)
    return v
  }
  let ft: VmStartRequest['ft']
  if (b.ft !== undefined && b.ft !== null) {
    const f = b.ft as Record<string, unknown>
    if (typeof f !== 'object' || Array.isArray(f)) throw new StorageError('InvalidArgument', '"ft" must be an object: {"host": URL of the backup\'s host, "backupReads": "disk"|"log", "mode": "replay"|"checkpoint"|"colo", …}')
    const host = hostUrl(f, '"ft.host"')
    ft = { host, backupReads: reads(f.backupReads, '"ft.backupReads"'), ...parseFtModeOptions(f, 'ft.') }
  }
  const role = field<string>(b, 'role', 'string')
  if (role !== undefined && role !== 'backup') throw new StorageError('InvalidArgument', `invalid "role" ${JSON.stringify(role)}: "backup" (a pair's primary is started with "ft")`)
  const mode = role ? parseFtModeOptions(b, '') : undefined
  if ((ft || role) && checkpoint) throw new StorageError('InvalidArgument', 'a fault-tolerant pair starts from boot: no "checkpoint"')
  if ((ft || role) && net !== undefined) throw new StorageError('InvalidArgument', 'a fault-tolerant pair\'s NIC is on a tandem switch ("switch"), not "net"')
  if (ft && role) throw new StorageError('InvalidArgument', '"ft" starts a pair\'s primary, "role": "backup" its backup: not both')
  if (!role && ['mode', 'epochMs', 'diff', 'coloTimeoutMs', 'coloCheckpointMs'].some((k) => b[k] !== undefined)) throw new StorageError('InvalidArgument', 'a pair\'s primary takes its mode in "ft" ("ft": {"mode": …}); "mode" alone is for a backup ("role": "backup")')
  return {
    name, guest, disk, memory, net, cpuLimit,
    ...(checkpoint ? { checkpoint } : {}),
    ...(sw !== undefined ? { switch: sw } : {}),
    ...(mac !== undefined ? { mac } : {}),
    ...(priority !== undefined ? { priority } : {}),
    ...(ft ? { ft } : {}),
    ...(role ? { role, backupReads: reads(b.backupReads, '"backupReads"'), mode } : {}),
  }
}

/**
 * The host agent (`tandem host`, DESIGN §8): joins the server's lockspace over iSCSI under the
 * host's name and runs VMs as child processes, each holding the exclusive lock `vm/<name>` and
 * fenced by a watchdog fed the host's lease (vm-process.ts). A VM is started only while the lease
 * is valid; when the lease is lost every VM is killed (the watchdogs do it at the fence deadline
 * even if this process is paused or dead), and the host joins again. A fault-tolerant pair's side
 * (startVm with `ft` or `role: 'backup'`) holds vm/<name> through its own arbiter instead, under
 * ftHostName(host, vm); it is fenced by this host's lease all the same (its watchdog), so a dead
 * host's side dies by the deadline and the other side, losing it, claims the VM.
 */
export class HostAgent {
  private mgr: LockManager | null = null
  private storage: LockStorage | null = null
  private problem = 'not joined yet'
  private readonly vms = new Map<string, Vm>()
  private closed = false
  private rejoinTimer: NodeJS.Timeout | null = null
  private registerTimer: NodeJS.Timeout | null = null
  private registered: boolean | null = null
  /** counters for /metrics; `fenced`: VMs killed because the lease was lost (or could no longer be watched) */
  readonly counts = { started: 0, refused: 0, failed: 0, fenced: 0, renewals: 0 }
  readonly name: string
  private lockspaceUri = ''
  /** where the VMs' control sockets are (a private folder of this process) */
  private readonly controlDir: string
  readonly dos: HostDos | null
  /** with fault injection: the file holding this host's wall-clock offset (its VMs follow it) */
  private readonly wallFile: string | null = null

  private constructor(private readonly o: HostAgentOptions) {
    this.name = validHostName(o.name)
    this.controlDir = mkdtempSync(join(tmpdir(), 'tandem-host-'))
    this.dos = o.dos ? new HostDos(o.dos, o.log.child({ component: 'dos' })) : null
    if (o.faultInjection) {
      // this process and every VM it starts (their environment) read the wall clock through the file
      this.wallFile = join(this.controlDir, 'wall-offset')
      writeWallOffset(this.wallFile, 0)
      process.env[WALL_OFFSET_ENV] = this.wallFile
      followWallOffset(this.wallFile)
    }
  }

  /** The run-time faults in force (`GET /api/v1/faults`); NotFound without fault injection. */
  faults(): { clock: { offsetMs: number; file: string } } {
    if (!this.wallFile) throw new StorageError('NotFound', `fault injection is off: start tandem host with --fault-injection`)
    return { clock: { offsetMs: wallOffsetMs(), file: this.wallFile } }
  }

  /**
   * A clock jump (`PUT /api/v1/faults`): this host's wall clock reads `offsetMs` off the system's
   * from now on, in this process at once and in its VMs within 50 ms. Leases, heartbeats and fence
   * deadlines are on monotonic time and do not move.
   */
  setClockOffset(offsetMs: unknown): { clock: { offsetMs: number; file: string } } {
    this.faults()
    if (typeof offsetMs !== 'number' || !Number.isSafeInteger(offsetMs) || Math.abs(offsetMs) > MAX_OFFSET_MS) throw new StorageError('InvalidArgument', `"clock.offsetMs" must be an integer of ms within ±${MAX_OFFSET_MS} (a year)`)
    writeWallOffset(this.wallFile!, offsetMs)
    setWallOffset(offsetMs)
    this.o.log.warn({ offsetMs }, 'fault injection: wall clock offset')
    return this.faults()
  }

  private controlPath(vm: string): string {
    return join(this.controlDir, `${vm}.sock`)
  }

  /**
   * A checkpoint of a running VM (`POST /api/v1/vms/:name/checkpoint`), through its control
   * socket: a datastore disk is switched by its server, onto a prepared snapshot.
   */
  async checkpointVm(name: string, body: unknown): Promise<Record<string, unknown>> {
    const vm = this.vms.get(name)
    if (!vm) throw new StorageError('NotFound', `no VM named '${name}' on host '${this.name}'`)
    if (vm.info.state !== 'running') throw new StorageError('Busy', `VM '${name}' is ${vm.info.state}, not running`)
    const b = (typeof body === 'object' && body !== null ? body : {}) as Record<string, unknown>
    const file = field<string>(b, 'file', 'string')
    if (!file || !isAbsolute(file)) throw new StorageError('InvalidArgument', '"file" must be an absolute path on the host for the checkpoint file')
    const afterwards = field<string>(b, 'afterwards', 'string') ?? 'keep'
    if (afterwards !== 'keep' && afterwards !== 'copy-and-commit') throw new StorageError('InvalidArgument', '"afterwards" must be "keep" or "copy-and-commit"')
    const req = { file, afterwards, name, ...(vm.info.disk ? { disk: { server: this.o.server, name: vm.info.disk } } : {}) }
    return requestJson<Record<string, unknown>>(`unix:${this.controlPath(name)}`, 'POST', '/api/v1/vm/checkpoint', req, { timeoutMs: 600_000 })
  }

  /**
   * Redundancy restore (`POST /api/v1/vms/:name/ft/restore`, ft/SPEC.md "Redundancy restore"): a
   * pair's side here that runs the VM alone (live after a failover, or a primary whose backup was
   * lost) is protected again by a new backup on the host at `host`: that host starts it as for a
   * pair (`role: 'backup'`, the VM's own start options), then the VM's control socket streams it
   * a live checkpoint. A failed restore stops the new backup again; the VM runs on alone.
   */
  async restoreVm(name: string, body: unknown): Promise<VmInfo & { restore: RestoreSummary }> {
    const b = (typeof body === 'object' && body !== null && !Array.isArray(body) ? body : {}) as Record<string, unknown>
    const host = hostUrl(b, '"host"')
    const vm = this.vms.get(name)
    if (!vm) throw new StorageError('NotFound', `no VM named '${name}' on host '${this.name}'`)
    const f = vm.info.ft
    if (!f) throw new StorageError('InvalidArgument', `VM '${name}' is not a side of a fault-tolerant pair: start it with "ft" to have a backup`)
    if (vm.info.state !== 'running') throw new StorageError('Busy', `VM '${name}' is ${vm.info.state}, not running`)
    if (host.replace(/\/$/, '') === this.o.api.replace(/\/$/, '')) throw new StorageError('InvalidArgument', `"host" is this host (${host}), which runs VM '${name}': a backup runs on another host`)
    if (f.mode !== 'replay') throw new StorageError('Unsupported', `a redundancy restore takes a replay pair in this version; VM '${name}' runs in ${f.mode} mode`)
    if (vm.info.disk) throw new StorageError('Unsupported', `a redundancy restore of a VM with a disk is not offered yet (VM '${name}' runs on disk '${vm.info.disk}': the storage fence keys of a new pairing are not made yet)`)
    if (vm.restoring) throw new StorageError('Busy', `a restore of VM '${name}' is under way`)
    if (!(await this.status(vm))) throw new StorageError('IoError', `VM '${name}' does not answer on its control socket`)
    if (f.role !== 'live' && f.role !== 'alone') throw new StorageError('InvalidArgument', `VM '${name}' is not running alone here (its role: ${f.role}): ${f.protected ? 'a backup follows it already' : 'only a side that runs the VM can be protected'}`)
    if (f.protected) throw new StorageError('Exists', `VM '${name}' is protected by a backup already (on ${f.peer ?? 'another host'})`)
    vm.restoring = true
    try {
      const address = await this.startBackup({ ...vm.req, ft: { ...modeOf(vm.req), host, backupReads: f.backupReads } })
      let restore: RestoreSummary
      try {
        restore = await requestJson<RestoreSummary>(`unix:${this.controlPath(name)}`, 'POST', '/api/v1/vm/ft/restore', { backup: address }, { timeoutMs: 600_000 })
      } catch (e) {
        void requestJson(host, 'DELETE', `/api/v1/vms/${encodeURIComponent(name)}`).catch(() => undefined)
        throw e
      }
      f.peer = host
      f.address = address
      await this.status(vm)
      this.o.log.info({ vm: name, backup: host, address, pauseMs: restore.pauseMs }, 'VM protected again by a new backup')
      return { ...this.shown(vm.info), restore }
    } finally {
      vm.restoring = false
    }
  }

  /** Joins the lockspace (waiting out a crashed earlier incarnation of this host: a lease) and registers with the server. */
  static async start(o: HostAgentOptions): Promise<HostAgent> {
    const a = new HostAgent(o)
    a.lockspaceUri = await a.findLockspace()
    await a.join()
    await a.register()
    a.registerTimer = setInterval(() => void a.register(), o.registerEveryMs ?? 5000)
    a.registerTimer.unref()
    return a
  }

  private async findLockspace(): Promise<string> {
    if (this.o.iscsi) return `iscsi://${this.o.iscsi}/${LOCKSPACE_IQN}/0`
    const l = await requestJson<{ uri: string }>(this.o.server, 'GET', '/api/v1/lockspace')
    return l.uri
  }

  private async join(): Promise<void> {
    const storage = await openLockStorage(this.lockspaceUri, { initiatorName: hostIqn(this.name) })
    try {
      const m = new LockManager(storage, this.name, this.o.clock ?? backgroundClock)
      m.onRenew = (deadline) => {
        this.counts.renewals++
        for (const vm of this.vms.values()) vm.proc?.deadline(deadline)
      }
      m.onFence = (reason) => this.fenced(m, reason)
      // a live process under this name is another host: refused at once (a crashed one is waited out)
      const { slot, generation } = await m.join({ waitMs: 0 })
      this.storage = storage
      this.mgr = m
      this.problem = ''
      this.o.log.info({ lockspace: this.lockspaceUri, host: this.name, slot, generation, leaseMs: m.header.leaseMs }, 'lockspace joined')
    } catch (e) {
      await storage.close().catch(() => undefined)
      throw e
    }
  }

  /** The lease is lost: every VM is killed now (its watchdog does it too), then the host joins again. */
  private fenced(m: LockManager, reason: string): void {
    if (this.mgr !== m) return
    this.o.log.error({ reason }, 'lockspace: this host lost its lease; killing its VMs')
    this.mgr = null
    this.problem = `this host lost its lease (${reason}); joining the lockspace again`
    m.halt()
    for (const vm of this.vms.values()) {
      if (!vm.proc || !['starting', 'running', 'stopping'].includes(vm.info.state)) continue
      vm.info.reason = `the host lost its lease (${reason})`
      vm.info.state = 'lost'
      this.counts.fenced++
      vm.proc.kill('SIGKILL')
    }
    const s = this.storage
    this.storage = null
    void s?.close().catch(() => undefined)
    this.scheduleRejoin()
  }

  private scheduleRejoin(): void {
    if (this.closed || this.rejoinTimer) return
    this.rejoinTimer = setTimeout(() => {
      this.rejoinTimer = null
      if (this.closed) return
      this.join().catch((e: Error) => {
        this.problem = `could not join the lockspace: ${e.message}`
        this.o.log.error({ reason: e.message }, 'lockspace: could not join; trying again')
        this.scheduleRejoin()
      })
    }, this.o.rejoinMs ?? 2000)
  }

  private async register(): Promise<void> {
    try {
      await requestJson(this.o.server, 'PUT', `/api/v1/hosts/${encodeURIComponent(this.name)}`, { api: this.o.api }, { timeoutMs: 5000 })
      if (this.registered === false) this.o.log.info({ server: this.o.server }, 'registered with the server again')
      this.registered = true
    } catch (e) {
      if (this.registered !== false) this.o.log.warn({ server: this.o.server, err: (e as Error).message }, 'could not register this host\'s API with the server')
      this.registered = false
    }
  }

  /** This host's lease, for the health route. */
  lease(): { valid: boolean; slot: number | null; problem: string | null } {
    const m = this.mgr
    return { valid: !!m && m.valid(), slot: m ? m.slot : null, problem: this.problem || null }
  }

  list(): VmInfo[] {
    return [...this.vms.values()].map((v) => this.shown(v.info))
  }

  /** A copy of a VM's info with its guard figures read now. */
  private shown(info: VmInfo): VmInfo {
    return { ...info, dos: this.dos?.info(info.name) ?? null }
  }

  get(name: string): VmInfo & { console: string } {
    const v = this.vms.get(name)
    if (!v) throw new StorageError('NotFound', `no VM named '${name}' on host '${this.name}'`)
    return { ...this.shown(v.info), console: v.proc?.console() ?? '' }
  }

  /** get(), a pair's side with its figures read now. */
  async getNow(name: string): Promise<VmInfo & { console: string }> {
    const v = this.vms.get(name)
    if (v?.info.ft && v.info.state === 'running') await this.status(v)
    return this.get(name)
  }

  /** The disk's iSCSI URI, from the server (the portal this host was told to use, if it was). */
  private async diskUri(disk: string): Promise<string> {
    try {
      const d = await requestJson<{ iscsi: { iqn: string; portal: string; lun: number } }>(this.o.server, 'GET', `/api/v1/disks/${encodeURIComponent(disk)}`)
      return `iscsi://${this.o.iscsi ?? d.iscsi.portal}/${d.iscsi.iqn}/${d.iscsi.lun}`
    } catch (e) {
      if (isApiError(e) && e.code === 'NotFound') throw new StorageError('NotFound', `disk '${disk}' not found on the server: ${e.message}`)
      throw e
    }
  }

  /**
   * Starts a VM: refused (Busy, naming the holder) while it runs here or on another live host.
   *
   * A pair (`ft`): this host asks the host at `ft.host` for the backup (`role: 'backup'`), which
   * answers once the backup listens, then runs the primary connected to it. Neither host takes
   * vm/<name>: each side's child joins this host's lockspace under a name of its own (ftHostName)
   * and its arbiter holds the lock — the primary from its start, the backup once it wins the claim
   * (ft/SPEC.md "Split brain"). The host's watchdog still fences both children by the host's lease.
   */
  async startVm(req: VmStartRequest): Promise<VmInfo> {
    const existing = this.vms.get(req.name)
    if (existing && ['starting', 'running', 'stopping'].includes(existing.info.state)) {
      this.counts.refused++
      throw new VmBusy(`VM '${req.name}' is already ${existing.info.state} on this host ('${this.name}')`, { holder: this.name })
    }
    const m = this.mgr
    if (!m || !m.valid()) throw new NoLease('IoError', `host '${this.name}' has no valid lease: ${this.problem || 'it expired'}`)
    const side = req.ft ? 'primary' : req.role
    const info: VmInfo = {
      name: req.name,
      guest: req.guest,
      memory: req.memory ?? DEFAULT_MEMORY,
      disk: req.disk ?? null,
      diskUri: null,
      initiatorName: req.disk ? vmIqn(req.name) : null,
      net: req.net ?? null,
      cpuLimit: req.cpuLimit ?? null,
      state: 'starting',
      pid: null,
      generation: 0,
      startedAt: new Date().toISOString(),
      endedAt: null,
      exitStatus: null,
      reason: null,
      switch: req.switch ?? null,
      priority: req.priority ?? DEFAULT_PRIORITY,
      dos: null,
      ft: side
        ? { side, ...modeOf(req), peer: req.ft?.host ?? null, address: null, backupReads: req.ft?.backupReads ?? req.backupReads ?? 'disk', lockHost: ftHostName(this.name, req.name), role: null, protected: null, lagMs: null, cpuLimit: null, logBytes: null, logBytesPerSecond: null, outputDelay: null }
        : null,
    }
    if (req.checkpoint) {
      try {
        const c = await readCheckpoint(req.checkpoint)
        info.memory = c.header.memoryBytes
        await c.close()
      } catch (e) {
        throw new StorageError('InvalidArgument', (e as Error).message)
      }
    }
    const vm: Vm = { info, proc: null, startedMono: performance.now(), req }
    this.vms.set(req.name, vm) // reserves the name while the disk is looked up and the lock taken
    const lock = vmLockName(req.name)
    let ft: VmFtLaunch | undefined
    /** the switch address the VM joins: its guarded port on this host, under a DoS guard */
    let joins = req.switch
    try {
      if (req.disk) info.diskUri = await this.diskUri(req.disk)
      if (this.dos && req.switch && !info.ft) joins = await this.dos.attach(req.name, info.priority, req.switch, this.controlPath(req.name), req.cpuLimit)
      if (info.ft?.side === 'primary') {
        await this.refuseHeld(m, lock, req.name)
        info.ft.address = await this.startBackup(req)
      } else if (!info.ft) {
        try {
          info.generation = (await m.acquire(lock)).generation
        } catch (e) {
          if (!isStorageError(e, 'Busy')) throw e
          await this.refuseHeld(m, lock, req.name)
          this.counts.refused++
          throw new VmBusy(e.message, { holder: null })
        }
      }
      if (info.ft) ft = { side: info.ft.side, address: info.ft.address ?? `${this.o.ftListen ?? '127.0.0.1'}:0`, lockspace: this.lockspaceUri, host: info.ft.lockHost, backupReads: info.ft.backupReads, mode: modeOf(req) }
    } catch (e) {
      if (joins !== req.switch) this.dos?.detach(req.name)
      if (this.vms.get(req.name) === vm) this.vms.delete(req.name)
      if (existing) this.vms.set(req.name, existing)
      if (!(e instanceof VmBusy)) this.counts.failed++
      throw e
    }
    const dropBackup = () => {
      if (info.ft?.side === 'primary' && info.ft.peer) void requestJson(info.ft.peer, 'DELETE', `/api/v1/vms/${encodeURIComponent(req.name)}`).catch(() => undefined)
    }
    if (this.mgr !== m || !m.valid()) {
      // fenced while taking it: the lock is gone with the lease
      this.vms.delete(req.name)
      if (joins !== req.switch) this.dos?.detach(req.name)
      dropBackup()
      throw new NoLease('IoError', `host '${this.name}' lost its lease while starting VM '${req.name}'`)
    }
    const launch: VmLaunch = { name: req.name, guest: req.guest, memory: info.memory, diskUri: info.diskUri ?? undefined, net: req.net, switch: joins, mac: req.mac, cpuLimit: req.cpuLimit, priority: req.priority, control: this.controlPath(req.name), checkpoint: req.checkpoint, ft }
    const args = vmRunArgs(launch)
    const argv = [...this.o.tandem, ...args]
    // a pair's side holds the lock itself (its arbiter): no generation to hand down
    const env = ft ? { ...process.env } : { ...process.env, TANDEM_LOCK_GENERATION: String(info.generation), TANDEM_LOCK_NAME: lock, TANDEM_LOCK_HOST: this.name }
    const proc = new VmProcess(argv, env, m.fenceDeadline, (reason) => {
      if (info.state === 'lost') return
      info.state = 'lost'
      info.reason = reason
      this.counts.fenced++
      this.o.log.error({ vm: req.name, reason }, 'VM killed: it could no longer be fenced')
    })
    vm.proc = proc
    info.pid = proc.pid ?? null
    info.state = 'running'
    vm.done = proc.exited.then((exit) => this.ended(vm, lock, exit))
    if (ft?.side === 'backup' && info.ft) {
      try {
        const l = await proc.waitForOutput(/FT backup listening on (\S+):(\d+)\n/, BACKUP_LISTEN_MS)
        info.ft.address = `${this.advertised(l[1])}:${l[2]}`
      } catch (e) {
        proc.kill('SIGKILL')
        await vm.done
        if (this.vms.get(req.name) === vm) this.vms.delete(req.name)
        this.counts.failed++
        throw new StorageError('IoError', `the backup of VM '${req.name}' did not start listening: ${(e as Error).message}: ${proc.console().slice(-500)}`)
      }
    }
    if (ft?.side === 'primary') {
      // paired once its control socket answers (the backup accepted its HELLO); else the backup goes too
      const paired = await this.until(vm, BACKUP_LISTEN_MS)
      if (!paired) {
        proc.kill('SIGKILL')
        await vm.done
        if (this.vms.get(req.name) === vm) this.vms.delete(req.name)
        dropBackup()
        this.counts.failed++
        throw new StorageError('IoError', `the primary of VM '${req.name}' did not pair with its backup at ${ft.address}: ${proc.console().slice(-500)}`)
      }
    }
    this.counts.started++
    this.o.log.info({ vm: req.name, pid: info.pid, generation: info.generation, ft: info.ft ? { side: info.ft.side, address: info.ft.address, peer: info.ft.peer } : undefined, args }, 'VM started')
    return this.shown(info)
  }

  /** Polls the VM's control socket until it answers (true) or the VM ends or `ms` pass (false). */
  private async until(vm: Vm, ms: number): Promise<boolean> {
    const end = performance.now() + ms
    let ended = false
    void vm.done?.then(() => (ended = true))
    while (!ended && performance.now() < end) {
      if (await this.status(vm)) return true
      await new Promise((r) => setTimeout(r, 100))
    }
    return false
  }

  /**
   * Reads a running VM's control socket (GET /api/v1/vm) and keeps a pair's figures in its info;
   * false when it does not answer (not up yet, or gone).
   */
  private async status(vm: Vm): Promise<boolean> {
    let st: { instructions?: number; ft?: FtStatus }
    try {
      st = await requestJson(`unix:${this.controlPath(vm.info.name)}`, 'GET', '/api/v1/vm', undefined, { timeoutMs: STATUS_MS })
    } catch {
      return false
    }
    const f = vm.info.ft
    const s = st.ft
    if (!f || !s) return true
    const now = performance.now()
    f.role = s.outcome === 'paired' ? s.role : s.outcome
    f.lagMs = s.lagMs
    f.cpuLimit = s.cpuLimit
    f.outputDelay = s.outputDelay
    f.checkpoint = s.checkpoint
    f.colo = s.colo
    f.protected = s.protected ?? s.outcome === 'paired'
    if (!vm.rate) f.logBytesPerSecond = s.logBytes / Math.max(1, (now - vm.startedMono) / 1000)
    else if (now - vm.rate.t >= 1000) f.logBytesPerSecond = ((s.logBytes - vm.rate.bytes) * 1000) / (now - vm.rate.t)
    if (!vm.rate || now - vm.rate.t >= 1000) vm.rate = { t: now, bytes: s.logBytes }
    f.logBytes = s.logBytes
    vm.info.generation = s.generation
    return true
  }

  /** The VMs, a pair's running sides with their figures read now from their control sockets. */
  async listNow(): Promise<VmInfo[]> {
    await Promise.all([...this.vms.values()].filter((v) => v.info.ft && v.info.state === 'running').map((v) => this.status(v)))
    return this.list()
  }

  /** Busy, naming the holder, when `lock` is held by a host that is not known dead. */
  private async refuseHeld(m: LockManager, lock: string, vm: string): Promise<void> {
    const view = await m.view().catch(() => null)
    const l = view?.locks.find((x) => x.name === lock)
    if (!l || l.state === 'free' || !l.owner) return
    const owner = view?.hosts.find((h) => h.name === l.owner)
    if (owner && (owner.state !== 'live' || owner.alive === false)) return
    this.counts.refused++
    throw new VmBusy(`VM '${vm}' is running on host '${l.owner}' (lock '${lock}'): stop it there first, or wait until that host's lease is over`, { holder: l.owner })
  }

  /** Asks the backup's host to start it; resolves to the FT address it listens on. */
  private async startBackup(req: VmStartRequest): Promise<string> {
    const peer = req.ft!.host
    const body = { name: req.name, guest: req.guest, memory: req.memory, disk: req.disk, cpuLimit: req.cpuLimit, switch: req.switch, mac: req.mac, role: 'backup', backupReads: req.ft!.backupReads, ...modeOf(req) }
    let r: VmInfo
    try {
      r = await requestJson<VmInfo>(peer, 'POST', '/api/v1/vms', body, { timeoutMs: BACKUP_LISTEN_MS + 10_000 })
    } catch (e) {
      if (isApiError(e) && e.status === 409) throw new VmBusy(`the backup's host ${peer} refused: ${e.message}`, { holder: null })
      throw new StorageError('IoError', `the backup's host ${peer} did not start the backup: ${(e as Error).message}`)
    }
    if (!r.ft?.address) throw new StorageError('IoError', `the backup's host ${peer} answered without the backup's FT address`)
    return r.ft.address
  }

  /** The FT address another host reaches: an unspecified listen address becomes the advertised one. */
  private advertised(host: string): string {
    return host === '0.0.0.0' || host === '::' ? (this.o.ftAdvertise ?? '127.0.0.1') : host
  }

  /** The VM's process is gone: its lock is released (unless the lease, and the lock with it, was lost). */
  private async ended(vm: Vm, lock: string, exit: VmExit): Promise<void> {
    this.dos?.detach(vm.info.name)
    const m = this.mgr
    if (m && m.heldLocks().some((h) => h.name === lock)) {
      await m.release(lock).catch((e: Error) => this.o.log.error({ vm: vm.info.name, err: e.message }, 'could not release the VM\'s lock'))
    }
    // the state changes once the lock is released: a VM shown ended no longer holds it
    const info = vm.info
    info.exitStatus = exit.status
    info.endedAt = new Date().toISOString()
    if (info.state === 'stopping') info.state = 'stopped'
    else if (info.state !== 'lost') info.state = 'exited'
    this.o.log.info({ vm: info.name, state: info.state, status: exit.status, reason: info.reason }, 'VM ended')
  }

  /** Stops a VM (SIGTERM, then SIGKILL after the stop timeout) and forgets it; resolves to its last state. */
  async stopVm(name: string): Promise<VmInfo> {
    const vm = this.vms.get(name)
    if (!vm) throw new StorageError('NotFound', `no VM named '${name}' on host '${this.name}'`)
    if (vm.info.state === 'starting') throw new StorageError('Busy', `VM '${name}' is starting; try again`)
    if (vm.proc && (vm.info.state === 'running' || vm.info.state === 'stopping' || vm.info.state === 'lost')) {
      if (vm.info.state === 'running') {
        vm.info.state = 'stopping'
        vm.info.reason = 'stopped by request'
      }
      vm.proc.kill('SIGTERM')
      const timer = setTimeout(() => vm.proc?.kill('SIGKILL'), this.o.stopTimeoutMs ?? 10_000)
      await vm.done
      clearTimeout(timer)
    }
    if (this.vms.get(name) === vm) this.vms.delete(name)
    return { ...vm.info }
  }

  /** Stops every VM, releases their locks, leaves the lockspace. */
  async close(): Promise<void> {
    this.closed = true
    if (this.registerTimer) clearInterval(this.registerTimer)
    if (this.rejoinTimer) clearTimeout(this.rejoinTimer)
    await Promise.all([...this.vms.keys()].map((n) => this.stopVm(n).catch(() => undefined)))
    const m = this.mgr
    this.mgr = null
    if (m) await m.leave().catch((e: Error) => this.o.log.error({ err: e.message }, 'lockspace: leaving failed'))
    await this.storage?.close().catch(() => undefined)
    this.storage = null
    this.dos?.close()
    rmSync(this.controlDir, { recursive: true, force: true })
  }
}

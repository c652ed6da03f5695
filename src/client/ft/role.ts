/**
 * What every FT role shares (replay, checkpoint, colo; the live side of a restore): the options and
 * reports of a role, the arbiter, the start of a pair's channel (HELLO both ways), the claim after a
 * lost peer. Imports no role: the roles import it (no import circle).
 */
import { StorageError } from '../../disk-formats/errors.js'
import type { Machine, MachineOptions, RunSummary } from '../vm/machine.js'
import type { CpuLimiter } from '../vm/cpu-limit.js'
import type { ScsiPath } from '../vm/scsi-path.js'
import type { SwitchPort } from '../vm/net.js'
import type { VmState } from '../vm/state.js'
import type { Timers } from '../vm/timers.js'
import type { BackupReads } from './backup-disk.js'
import { FtChannel, FtListener, type FtEnd } from './channel.js'
import type { MismatchReason } from './colo/comparator.js'
import type { LagMeter } from './lag.js'
import type { OutputGate } from './output-gate.js'
import type { FtHelloParams, FtMessage, FtMode } from './protocol.js'
import type { Percentiles } from './stats.js'

/** What a quasi-lockstep side reports (FtReport.colo, FtStatus.colo). */
export interface ColoStats {
  /** the current epoch: syncs so far */
  epoch: number
  /** primary: outputs made (frames and console lines) */
  outputs: number
  /** primary: outputs released because the secondary's equal one came */
  releasedMatched: number
  /** primary: outputs released by a resync (or alone) */
  releasedByResync: number
  /** primary: resyncs by cause */
  resyncs: Record<MismatchReason | 'periodic', number>
  /** primary: ms the VM was paused for each resync's capture */
  pauseMs: Percentiles & { mean: number }
  /** primary: ms from the resync's start to the secondary's SYNC_ACK */
  syncMs: Percentiles & { mean: number }
  /** bytes of resync sent or taken */
  syncBytes: number
  /** pages sent or taken by the last resync */
  lastPages: number
  /** primary: ms each output was held before it left */
  heldMs: Percentiles & { mean: number }
  /** secondary with a disk: the most writes its buffer held at once (seen between slices; bounded by ColoOptions.maxHeldWrites) */
  heldWritesMax?: number
}

/** A checkpoint side's figures (FtStatus.checkpoint; checkpoint/SPEC.md "Metrics"). */
export interface CheckpointStatus {
  epochMs: number | null
  /** epochs sent (primary) or applied (backup); the last the backup acknowledged */
  epochs: number
  acked: number
  /** ms the VM was stopped per epoch, over the recent epochs (primary) */
  pause: Percentiles | null
  pauseMean: number | null
  /** STATE bytes per epoch over the recent epochs, and what the same pages would cost whole */
  bytesPerEpoch: number
  wholeBytesPerEpoch: number
  /** pages since the start: copied during the stop, sent while the VM ran, sent as diffs */
  pagesStopped: number
  pagesRunning: number
  pagesDiff: number
  /** pages the backup names as diff candidates now */
  diffCandidates: number
  stateBytes: number
}

/** What a redundancy restore reports (POST /api/v1/vm/ft/restore). */
export interface RestoreSummary {
  /** the backup's address */
  backup: string
  /** the instruction count the new backup starts from (its log begins there) */
  instructions: number
  /** VM stopped to VM running (the live checkpoint's pause) */
  pauseMs: number
  /** pre-copy, the VM running unprotected: STATE bytes, pages (non-zero, then those dirtied again), rounds */
  precopyBytes: number
  precopyPages: number
  precopyRounds: number
  /** after the pause, the VM running with outputs held: STATE bytes (device state and the pages dirty at the pause) */
  stateBytes: number
  pages: number
  /** of those, pages the guest wrote before the sender reached them, copied first */
  cowPages: number
  /** from the request to STATE_END sent */
  syncMs: number
  /** from the pause to the new backup's first ACK: outputs produced meanwhile wait (from then on, for its acks as usual) */
  protectedMs: number
}

/**
 * Who goes live when the pair loses each other (ft/SPEC.md "Split brain"): one compare-and-write
 * on the VM's lock record, from the generation the pair started under. Exactly one side wins.
 */
export interface Arbiter {
  /** the generation of the VM's lock the primary holds (sent in HELLO) */
  readonly generation: number
  /** true: this side now holds the VM (at generation + 1); false: the other side does */
  claim(generation: number): Promise<boolean>
  /** once live alone: the storage fence (PREEMPT AND ABORT of the other side's registration), if any */
  fence?(): Promise<void>
  /** the lock is not to be released at the end (a primary that handed the VM over: the backup claims it) */
  keep?(): void
  /** a failed claim worth making again (the lockspace busy), not a final answer (this side's lease is gone) */
  retryable?(e: unknown): boolean
}

export interface FtRoleOptions {
  role: 'primary' | 'backup'
  /** primary: the backup's address; backup: where it listens */
  host: string
  port: number
  vm: string
  reads: BackupReads
  arbiter: Arbiter
  timers?: Timers
  /** channel silence that counts as losing the peer (default: the channel's) */
  lossMs?: number
  /** primary: lag control on (default) or off */
  lagControl?: boolean
  /** reports what happens (role changes, the claim) */
  log?: (msg: string) => void
  /** primary: how the pair keeps the backup (default replay; a backup takes the primary's HELLO's) */
  mode?: FtMode
  /** checkpoint mode (primary): the epoch (default 25 ms), page diffs (default on) */
  epochMs?: number
  diff?: boolean
}

/** The VM a backup side (a replay or checkpoint backup, a colo secondary) is started with. */
export interface BackupVm {
  memoryBytes: number
  imageSha: Buffer
  disk?: ScsiPath
  limiter?: CpuLimiter
  /** stops a backup still waiting for its primary */
  signal?: AbortSignal
  /** the disk as the VM uses it once live, if not `disk` (a local file the backup follows read-only) */
  liveDisk?: () => Promise<ScsiPath>
  onListening?: (port: number) => void
}

/** What `vm run --ft-*` reports beside the run summary. */
export interface FtReport {
  role: 'primary' | 'backup'
  /**
   * 'paired' throughout; 'alone' (won the claim), 'halted' (lost it), 'live' (a backup that took
   * over), 'handed-over' (a primary that switched over to its backup)
   */
  outcome: 'paired' | 'alone' | 'halted' | 'live' | 'handed-over'
  /** the peer's end: why the channel ended */
  channelEnd?: string
  logBytes: number
  /** ms from losing the peer to running live or alone */
  takeoverMs?: number
  /** a backup gone live: the outputs it sent again (produced after the primary's last release mark) */
  resent?: number
  lag?: ReturnType<LagMeter['snapshot']>
  outputDelay?: ReturnType<OutputGate['snapshot']>['delay']
  /** quasi-lockstep (`--ft-mode colo`): outputs compared, resyncs (colo/run-colo.ts) */
  colo?: ColoStats
  checkpoint?: CheckpointStatus
  /** redundancy restores made by this side (each a new backup from a live checkpoint) */
  restores?: RestoreSummary[]
}

/** A role's figures while it runs (the VM's control socket shows them; the host agent's /metrics reads them there). */
export interface FtStatus {
  role: 'primary' | 'backup'
  outcome: FtReport['outcome']
  /** the generation of vm/<name> the pair started under, or this side's after winning the claim */
  generation: number
  /** ms, the primary's lag over the last second (LagMeter.periodLag); null on a backup */
  lagMs: number | null
  /** the VM's CPU limit now, percent of one core (null: none) */
  cpuLimit: number | null
  /** log bytes sent (primary) or received (backup) */
  logBytes: number
  /** ms an output was held, over the gate's recent releases (primary; null on a backup) */
  outputDelay: { count: number; p50: number; p99: number } | null
  /** the primary's lag samples of the last 10 s (percentiles; null on a backup) */
  lag: ReturnType<LagMeter['snapshot']> | null
  colo?: ColoStats
  /** checkpoint mode: the epochs' figures (checkpoint/SPEC.md "Metrics") */
  checkpoint?: CheckpointStatus
  /** a backup follows this side's VM now (its outputs wait for the backup's acks); replay mode only */
  protected?: boolean
  /** redundancy restores made by this side */
  restores?: number
}

/** The part of runVm a pair role shapes: the machine's options, then the run. */
export interface FtRole {
  machineOptions(base: MachineOptions): MachineOptions
  attach(m: Machine): void
  finish(summary: RunSummary): Promise<FtReport>
  /** read-only: the figures now */
  status(): FtStatus
  /** a backup: the HELLO it accepted (memory, image) */
  readonly hello?: FtHelloParams
  /**
   * A primary: planned switchover (ft/SPEC.md): stops the VM between slices, waits until the backup
   * has acknowledged everything, hands over and halts. Resolves with the count the backup goes on from.
   */
  handover?(): Promise<{ instructions: number }>
  /**
   * A side that runs no VM while paired (a checkpoint backup): resolves when it is to run one — the
   * machine it goes live with — or with the summary of a run that ends without running (halted, the
   * primary's clean end). runVm calls it instead of making the machine itself.
   */
  standby?(opts: MachineOptions): Promise<{ machine: Machine } | { summary: RunSummary }>
  /**
   * The side running the VM live and alone (a primary whose backup was lost, a backup gone live):
   * a new backup waiting at `to` (`vm run --ft-backup`) is started from a live checkpoint and
   * follows from then on (ft/SPEC.md "Redundancy restore").
   */
  restore?(to: { host: string; port: number }): Promise<RestoreSummary>
  /** a backup started from a running primary's state (HELLO start `state`): the machine is built from it */
  readonly state?: VmState
  /**
   * After the VM's run ended (before `finish`): true when it is to run again from the state it has
   * now (a quasi-lockstep secondary whose guest ended first, given its primary's state by a resync).
   */
  runAgain?(summary: RunSummary): Promise<boolean>
}

/** A port that may announce a MAC to its switch from now on (UdpUplink.announce; undefined: none) */
export type AnnouncingPort = SwitchPort & { announce?: (mac?: Buffer) => void }

/**
 * The switch port and MAC of a side that runs the VM. The switch learned the MAC when the
 * primary's uplink joined; from then on only a side holding the VM announces it: `take` (the
 * primary's machineOptions) stops the port's announcing, `claimed` (the VM's claim won) starts it
 * again — a primary resumed after a takeover (SIGSTOP) would otherwise draw the VM's frames back
 * with an overdue keepalive.
 */
export class VmUplink {
  port: AnnouncingPort | undefined
  mac: Buffer | undefined

  /** A primary's machine options: its port and MAC; the port announces nothing from now on. */
  take(base: MachineOptions): void {
    this.port = base.net as AnnouncingPort | undefined
    this.mac = base.mac
    this.port?.announce?.()
  }

  /** This side holds the VM: its port announces the MAC (to the switch's table) from now on. */
  claimed(): void {
    if (this.mac) this.port?.announce?.(this.mac)
  }
}

export const nextMessage = (ch: FtChannel, type: FtMessage['type'], what: string): Promise<FtMessage> =>
  new Promise((resolve, reject) => {
    const onMsg = (m: FtMessage) => {
      if (m.type === type || m.type === 'HELLO_REFUSED' || m.type === 'ERROR') {
        ch.off('message', onMsg)
        resolve(m)
      }
    }
    ch.on('message', onMsg)
    void ch.ended.then((e) => reject(new StorageError('IoError', `the FT channel ended before ${what}: ${endText(e)}`)))
  })

/** how long a side keeps trying a claim the lockspace cannot answer now (a busy file lock) */
export const CLAIM_RETRY_MS = 15_000

/**
 * The claim of a side that lost its peer. A lockspace that cannot answer now (a busy file lock, this
 * host's lease lapsed under load) is tried again — neither side may go on without an answer, as
 * VMware's VM waits for its storage — for up to CLAIM_RETRY_MS; then the side halts.
 */
export async function claimVm(o: FtRoleOptions, generation: number, timers: Timers): Promise<boolean> {
  const t0 = timers.now()
  for (let wait = 20; ; wait = Math.min(wait * 2, 1000)) {
    try {
      return await o.arbiter.claim(generation)
    } catch (e) {
      if (!o.arbiter.retryable?.(e) || timers.now() - t0 + wait > CLAIM_RETRY_MS) {
        o.log?.(`the claim failed: ${(e as Error).message}; giving up after ${Math.round(timers.now() - t0)} ms`)
        return false
      }
      o.log?.(`the claim could not be made (${(e as Error).message}): trying again in ${wait} ms`)
      await timers.sleep(wait)
    }
  }
}

export const endText = (e: FtEnd) => (e.kind === 'bye' ? `BYE (${e.bye.reason})` : e.reason)

/**
 * A backup's (or secondary's) start: listens, waits for one primary (or `vm.signal`), checks its
 * HELLO (VM, mode, memory, image) and answers HELLO_OK, or refuses it with the reason.
 */
export async function acceptPrimary(
  o: FtRoleOptions,
  vm: { memoryBytes: number; imageSha: Buffer; disk?: unknown; signal?: AbortSignal; onListening?: (port: number) => void },
  modes: FtMode[],
  timers: Timers,
): Promise<{ listener: FtListener; ch: FtChannel; hello: Extract<FtMessage, { type: 'HELLO' }> }> {
  const listener = await FtListener.listen({ host: o.host, port: o.port, timers, lossMs: o.lossMs })
  vm.onListening?.(listener.port)
  o.log?.(`FT backup of ${o.vm} listening on ${o.host}:${listener.port} (--ft-mode ${modes.join(' or ')})`)
  // SIGINT/SIGTERM while no primary has come: stop listening and end
  const signal = vm.signal
  const ch = await new Promise<FtChannel>((resolve, reject) => {
    const onAbort = () => {
      void listener.close()
      reject(new StorageError('InvalidArgument', `stopped before a primary connected to ${o.host}:${listener.port}`))
    }
    if (signal?.aborted) return onAbort()
    signal?.addEventListener('abort', onAbort, { once: true })
    listener.once('channel', (c) => {
      signal?.removeEventListener('abort', onAbort)
      resolve(c)
    })
  })
  const hello = (await nextMessage(ch, 'HELLO', 'the primary said HELLO')) as Extract<FtMessage, { type: 'HELLO' }>
  const refuse = (reason: 'image' | 'memory' | 'vm' | 'mode', text: string) => {
    ch.send({ type: 'HELLO_REFUSED', version: 1, reason, text })
    ch.close('refused')
    void listener.close()
    return new StorageError('InvalidArgument', `refused the FT primary: ${text}`)
  }
  if (hello.vm !== o.vm) throw refuse('vm', `the primary runs VM '${hello.vm}', this backup is for '${o.vm}'`)
  if (!modes.includes(hello.mode)) throw refuse('mode', `mode '${hello.mode}' where this backup runs --ft-mode ${modes.join(' or ')}`)
  if (hello.memoryBytes !== vm.memoryBytes) throw refuse('memory', `the primary's VM has ${hello.memoryBytes} bytes of memory, this backup ${vm.memoryBytes}`)
  if (!hello.imageSha256.equals(vm.imageSha)) throw refuse('image', 'the primary runs a different guest image')
  if (hello.start === 'state' && (vm.disk || !modes.includes('replay'))) throw refuse('mode', `a backup ${vm.disk ? 'with a disk' : `in --ft-mode ${modes.join(' or ')}`} cannot start from a running VM's state yet`)
  ch.send({ ...hello, type: 'HELLO_OK' })
  return { listener, ch, hello }
}

/** A primary's start: connects to its backup (or secondary), says HELLO in `mode`, and waits for HELLO_OK (else a typed error with the refusal). */
export async function connectBackup(o: FtRoleOptions, vm: { memoryBytes: number; imageSha: Buffer }, mode: FtMode, timers: Timers): Promise<FtChannel> {
  const ch = await FtChannel.connect({ host: o.host, port: o.port, timers, lossMs: o.lossMs }).catch((e: Error) => {
    throw new StorageError('IoError', `cannot reach the FT backup at ${o.host}:${o.port}: ${e.message}`)
  })
  const hello: FtHelloParams = { version: 1, vm: o.vm, mode, lockGeneration: o.arbiter.generation, memoryBytes: vm.memoryBytes, imageSha256: vm.imageSha, start: 'boot', backupReads: o.reads, instret: 0 }
  ch.send({ type: 'HELLO', ...hello })
  const answer = await nextMessage(ch, 'HELLO_OK', 'the backup accepted')
  if (answer.type !== 'HELLO_OK') {
    ch.close('refused')
    throw new StorageError('InvalidArgument', `the FT backup refused: ${answer.type === 'HELLO_REFUSED' ? `${answer.reason}: ${answer.text}` : answer.type === 'ERROR' ? `${answer.code}: ${answer.text}` : answer.type}`)
  }
  return ch
}

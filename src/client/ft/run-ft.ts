import { StorageError } from '../../disk-formats/errors.js'
import { EventSource, encodeHeader } from '../vm/events.js'
import type { Machine, MachineOptions, RunSummary } from '../vm/machine.js'
import type { SwitchPort } from '../vm/net.js'
import type { ScsiPath } from '../vm/scsi-path.js'
import { realTimers, type Timers } from '../vm/timers.js'
import type { CpuLimiter } from '../vm/cpu-limit.js'
import { BackupDisk, type BackupReads } from './backup-disk.js'
import { FtBackup } from './backup.js'
import { FtChannel, FtListener, type FtEnd } from './channel.js'
import type { LagMeter } from './lag.js'
import { LiveSide, type AnnouncingPort, type RestoreSummary } from './live-side.js'
import type { OutputGate } from './output-gate.js'
import { FtPrimary } from './primary.js'
import type { FtHelloParams, FtMessage, FtMode } from './protocol.js'
import { ckptBackup, ckptPrimary, type CheckpointStatus } from './checkpoint/roles.js'
import type { ColoStats } from './colo/run-colo.js'
import { StateReceiver } from './state-sync.js'
import type { VmState } from '../vm/state.js'

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
}

export type { AnnouncingPort }

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
 * The primary of a pair: connects to the backup, says HELLO, then records into the channel; on
 * losing the backup it holds every output and claims the VM: won, it runs on alone; lost, it halts
 * and releases nothing. Running alone, it can be protected again by a new backup (`restore`).
 */
export async function ftPrimary(o: FtRoleOptions, vm: { memoryBytes: number; imageSha: Buffer; limiter?: CpuLimiter; disk?: ScsiPath }): Promise<FtRole> {
  const timers = o.timers ?? realTimers
  const mode = o.mode ?? 'replay'
  if (mode === 'checkpoint') return ckptPrimary(o, vm, await connectBackup(o, vm, mode, timers), timers)
  const primary = new FtPrimary({ timers, reads: o.reads })
  const live = new LiveSide({ role: o, timers, outputs: primary, limiter: vm.limiter, memoryBytes: vm.memoryBytes, imageSha: vm.imageSha, hasDisk: vm.disk !== undefined })
  const ch = await live.hello(o.host, o.port, 'boot', 0)
  primary.pair(live.pairWith(ch))
  let handing = false
  const handover = async (): Promise<{ instructions: number }> => {
    const cur = live.cur
    const m = live.machine
    if (live.state !== 'paired' || handing || !m || !cur) throw new StorageError('InvalidArgument', `this VM is not the primary of a running pair (${live.state}): nothing to hand over`)
    const { ch } = cur
    const gate = cur.pairing.gate
    handing = true
    const at = await m.requestPause()
    try {
      primary.flush(m)
      // every output acknowledged: nothing is held that the backup would not produce again
      for (const t0 = timers.now(); gate.held > 0 && !ch.closed; ) {
        if (timers.now() - t0 > 10_000) throw new StorageError('Busy', `the backup has not acknowledged the log to instruction ${at} within 10 s`)
        await timers.sleep(1)
      }
      if (ch.closed) throw new StorageError('IoError', 'the FT channel ended during the handover')
      // the release mark covering all of it: the backup sends none of its outputs again
      primary.flush(m)
      await ch.drained()
    } catch (e) {
      handing = false
      m.resume()
      throw e
    }
    live.state = 'handed-over'
    o.log?.(`handing vm/${o.vm} over to the backup at instruction ${at}`)
    m.halt(`handed over to the backup at instruction ${at}`)
    m.resume()
    await ch.bye('handover', at)
    return { instructions: at }
  }
  return {
    status() {
      return liveStatus(live, 'primary', o, vm.limiter, primary.logBytes, timers)
    },
    machineOptions: (base) => {
      // the switch learned the VM's MAC when the uplink joined; from now on only a side holding the VM
      // announces it: a primary resumed after a takeover (SIGSTOP) would otherwise draw the VM's frames
      // back with an overdue keepalive
      live.uplink = base.net as AnnouncingPort | undefined
      live.mac = base.mac
      live.uplink?.announce?.()
      return { ...base, ...primary.machineOptions({ disk: base.disk, net: base.net, onConsole: base.onConsole }) }
    },
    attach(m) {
      live.machine = m
      primary.attach(m)
    },
    handover,
    restore: (to) => live.protect(to.host, to.port),
    async finish(summary) {
      if (live.state === 'handed-over') {
        await live.cur?.control?.stop()
        // the backup claims the VM's lock from us: keep ours until then
        o.arbiter.keep?.()
      } else await live.finish(summary.instructions)
      const outcome: FtReport['outcome'] = live.state
      return { role: 'primary', outcome, channelEnd: live.channelEnd, logBytes: primary.logBytes, takeoverMs: live.takeoverMs, ...liveFigures(live, timers), ...(live.restores.length ? { restores: live.restores } : {}) }
    },
  }
}

/** The current pairing's lag and output delay (none while alone). */
function liveFigures(live: LiveSide, timers: Timers): Pick<FtReport, 'lag' | 'outputDelay'> {
  const p = live.cur?.pairing ?? live.lastPairing
  return p ? { lag: p.lag.snapshot(timers.now()), outputDelay: p.gate.snapshot().delay } : {}
}

/** A live side's figures (FtStatus). */
function liveStatus(live: LiveSide, role: FtStatus['role'], o: FtRoleOptions, limiter: CpuLimiter | undefined, logBytes: number, timers: Timers): FtStatus {
  const now = timers.now()
  const p = live.cur?.pairing ?? live.lastPairing
  const d = p?.gate.snapshot().delay
  return {
    role,
    outcome: live.state,
    generation: o.arbiter.generation,
    lagMs: p ? p.lag.periodLag(now - 1000, now) : null,
    cpuLimit: limiter?.percent ?? null,
    logBytes,
    outputDelay: d ? { count: d.count, p50: d.p50, p99: d.p99 } : null,
    lag: p ? p.lag.snapshot(now) : null,
    protected: live.state === 'paired',
    ...(live.restores.length ? { restores: live.restores.length } : {}),
  }
}

/**
 * The backup of a pair: listens for one primary, accepts its HELLO, follows its log — from the
 * guest's first instruction, or (HELLO start `state`: a redundancy restore) from the running VM's
 * state that comes first; on losing it claims the VM: won, it replays to the last progress mark
 * and goes live (its outputs leave at once, and it can be protected again: `restore`); lost, it halts.
 */
export async function ftBackup(
  o: FtRoleOptions,
  vm: {
    memoryBytes: number
    imageSha: Buffer
    disk?: ScsiPath
    limiter?: CpuLimiter
    /** stops a backup still waiting for its primary */
    signal?: AbortSignal
    /** the disk as the VM uses it once live, if not `disk` (a local file the backup follows read-only) */
    liveDisk?: () => Promise<ScsiPath>
    onListening?: (port: number) => void
  },
): Promise<FtRole> {
  const timers = o.timers ?? realTimers
  // a backup follows its primary's replay or checkpoint mode (HELLO names it)
  const { listener, ch, hello } = await acceptPrimary(o, vm, ['replay', 'checkpoint'], timers)
  if (hello.mode === 'checkpoint') return ckptBackup(o, vm, ch, hello, listener, timers)
  const source = new EventSource(`(FT log from ${o.vm}'s primary)`, { memoryBytes: vm.memoryBytes, imageSha: vm.imageSha })
  source.push(encodeHeader(vm.memoryBytes, vm.imageSha))
  let logBytes = 0
  let outcome: FtReport['outcome'] = 'paired'
  let channelEnd: string | undefined
  let takeoverMs: number | undefined
  let machine: Machine | null = null
  /** the run is over (its own end): the channel's end that follows is no loss */
  let finished = false
  /** a backup starting from state acks (and may take over) only once it has all of it */
  let following = hello.start === 'boot'
  const disk = vm.disk ? new BackupDisk(vm.disk, hello.backupReads) : undefined
  const role: { backup?: FtBackup } = {}
  const receiving = hello.start === 'state' ? new StateReceiver(vm.memoryBytes) : undefined
  let state: VmState | undefined
  const stateDone = new Promise<VmState>((resolve, reject) => {
    if (!receiving) return
    let ended = false
    const fail = (e: unknown) => {
      ch.close((e as Error).message)
      reject(e)
    }
    ch.on('message', (m) => {
      if (ended) return
      try {
        if (m.type === 'STATE') receiving.add(m.data)
        else if (m.type === 'STATE_END') {
          ended = true
          receiving.end(m.instret, m.hash).then((s) => {
            following = true
            resolve(s)
          }, fail)
        }
      } catch (e) {
        ended = true
        fail(e)
      }
    })
    void ch.ended.then((e) => !following && reject(new StorageError('IoError', `the FT primary was lost before its state arrived: ${endText(e)}`)))
  })
  ch.on('message', (m) => {
    if (m.type === 'LOG') {
      logBytes += m.records.length
      role.backup!.received(m.records)
    }
  })
  const backup = (role.backup = new FtBackup({
    source,
    disk,
    ack: (a) => following && ch.send({ type: 'ACK', ...a }),
    timers,
    liveDisk: vm.liveDisk,
  }))
  disk && (disk.onFailed = (e) => ch.close(e.message))
  // once live, the VM's outputs leave through this (at once; held again once a new backup follows)
  const outputs = new FtPrimary({ timers, reads: hello.backupReads })
  const live = new LiveSide({ role: o, timers, outputs, limiter: vm.limiter, memoryBytes: vm.memoryBytes, imageSha: vm.imageSha, hasDisk: vm.disk !== undefined })
  if (receiving) {
    try {
      state = await stateDone
    } catch (e) {
      void listener.close()
      throw e
    }
    o.log?.(`received the state of vm/${o.vm} at instruction ${state.instret} (${receiving.bytes} bytes): following its log`)
    // the first ACK: the primary's outputs wait for this backup from now on
    backup.received(Buffer.alloc(0))
  }
  const ended = ch.ended.then(async (e) => {
    await listener.close()
    channelEnd = endText(e)
    if (finished || (e.kind === 'bye' && e.bye.reason === 'stop')) {
      // a clean end: the log has its END or close mark
      source.end()
      return
    }
    const t0 = timers.now()
    backup.peerLost()
    if (e.kind === 'bye') o.log?.(`the FT primary hands vm/${o.vm} over at instruction ${e.bye.instret}: claiming it from generation ${hello.lockGeneration}`)
    else o.log?.(`the FT primary is lost (${e.reason}): claiming vm/${o.vm} from generation ${hello.lockGeneration}`)
    const won = await claimVm(o, hello.lockGeneration, timers)
    if (!won) {
      outcome = 'halted'
      o.log?.(`the primary kept vm/${o.vm}: halted`)
      machine?.halt(`halted: the primary kept vm/${o.vm}`)
      source.end(source.horizon)
      return
    }
    await o.arbiter.fence?.()
    outcome = 'live'
    // a handover's log is whole (the primary stopped at its count and everything was acked): replayed to its last record
    if (e.kind === 'bye') source.end()
    else backup.failover()
    takeoverMs = timers.now() - t0
    o.log?.(`won vm/${o.vm}: going live at instruction ${source.horizon === Infinity ? 'the log\'s end' : source.horizon}`)
  })
  return {
    hello,
    state,
    machineOptions: (base) => {
      // an uplink to a tandem switch announces the MAC from now on (UdpUplink.announce)
      const net = base.net as AnnouncingPort | undefined
      live.uplink = net
      live.mac = base.mac
      const announce = net?.announce && base.mac ? () => net.announce!(base.mac!) : undefined
      const wrapped = outputs.machineOptions({ net, onConsole: base.onConsole })
      const opts = backup.machineOptions({ net: wrapped.net, mac: base.mac, onConsole: wrapped.onConsole, announce })
      const followSlice = opts.afterSlice!
      return { ...base, ...opts, record: outputs.sink, afterSlice: (m, waiting) => (backup.live ? outputs.afterSlice(m, waiting === true) : followSlice(m, waiting)) }
    },
    attach(m) {
      machine = m
      live.machine = m
      backup.attach(m)
      outputs.attach(m)
    },
    restore: async (to) => {
      if (!backup.live) throw new StorageError('InvalidArgument', `this VM is the backup of vm/${o.vm}, following its primary: there is no running VM to protect here`)
      return live.protect(to.host, to.port)
    },
    status: () => {
      if (!backup.live) return { role: 'backup', outcome, generation: outcome === 'live' ? o.arbiter.generation : hello.lockGeneration, lagMs: null, cpuLimit: vm.limiter?.percent ?? null, logBytes, outputDelay: null, lag: null, protected: false }
      return { ...liveStatus(live, 'backup', o, vm.limiter, outputs.logBytes, timers), outcome: live.state === 'halted' ? 'halted' : outcome }
    },
    async finish(summary) {
      finished = true
      ch.close('done')
      await ended
      if (backup.live) await live.finish(summary.instructions)
      const out = live.state === 'halted' ? 'halted' : outcome
      return { role: 'backup', outcome: out, channelEnd, logBytes, takeoverMs, ...(backup.live ? { resent: backup.resent } : {}), ...(live.restores.length ? { restores: live.restores, ...liveFigures(live, timers) } : {}) }
    },
  }
}

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

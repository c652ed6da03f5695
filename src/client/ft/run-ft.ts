import { StorageError } from '../../disk-formats/errors.js'
import { EventSource, encodeHeader } from '../vm/events.js'
import type { Machine, MachineOptions, RunSummary } from '../vm/machine.js'
import type { SwitchPort } from '../vm/net.js'
import type { ScsiPath } from '../vm/scsi-path.js'
import { realTimers, waitAtMost, type Timers } from '../vm/timers.js'
import type { CpuLimiter } from '../vm/cpu-limit.js'
import { BackupDisk, type BackupReads } from './backup-disk.js'
import { FtBackup } from './backup.js'
import { FtChannel, FtListener, type FtEnd } from './channel.js'
import type { LagMeter } from './lag.js'
import { LiveSide } from './live-side.js'
import type { OutputGate } from './output-gate.js'
import { FtPrimary } from './primary.js'
import type { FtHelloParams, FtMessage, FtMode } from './protocol.js'
import { ckptBackup, ckptPrimary } from './checkpoint/roles.js'
import { StateReceiver } from './state-sync.js'
import type { VmState } from '../vm/state.js'
import { acceptPrimary, claimVm, connectBackup, endText, nextMessage, type AnnouncingPort, type BackupVm, type FtReport, type FtRole, type FtRoleOptions, type FtStatus } from './role.js'

export { acceptPrimary, CLAIM_RETRY_MS, claimVm, connectBackup, endText, nextMessage } from './role.js'
export type { AnnouncingPort, Arbiter, CheckpointStatus, ColoStats, FtReport, FtRole, FtRoleOptions, FtStatus, RestoreSummary } from './role.js'


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
      live.uplink.take(base)
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

/** A backup whose replay reached the guest's exit waits at most this long for the primary's BYE before it closes the channel. */
const BYE_WAIT_MS = 5000

/**
 * The backup of a pair: listens for one primary, accepts its HELLO, follows its log — from the
 * guest's first instruction, or (HELLO start `state`: a redundancy restore) from the running VM's
 * state that comes first; on losing it claims the VM: won, it replays to the last progress mark
 * and goes live (its outputs leave at once, and it can be protected again: `restore`); lost, it halts.
 */
export async function ftBackup(
  o: FtRoleOptions,
  vm: BackupVm,
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
      live.uplink.port = net
      live.uplink.mac = base.mac
      const announce = net?.announce && base.mac ? () => net.announce!(base.mac!) : undefined
      const wrapped = outputs.machineOptions({ net, onConsole: base.onConsole })
      const opts = backup.machineOptions({ net: wrapped.net, mac: base.mac, onConsole: wrapped.onConsole, announce })
      const followSlice = opts.afterSlice!
      const followExit = opts.onExit!
      return {
        ...base,
        ...opts,
        record: outputs.sink,
        afterSlice: (m, waiting) => (backup.live ? outputs.afterSlice(m, waiting === true) : followSlice(m, waiting)),
        onExit: (m) => (backup.live ? outputs.flush(m) : followExit(m)),
      }
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
      return { ...liveStatus(live, 'backup', o, vm.limiter, logBytes + outputs.logBytes, timers), outcome: live.state === 'halted' ? 'halted' : outcome }
    },
    async finish(summary) {
      finished = true
      if (!backup.live && summary.end === 'exit') {
        // the guest's exit replayed: the primary says BYE once its own run has ended (it ships the
        // END record at the exit, before that); closing first would look to it like a lost backup
        await waitAtMost(timers, ch.ended, BYE_WAIT_MS)
      }
      ch.close('done')
      await ended
      if (backup.live) await live.finish(summary.instructions)
      const out = live.state === 'halted' ? 'halted' : outcome
      return { role: 'backup', outcome: out, channelEnd, logBytes, takeoverMs, ...(backup.live ? { resent: backup.resent } : {}), ...(live.restores.length ? { restores: live.restores, ...liveFigures(live, timers) } : {}) }
    },
  }
}

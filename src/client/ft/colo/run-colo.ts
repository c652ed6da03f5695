import type { Machine, MachineOptions, RunEnd } from '../../vm/machine.js'
import type { SwitchPort } from '../../vm/net.js'
import { realTimers, waitAtMost, type Timers } from '../../vm/timers.js'
import type { CpuLimiter } from '../../vm/cpu-limit.js'
import { rarpAnnouncement } from '../backup.js'
import type { FtChannel } from '../channel.js'
import type { FtMessage } from '../protocol.js'
import { FtProtocolError } from '../protocol.js'
import { acceptPrimary, claimVm, connectBackup, endText, VmUplink, type AnnouncingPort, type BackupVm, type ColoStats, type FtReport, type FtRole, type FtRoleOptions } from '../role.js'

export type { ColoStats }
import { percentiles, type Percentiles } from '../stats.js'
import { OutputComparator, type MismatchReason } from './comparator.js'
import { decodeColo, encodeColo, type ColoMessage, type OutputStream } from './messages.js'
import { DirtyPageResync, type Resync } from './resync.js'
import { EpochWriteBuffer } from '../checkpoint/write-buffer.js'

/** the default of `--ft-colo-timeout-ms`: an output of the primary unmatched this long forces a resync */
export const COLO_TIMEOUT_MS = 300
/** samples kept for the percentiles (the most recent) */
const SAMPLES = 4096

export interface ColoOptions {
  /** an output of the primary unmatched this long forces a resync (default COLO_TIMEOUT_MS) */
  timeoutMs?: number
  /** how the secondary is brought to the primary's state (default: DirtyPageResync) */
  resync?: Resync
  /**
   * a secondary whose disk buffer holds this many writes (default MAX_HELD_WRITES) stops between
   * slices until the next resync drops them (the primary's next output, unmatched, forces one) or
   * the pair ends: the buffer is bounded, and a secondary never runs far ahead on the disk
   */
  maxHeldWrites?: number
  /**
   * a resync at least this often, matched or not (`--ft-colo-checkpoint-ms`; QEMU COLO's
   * x-checkpoint-delay): bounds how far the secondary's state and disk buffer drift from the
   * primary's while every output matches (default: none, resyncs only on a mismatch)
   */
  checkpointMs?: number
}

/** why the primary resyncs its secondary: an output's comparison, or the period */
export type ResyncReason = MismatchReason | 'periodic'

/**
 * How a secondary's run may end and still go on from a resync's state: its guest ended (exit,
 * fault, WFI with nothing to wake it) or hit the instruction limit before its primary did. A run
 * stopped by the host or halted does not run again.
 */
const RERUN_ENDS: ReadonlySet<RunEnd> = new Set<RunEnd>(['exit', 'fault', 'halt', 'limit'])

/** the default of ColoOptions.maxHeldWrites */
export const MAX_HELD_WRITES = 4096


const summary = (s: number[]): Percentiles & { mean: number } => ({ ...percentiles(s), mean: s.length ? s.reduce((a, b) => a + b, 0) / s.length : 0 })
const keep = (s: number[], v: number) => {
  s.push(v)
  if (s.length > SAMPLES) s.splice(0, s.length - SAMPLES)
}

const coloSend = (ch: FtChannel, m: ColoMessage) => {
  if (!ch.closed) ch.send({ type: 'COLO', data: encodeColo(m) })
}

/** a COLO frame's message, or the channel closed with the reason */
function coloOf(ch: FtChannel, m: FtMessage): ColoMessage | null {
  if (m.type !== 'COLO') return null
  try {
    return decodeColo(m.data)
  } catch (e) {
    if (!(e instanceof FtProtocolError)) throw e
    ch.close(`bad COLO message: ${e.message}`)
    return null
  }
}

/**
 * The primary of a quasi-lockstep pair (colo/SPEC.md): runs live and forwards each frame its port
 * receives to the secondary; holds each output (NIC frame, console line) until the secondary's
 * n-th output of the same stream is equal (released at once) or a mismatch/timeout resyncs the
 * secondary (the VM paused for the capture; the epoch's outputs released when the secondary has
 * the state). On losing the secondary: the same claim as the replay mode; won, it runs alone.
 */
export async function coloPrimary(o: FtRoleOptions & { colo?: ColoOptions }, vm: { memoryBytes: number; imageSha: Buffer; limiter?: CpuLimiter }): Promise<FtRole> {
  const timers = o.timers ?? realTimers
  const resync = o.colo?.resync ?? new DirtyPageResync()
  const ch = await connectBackup(o, vm, 'colo', timers)
  let outcome: FtReport['outcome'] = 'paired'
  let machine: Machine | null = null
  let channelEnd: string | undefined
  let takeoverMs: number | undefined
  const stats = { outputs: 0, releasedByResync: 0, resyncs: { mismatch: 0, timeout: 0, overflow: 0, periodic: 0 }, syncBytes: 0, lastPages: 0 }
  const checkpointMs = o.colo?.checkpointMs
  /** when the last resync began (the pair's start before the first) */
  let lastSync = timers.now()
  const pauseMs: number[] = []
  const syncMs: number[] = []
  const heldMs: number[] = []
  /** outputs of past epochs, released when the secondary acknowledges the sync that ended them */
  const awaitingAck = new Map<number, { started: number; outputs: Array<{ release: () => void }> }>()
  let syncing = false
  let peerLost = false
  const comparator = new OutputComparator({
    timers,
    timeoutMs: o.colo?.timeoutMs ?? COLO_TIMEOUT_MS,
    onMismatch: (reason, detail) => void sync(reason, detail),
    onReleased: (epoch, counts) => coloSend(ch, { kind: 'RELEASED', epoch, frames: counts.frame, console: counts.console }),
  })
  const paired = () => outcome === 'paired' && !peerLost

  const output = (stream: OutputStream, bytes: Buffer, release: () => void) => {
    stats.outputs++
    if (outcome === 'alone') return release()
    if (outcome !== 'paired') return
    // while the claim is decided: held (the lost handler takes them)
    const t0 = timers.now()
    comparator.primary(stream, bytes, () => {
      keep(heldMs, timers.now() - t0)
      release()
    })
  }
  let line: number[] = []
  let consoleWrite: ((b: number) => void) | undefined
  const flushLine = () => {
    if (!line.length || !consoleWrite) return
    const bytes = line
    const w = consoleWrite
    line = []
    output('console', Buffer.from(bytes), () => bytes.forEach(w))
  }

  async function sync(reason: ResyncReason, detail: string): Promise<void> {
    const m = machine
    if (syncing || !paired() || !m) return
    syncing = true
    stats.resyncs[reason]++
    const t0 = timers.now()
    lastSync = t0
    try {
      await m.requestPause()
      if (!paired()) return
      // a partial console line belongs to the epoch that ends here (the secondary starts a fresh one)
      flushLine()
      // no turn of the event loop from the capture to the SYNC's send: a frame the port receives
      // after is forwarded after the SYNC, one before is in the captured NIC queue or memory
      const parts = await resync.capture(m)
      const outputs = comparator.nextEpoch()
      const epoch = comparator.epoch
      awaitingAck.set(epoch, { started: t0, outputs })
      let bytes = 0
      parts.forEach((p, part) => {
        bytes += p.length
        coloSend(ch, { kind: 'SYNC', epoch, part, parts: parts.length, bytes: p })
      })
      stats.syncBytes += bytes
      stats.lastPages = (resync as Partial<DirtyPageResync>).last?.pages ?? 0
      o.log?.(`colo: resync ${epoch} (${reason}: ${detail}): ${bytes} bytes`)
    } finally {
      m.resume()
      keep(pauseMs, timers.now() - t0)
      syncing = false
    }
  }

  const acked = (epoch: number) => {
    for (const [e, a] of awaitingAck) {
      if (e > epoch) continue
      awaitingAck.delete(e)
      keep(syncMs, timers.now() - a.started)
      stats.releasedByResync += a.outputs.length
      for (const h of a.outputs) h.release()
    }
  }
  ch.on('message', (msg) => {
    const c = coloOf(ch, msg)
    if (!c || !paired()) return
    if (c.kind === 'OUTPUT') comparator.secondary(c.epoch, c.stream, c.bytes)
    else if (c.kind === 'SYNC_ACK') acked(c.epoch)
    else ch.close(`the secondary sent a ${c.kind}`)
  })
  const ticking = new AbortController()
  void (async () => {
    const every = Math.max(5, Math.min(comparator.timeoutMs, checkpointMs ?? Infinity) / 4)
    while (!ticking.signal.aborted) {
      await timers.sleep(every, ticking.signal)
      comparator.tick()
      // while the guest runs: once it ended, its last outputs' comparison or timeout ends the pair (finish)
      if (checkpointMs !== undefined && (machine as Machine | null)?.ended === null && timers.now() - lastSync >= checkpointMs) void sync('periodic', `${checkpointMs} ms since the last`)
    }
  })()

  const uplink = new VmUplink()
  const lost = ch.lost.then(async ({ reason }) => {
    channelEnd = reason
    const t0 = timers.now()
    o.log?.(`the FT secondary is lost (${reason}): claiming vm/${o.vm} from generation ${o.arbiter.generation}`)
    // every output stays held until the claim is decided (no resync starts meanwhile)
    peerLost = true
    const won = await claimVm(o, o.arbiter.generation, timers)
    const held = [...[...awaitingAck.values()].flatMap((a) => a.outputs), ...comparator.nextEpoch()]
    awaitingAck.clear()
    if (won) {
      outcome = 'alone'
      uplink.claimed()
      await o.arbiter.fence?.()
      stats.releasedByResync += held.length
      for (const h of held) h.release()
      takeoverMs = timers.now() - t0
      o.log?.(`won vm/${o.vm}: running alone`)
    } else {
      outcome = 'halted'
      o.log?.(`lost vm/${o.vm} to the secondary: halted, no output released`)
      machine?.halt(`halted: the secondary took vm/${o.vm}`)
    }
  })
  void ch.ended.then((e) => e.kind === 'bye' && (channelEnd = endText(e)))

  const colo = (): ColoStats => ({ epoch: comparator.epoch, outputs: stats.outputs, releasedMatched: comparator.matched, releasedByResync: stats.releasedByResync, resyncs: { ...stats.resyncs }, pauseMs: summary(pauseMs), syncMs: summary(syncMs), syncBytes: stats.syncBytes, lastPages: stats.lastPages, heldMs: summary(heldMs) })
  const delay = () => {
    const d = percentiles(heldMs)
    return { count: d.count, p50: d.p50, p99: d.p99 }
  }
  return {
    status: () => ({ role: 'primary', outcome, generation: o.arbiter.generation, lagMs: null, cpuLimit: vm.limiter?.percent ?? null, logBytes: ch.sent.bytes, outputDelay: delay(), lag: null, colo: colo() }),
    machineOptions(base: MachineOptions): MachineOptions {
      uplink.take(base)
      const p = base.net
      let net: SwitchPort | undefined
      if (p) {
        const outer: SwitchPort = {
          onReceive: null,
          send: (frame) => {
            const copy = Buffer.from(frame)
            output('frame', copy, () => p.send(copy))
          },
          close: () => p.close(),
        }
        p.onReceive = (f) => {
          if (paired()) coloSend(ch, { kind: 'INPUT', frame: f })
          outer.onReceive?.(f)
        }
        net = outer
      }
      consoleWrite = base.onConsole
      const onConsole = base.onConsole && ((b: number) => {
        line.push(b)
        if (b === 10 || line.length >= 4096) flushLine()
      })
      return { ...base, net, onConsole }
    },
    attach(m) {
      machine = m
      resync.begin(m)
    },
    async finish() {
      flushLine()
      if (paired() && !ch.closed) {
        // the last outputs: matched, or released by a resync (the timeout forces one)
        for (const t0 = timers.now(); (comparator.heldCount > 0 || awaitingAck.size > 0) && !ch.closed && timers.now() - t0 < 5000; ) await timers.sleep(5)
      }
      ticking.abort()
      if (paired() && !ch.closed) {
        ch.send({ type: 'BYE', reason: 'stop', instret: machine?.hart.instret ?? 0 })
        await ch.drained()
        await waitAtMost(timers, new Promise<void>((r) => ch.once('end', () => r())), 1000)
        ch.close('done')
      } else {
        await waitAtMost(timers, lost, 5000)
      }
      return { role: 'primary', outcome, channelEnd, logBytes: ch.sent.bytes, takeoverMs, outputDelay: percentiles(heldMs), colo: colo() }
    },
  }
}

/**
 * The secondary of a quasi-lockstep pair (colo/SPEC.md): runs live on its own time and entropy,
 * fed the frames the primary receives; sends each of its outputs to the primary for comparison
 * (none leaves this host); takes each resync; on losing the primary claims the VM and, won, goes
 * on live from where it is — its last synced state plus the inputs since — sending the outputs
 * the primary had not marked released.
 */
export async function coloSecondary(
  o: FtRoleOptions & { colo?: ColoOptions },
  vm: BackupVm,
): Promise<FtRole> {
  const timers = o.timers ?? realTimers
  const resync = o.colo?.resync ?? new DirtyPageResync()
  const { listener, ch, hello } = await acceptPrimary(o, vm, ['colo'], timers)

  let outcome: FtReport['outcome'] = 'paired'
  let channelEnd: string | undefined
  let takeoverMs: number | undefined
  let machine: Machine | null = null
  let finished = false
  let live = false
  let epoch = 0
  let syncBytes = 0
  let resent = 0
  /** outputs the primary may not have released: sent at go-live */
  let unreleased: Array<{ epoch: number; stream: OutputStream; index: number; bytes: Buffer }> = []
  const made: Record<OutputStream, number> = { frame: 0, console: 0 }
  /** a resync being taken: inputs wait (they follow the synced state) */
  let applying = false
  let waitingInputs: Buffer[] = []
  let parts: { epoch: number; got: Buffer[]; count: number } | null = null
  let real: { net?: AnnouncingPort; mac?: Buffer; onConsole?: (b: number) => void } = {}
  /** the secondary's disk writes: never on the shared disk while paired (the primary's are), dropped at each resync, written at go-live */
  let writes: EpochWriteBuffer | undefined
  const maxHeld = o.colo?.maxHeldWrites ?? MAX_HELD_WRITES
  /** a VM stopped at the buffer's bound: woken when a resync, the go-live or the end may have come */
  let wake: (() => void) | null = null
  const nudge = () => {
    const w = wake
    wake = null
    w?.()
  }
  let heldWritesMax = 0
  const atBound = () => !!writes && writes.held >= maxHeld && !live && !finished && !applying && !ch.closed
  /** the primary is lost and the claim not decided yet */
  let deciding = false
  /** a resync was taken after the VM's run ended: it runs again from that state */
  let rerun = false
  /** runAgain waiting: woken by a resync taken, or the channel's end */
  let again: (() => void) | null = null
  const wakeAgain = () => {
    const w = again
    again = null
    w?.()
  }
  const input: SwitchPort = {
    onReceive: null,
    send: (frame) => out('frame', Buffer.from(frame)),
    close: () => real.net?.close(),
  }
  function out(stream: OutputStream, bytes: Buffer): void {
    if (live) {
      if (stream === 'frame') real.net?.send(bytes)
      else bytes.forEach((b) => real.onConsole?.(b))
      return
    }
    unreleased.push({ epoch, stream, index: made[stream]++, bytes })
    coloSend(ch, { kind: 'OUTPUT', epoch, stream, bytes })
  }
  let line: number[] = []
  const onConsole = (b: number) => {
    if (live) return real.onConsole?.(b)
    line.push(b)
    if (b === 10 || line.length >= 4096) {
      const l = Buffer.from(line)
      line = []
      out('console', l)
    }
  }

  async function apply(e: number, got: Buffer[]): Promise<void> {
    const m = machine
    if (!m) return
    applying = true
    try {
      await m.requestPause()
      if (live || finished) return
      // the pause may have resolved as the run ended (the guest ended here first)
      const ended = m.ended
      if (ended !== null && !RERUN_ENDS.has(ended)) {
        // it will not run the primary's state: no SYNC_ACK (the primary holds that epoch's outputs until the pair ends), and its writes stay with the state it has
        o.log?.(`colo: the resync to epoch ${e} is not taken: the VM's run was ${ended}`)
        return
      }
      await resync.apply(m, got)
      // the paused (or ended) VM has every request's result: its writes are all in the buffer, and the disk as the primary wrote it goes with the primary's state
      writes?.drop()
      if (ended !== null) {
        // an ended run given the primary's state runs again from it (runAgain): going live now, it would go on from a state whose writes were just dropped
        rerun = true
        wakeAgain()
      }
      epoch = e
      made.frame = made.console = 0
      unreleased = []
      line = []
      syncBytes += got.reduce((n, b) => n + b.length, 0)
      coloSend(ch, { kind: 'SYNC_ACK', epoch: e })
    } catch (err) {
      // a state this side cannot take: it must not go live on its own (diverged) state
      o.log?.(`colo: the resync to epoch ${e} failed: ${(err as Error).message}`)
      finished = true
      ch.close(`the resync failed: ${(err as Error).message}`)
      m.halt(`halted: the resync from the primary failed`)
    } finally {
      applying = false
      m.resume()
      const q = waitingInputs
      waitingInputs = []
      for (const f of q) input.onReceive?.(f)
    }
  }

  ch.on('message', (msg) => {
    const c = coloOf(ch, msg)
    if (!c) return
    if (c.kind === 'INPUT') {
      if (applying || parts) waitingInputs.push(c.frame)
      else input.onReceive?.(c.frame)
    } else if (c.kind === 'SYNC') {
      if (!parts || parts.epoch !== c.epoch) parts = { epoch: c.epoch, got: [], count: c.parts }
      if (c.part !== parts.got.length || c.parts !== parts.count) return void ch.close(`SYNC part ${c.part} of ${c.parts} out of order`)
      parts.got.push(Buffer.from(c.bytes))
      if (parts.got.length === parts.count) {
        const p = parts
        parts = null
        applying = true
        nudge()
        void apply(p.epoch, p.got)
      }
    } else if (c.kind === 'RELEASED') {
      if (c.epoch === epoch) unreleased = unreleased.filter((u) => u.epoch !== c.epoch || u.index >= (u.stream === 'frame' ? c.frames : c.console))
    } else ch.close(`the primary sent a ${c.kind}`)
  })

  const goLive = () => {
    live = true
    parts = null
    const { net, mac } = real
    if (net) net.onReceive = (f) => input.onReceive?.(f)
    if (net && mac) {
      net.send(rarpAnnouncement(mac))
      net.announce?.(mac)
    }
    const pending = unreleased
    unreleased = []
    if (line.length) pending.push({ epoch, stream: 'console', index: made.console, bytes: Buffer.from(line) })
    line = []
    for (const u of pending) out(u.stream, u.bytes)
    resent = pending.length
  }

  const ended = ch.ended.then(async (e) => {
    // the VM waits between slices until the claim is decided (a guest that ended meanwhile would end the run unclaimed)
    deciding = !finished
    wakeAgain()
    const decided = () => {
      deciding = false
      nudge()
    }
    await listener.close()
    channelEnd = endText(e)
    if (finished) return decided()
    if (e.kind === 'bye' && e.bye.reason === 'stop') {
      machine?.halt('the primary stopped')
      return decided()
    }
    try {
      const t0 = timers.now()
      o.log?.(`the FT primary is lost (${endText(e)}): claiming vm/${o.vm} from generation ${hello.lockGeneration}`)
      const won = await claimVm(o, hello.lockGeneration, timers)
      if (!won) {
        outcome = 'halted'
        o.log?.(`the primary kept vm/${o.vm}: halted`)
        machine?.halt(`halted: the primary kept vm/${o.vm}`)
        return
      }
      await o.arbiter.fence?.()
      if (writes) {
        // the writes its guest saw complete since the last resync, in order, before any newer one
        const held = writes.held
        await writes.direct(vm.liveDisk ? await vm.liveDisk() : undefined)
        if (writes.failed) o.log?.(writes.failed.message)
        else if (held) o.log?.(`colo: ${held} disk writes since the last resync written`)
      }
      outcome = 'live'
      goLive()
      takeoverMs = timers.now() - t0
      o.log?.(`won vm/${o.vm}: going live at epoch ${epoch} (the last synced state and the inputs since), ${resent} outputs sent again`)
    } finally {
      decided()
    }
  })
  const colo = (): ColoStats => {
    const none = summary([])
    return { epoch, outputs: made.frame + made.console, releasedMatched: 0, releasedByResync: 0, resyncs: { mismatch: 0, timeout: 0, overflow: 0, periodic: 0 }, pauseMs: none, syncMs: none, syncBytes, lastPages: (resync as Partial<DirtyPageResync>).last?.pages ?? 0, heldMs: none, ...(writes ? { heldWritesMax } : {}) }
  }
  return {
    hello,
    machineOptions(base: MachineOptions): MachineOptions {
      real = { net: base.net as AnnouncingPort | undefined, mac: base.mac, onConsole: base.onConsole }
      writes = base.disk && new EpochWriteBuffer(base.disk)
      const before = base.afterSlice
      const afterSlice = async (m: Machine, waiting?: boolean) => {
        await before?.(m, waiting)
        if (writes) heldWritesMax = Math.max(heldWritesMax, writes.held)
        while (deciding || atBound()) await new Promise<void>((r) => (wake = r))
      }
      return { ...base, net: input, onConsole, afterSlice, ...(writes ? { disk: writes } : {}) }
    },
    attach(m) {
      machine = m
      resync.begin(m)
    },
    async runAgain(s) {
      for (;;) {
        if (rerun) {
          rerun = false
          o.log?.(`colo: the guest ended here first (${s.end} at instruction ${s.instructions}); running again from the primary's state at epoch ${epoch}`)
          return true
        }
        // paired, a guest that ended here waits for its primary: a resync runs it again, the pair's end finishes it
        if (live || finished || ch.closed || outcome !== 'paired' || !RERUN_ENDS.has(s.end)) return false
        await new Promise<void>((r) => (again = r))
      }
    },
    status: () => ({ role: 'backup', outcome, generation: outcome === 'live' ? o.arbiter.generation : hello.lockGeneration, lagMs: null, cpuLimit: vm.limiter?.percent ?? null, logBytes: syncBytes, outputDelay: null, lag: null, colo: colo() }),
    async finish() {
      // the guest ended here on its own (it saw the same QUIT): the primary's BYE ends the pair
      // cleanly; a channel already ended (runAgain returns then) is the claim's to decide
      if (outcome === 'paired' && !finished) {
        if (ch.closed) await ended
        else await waitAtMost(timers, ended, 5000)
      }
      finished = true
      ch.close('done')
      await ended
      return { role: 'backup', outcome, channelEnd, logBytes: syncBytes, takeoverMs, ...(live ? { resent } : {}), colo: colo() }
    },
  }
}

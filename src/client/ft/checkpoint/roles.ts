import { Machine, type MachineOptions, type RunSummary } from '../../vm/machine.js'
import type { SwitchPort } from '../../vm/net.js'
import type { ScsiPath } from '../../vm/scsi-path.js'
import { waitAtMost, type Timers } from '../../vm/timers.js'
import type { CpuLimiter } from '../../vm/cpu-limit.js'
import type { VmState } from '../../vm/state.js'
import { rarpAnnouncement } from '../backup.js'
import type { FtChannel, FtListener } from '../channel.js'
import { OutputGate } from '../output-gate.js'
import { FtProtocolError, type FtHelloParams, type FtMessage } from '../protocol.js'
import { claimVm, endText, VmUplink, type AnnouncingPort, type CheckpointStatus, type FtReport, type FtRole, type FtRoleOptions } from '../role.js'

export type { CheckpointStatus }
import { percentiles, type Percentiles } from '../stats.js'
import { decodeFeedback } from './diff.js'
import { EpochApplier, EpochCapture, type AppliedEpoch, type EpochFigures } from './epoch.js'
import { EpochWriteBuffer, type BufferedWrite } from './write-buffer.js'

/** the default epoch (issue 18: 25 ms) */
export const EPOCH_MS = 25
/** epochs whose figures the status keeps */
const RECENT = 400



/** Figures of the recent epochs, summed since the start where the status says so. */
class EpochStats {
  private recent: (EpochFigures & { pauseMs: number })[] = []
  epochs = 0
  acked = 0
  stopped = 0
  running = 0
  diffs = 0
  bytes = 0
  candidates = 0

  add(f: EpochFigures, pauseMs: number): void {
    this.epochs++
    this.stopped += f.stopped
    this.running += f.running
    this.diffs += f.diffs
    this.bytes += f.bytes
    this.recent.push({ ...f, pauseMs })
    if (this.recent.length > RECENT * 2) this.recent = this.recent.slice(-RECENT)
  }

  status(epochMs: number | null): CheckpointStatus {
    const r = this.recent.slice(-RECENT)
    const mean = (f: (x: (typeof r)[0]) => number) => (r.length ? r.reduce((n, x) => n + f(x), 0) / r.length : 0)
    return {
      epochMs,
      epochs: this.epochs,
      acked: this.acked,
      pause: epochMs === null ? null : percentiles(r.map((x) => x.pauseMs)),
      pauseMean: epochMs === null ? null : mean((x) => x.pauseMs),
      bytesPerEpoch: mean((x) => x.bytes),
      wholeBytesPerEpoch: mean((x) => x.wholeBytes),
      pagesStopped: this.stopped,
      pagesRunning: this.running,
      pagesDiff: this.diffs,
      diffCandidates: this.candidates,
      stateBytes: this.bytes,
    }
  }
}

/**
 * The primary of a checkpoint pair (checkpoint/SPEC.md): runs the VM live; every `epochMs` a short
 * stop takes the epoch (EpochCapture), which streams to the backup while the VM runs on. Console
 * bytes and frames wait in the output gate, disk writes in the EpochWriteBuffer, until the backup
 * acknowledges their epoch. On losing the backup: the claim, as the replay mode's primary.
 */
export async function ckptPrimary(o: FtRoleOptions, vm: { memoryBytes: number; imageSha: Buffer; limiter?: CpuLimiter }, ch: FtChannel, timers: Timers): Promise<FtRole> {
  const epochMs = o.epochMs ?? EPOCH_MS
  const gate = new OutputGate(timers)
  const stats = new EpochStats()
  let capture: EpochCapture | null = null
  let disk: EpochWriteBuffer | undefined
  let machine: Machine | null = null
  let outcome: FtReport['outcome'] = 'paired'
  let channelEnd: string | undefined
  let takeoverMs: number | undefined
  let peerGone = false
  let stopping = false
  const wake = new AbortController()
  let consoleBytes: number[] = []
  let consoleSink: ((b: number) => void) | undefined
  /** outputs produced now belong to the next epoch: released once the backup has acknowledged it */
  const epochNow = () => capture?.taken ?? 0
  const holdConsole = () => {
    if (!consoleBytes.length || !consoleSink) return
    const bytes = consoleBytes
    const w = consoleSink
    consoleBytes = []
    gate.hold('console', epochNow(), () => bytes.forEach(w), bytes.length)
  }
  const fail = (why: string) => {
    o.log?.(why)
    ch.close(why)
  }
  ch.on('message', (m) => {
    if (m.type === 'ACK') {
      if (m.received > epochNow()) return fail(`the backup acknowledged epoch ${m.received}, only ${epochNow()} were sent`)
      stats.acked = Math.max(stats.acked, m.received)
      // the epoch's writes go to the disk first: a write is visible (read back by anyone) only once acknowledged
      void disk?.acked(m.received).then(() => {
        if (disk?.failed) fail(disk.failed.message)
      })
      gate.acked(m.received)
    } else if (m.type === 'FEEDBACK' && capture) {
      const pages = decodeFeedback(m.data, capture.pages)
      if (typeof pages === 'string') return fail(`a bad FEEDBACK: ${pages}`)
      capture.feedback(pages)
      stats.candidates = pages.length
    }
  })

  /** One epoch: the stop, then the stream. False when the pair is over. */
  const epoch = async (m: Machine): Promise<boolean> => {
    // a turn first: a VM resumed from the last stop reaches its WFI wait, where a pause request wakes
    // it (asked for before, it would wait for the next interrupt: Machine.poll sets no wake until then)
    await timers.yield()
    await m.requestPause()
    const t0 = timers.now()
    if (peerGone) {
      m.resume()
      return false
    }
    holdConsole()
    const writes: BufferedWrite[] = disk ? disk.cut(epochNow() + 1) : []
    const e = capture!.take(m, { writes, writtenThrough: disk?.writtenThrough ?? 0 })
    m.resume()
    const pauseMs = timers.now() - t0
    for await (const b of e.stream(() => timers.yield())) {
      if (peerGone) {
        e.abandon()
        return false
      }
      if (!ch.send({ type: 'STATE', data: b })) await ch.drained()
    }
    if (peerGone) return false
    ch.send({ type: 'STATE_END', instret: e.instret, hash: e.hash })
    stats.add(e.figures, pauseMs)
    return true
  }
  let loop: Promise<void> = Promise.resolve()
  const run = async (m: Machine) => {
    let start = timers.now()
    while (!stopping && !peerGone) {
      const wait = epochMs - (timers.now() - start)
      if (wait > 0) await timers.sleep(wait, wake.signal)
      if (stopping || peerGone) break
      start = timers.now()
      if (!(await epoch(m))) break
    }
  }

  const lost = ch.lost.then(async ({ reason }) => {
    peerGone = true
    wake.abort()
    capture?.abandon()
    channelEnd = reason
    const t0 = timers.now()
    gate.claimed(false)
    o.log?.(`the FT backup is lost (${reason}): claiming vm/${o.vm} from generation ${o.arbiter.generation}`)
    const won = await claimVm(o, o.arbiter.generation, timers)
    if (won) {
      outcome = 'alone'
      uplink.claimed()
      await o.arbiter.fence?.()
      // what the backup may not have written: every buffered write, in order, before any newer one
      await disk?.direct()
      if (disk?.failed) o.log?.(disk.failed.message)
      gate.acked(Infinity)
      gate.claimed(true)
      takeoverMs = timers.now() - t0
      o.log?.(`won vm/${o.vm}: running alone`)
    } else {
      outcome = 'halted'
      gate.halt()
      o.log?.(`lost vm/${o.vm} to the backup: halted, no output released`)
      machine?.halt(`halted: the backup took vm/${o.vm}`)
    }
  })
  void ch.ended.then((e) => e.kind === 'bye' && (channelEnd = endText(e)))
  const uplink = new VmUplink()
  return {
    status() {
      const d = gate.snapshot().delay
      return { role: 'primary', outcome, generation: o.arbiter.generation, lagMs: null, cpuLimit: vm.limiter?.percent ?? null, logBytes: stats.bytes, outputDelay: { count: d.count, p50: d.p50, p99: d.p99 }, lag: null, checkpoint: stats.status(epochMs) }
    },
    machineOptions(base) {
      uplink.take(base)
      const p = base.net
      let net: SwitchPort | undefined
      if (p) {
        net = {
          onReceive: null,
          send: (frame) => gate.hold('frame', epochNow(), () => p.send(frame), frame.length),
          close: () => p.close(),
        }
        p.onReceive = (f) => net!.onReceive?.(f)
      }
      disk = base.disk && new EpochWriteBuffer(base.disk)
      consoleSink = base.onConsole
      return {
        ...base,
        disk: disk as ScsiPath | undefined,
        net,
        onConsole: base.onConsole && ((b: number) => void consoleBytes.push(b)),
        // the backstop: a backup that stops acknowledging stops the VM, not memory
        afterSlice: async () => {
          if (gate.overLimit) await gate.whenUnder()
        },
      }
    },
    attach(m) {
      machine = m
      capture = new EpochCapture(m.mem, { diff: o.diff !== false })
      loop = run(m)
    },
    async finish(summary) {
      stopping = true
      wake.abort()
      await loop
      if (!peerGone && outcome === 'paired' && machine) {
        // the last epoch: the VM's end state; its outputs leave on its acknowledgement
        await epoch(machine)
        for (const t0 = timers.now(); stats.acked < epochNow() && !peerGone && timers.now() - t0 < 5000; ) await timers.sleep(1)
        await disk?.acked(stats.acked)
        if (!peerGone) {
          await ch.bye('stop', summary.instructions)
          ch.close('done')
        }
      } else {
        await waitAtMost(timers, lost, 5000)
      }
      return { role: 'primary', outcome, channelEnd, logBytes: stats.bytes, takeoverMs, outputDelay: gate.snapshot().delay, checkpoint: stats.status(epochMs) }
    },
  }
}

/**
 * The backup of a checkpoint pair: runs no VM while paired; applies each complete epoch to its
 * memory image, keeps the epoch's device state and the disk writes not yet written through,
 * acknowledges the epoch and feeds back diff candidates. On losing the primary it claims the VM;
 * won: it writes again the writes of the epochs after the last written-through one, in order, and
 * goes live from its last complete epoch.
 */
export function ckptBackup(
  o: FtRoleOptions,
  vm: { memoryBytes: number; imageSha: Buffer; disk?: ScsiPath; limiter?: CpuLimiter; signal?: AbortSignal; liveDisk?: () => Promise<ScsiPath> },
  ch: FtChannel,
  hello: FtHelloParams,
  listener: FtListener,
  timers: Timers,
): FtRole {
  const stats = new EpochStats()
  let outcome: FtReport['outcome'] = 'paired'
  let channelEnd: string | undefined
  let takeoverMs: number | undefined
  let applier: EpochApplier | null = null
  let last: AppliedEpoch | null = null
  let bootState: VmState | null = null
  /** the writes of epochs the primary has not reported written through, oldest first */
  let unwritten: { epoch: number; writes: BufferedWrite[] }[] = []
  const early: FtMessage[] = []
  let broken = false
  let stopped = false
  const onMessage = (m: FtMessage) => {
    if (!applier) return void early.push(m)
    try {
      if (m.type === 'STATE') {
        stats.bytes += m.data.length
        applier.accept(m.data)
      } else if (m.type === 'STATE_END') {
        const e = applier.end(m.instret, m.hash)
        last = e
        stats.epochs++
        stats.diffs += e.diffs
        stats.running += e.pages
        unwritten = unwritten.filter((u) => u.epoch > e.writtenThrough)
        if (e.writes.length) unwritten.push({ epoch: e.epoch, writes: e.writes })
        if (applier.candidates.changed) {
          const fb = applier.candidates.take()
          stats.candidates = applier.candidates.size
          ch.send({ type: 'FEEDBACK', data: fb })
        }
        stats.acked = e.epoch
        ch.send({ type: 'ACK', received: e.epoch, executed: e.instret, readsDone: 0 })
      }
    } catch (e) {
      if (!(e instanceof FtProtocolError)) throw e
      // a backup that cannot follow must not go live from a state it did not get whole
      broken = true
      o.log?.(`the checkpoint stream is broken: ${e.message}`)
      ch.close(e.message)
    }
  }
  ch.on('message', onMessage)
  let opts: MachineOptions | null = null
  let settle!: (r: { machine: Machine } | { summary: RunSummary }) => void
  const standby = new Promise<{ machine: Machine } | { summary: RunSummary }>((r) => (settle = r))
  /** the machine at the last complete epoch (or the boot state) */
  const restored = (more: Partial<MachineOptions> = {}) => {
    const state = last?.state ?? bootState!
    return Machine.fromState({ ...state, memory: applier!.image }, { ...opts!, ...more }, { loadImage: false })
  }
  const endWithout = (why: string | undefined) => {
    const m = restored({ net: undefined, disk: undefined, onConsole: undefined })
    const code = m.finisher.exitCode
    settle({ summary: { end: code !== null && why === undefined ? 'exit' : 'stopped', exitCode: code, instructions: m.hart.instret, seconds: 0, cpuSeconds: 0, mips: 0, stateHash: m.stateHash(), consoleHash: m.uart.hash(), console: '', interrupts: 0, events: stats.epochs, message: why } })
  }
  const ended = ch.ended.then(async (e) => {
    await listener.close()
    channelEnd = endText(e)
    // wait for standby(): it brings the image the state applies to
    await ready
    if (stopped) return endWithout(`stopped by the host at the primary's epoch ${last?.epoch ?? 0}`)
    if (e.kind === 'bye' && e.bye.reason === 'stop') return endWithout(undefined)
    const t0 = timers.now()
    o.log?.(`the FT primary is lost (${endText(e)}): ${broken ? 'this backup is broken: it halts' : `claiming vm/${o.vm} from generation ${hello.lockGeneration}`}`)
    const won = !broken && (await claimVm(o, hello.lockGeneration, timers))
    if (!won) {
      outcome = 'halted'
      o.log?.(`the primary kept vm/${o.vm}: halted`)
      return endWithout(`halted: the primary kept vm/${o.vm}`)
    }
    await o.arbiter.fence?.()
    const disk = vm.liveDisk ? await vm.liveDisk() : vm.disk
    // acknowledged writes whose write-through the primary had not reported: again, in order
    let rewritten = 0
    for (const u of unwritten) {
      for (const w of u.writes) {
        const r = await disk!.execute(w.cdb, w.data, 0)
        if (r.status !== 0) o.log?.(`writing epoch ${u.epoch}'s write again failed (status ${r.status})`)
        rewritten++
      }
    }
    const m = restored({ disk })
    outcome = 'live'
    const net = opts!.net as AnnouncingPort | undefined
    const mac = opts!.mac
    if (net && mac) {
      net.send(rarpAnnouncement(mac))
      net.announce?.(mac)
    }
    takeoverMs = timers.now() - t0
    o.log?.(`won vm/${o.vm}: going live at instruction ${m.hart.instret} (epoch ${last?.epoch ?? 0}${rewritten ? `, ${rewritten} disk writes made again` : ''})`)
    settle({ machine: m })
  })
  let setReady!: () => void
  const ready = new Promise<void>((r) => (setReady = r))
  const onAbort = () => {
    stopped = true
    ch.close('the backup is stopped')
  }
  vm.signal?.addEventListener('abort', onAbort, { once: true })
  return {
    hello,
    machineOptions: (base) => base,
    async standby(base) {
      opts = base
      const boot = new Machine({ image: base.image, imageName: base.imageName, memory: base.memory })
      bootState = boot.saveState()
      applier = new EpochApplier(boot.mem.bytes)
      setReady()
      for (const m of early.splice(0)) onMessage(m)
      if (vm.signal?.aborted) onAbort()
      return standby
    },
    attach() {},
    status: () => ({ role: 'backup', outcome, generation: outcome === 'live' ? o.arbiter.generation : hello.lockGeneration, lagMs: null, cpuLimit: vm.limiter?.percent ?? null, logBytes: stats.bytes, outputDelay: null, lag: null, checkpoint: stats.status(null) }),
    async finish() {
      vm.signal?.removeEventListener('abort', onAbort)
      ch.close('done')
      await ended
      return { role: 'backup', outcome, channelEnd, logBytes: stats.bytes, takeoverMs, checkpoint: stats.status(null) }
    },
  }
}

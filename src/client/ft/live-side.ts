import { StorageError } from '../../disk-formats/errors.js'
import type { CpuLimiter } from '../vm/cpu-limit.js'
import { freeze, type FrozenVm } from '../vm/freeze.js'
import type { Machine } from '../vm/machine.js'
import type { SwitchPort } from '../vm/net.js'
import { waitAtMost, type Timers } from '../vm/timers.js'
import { FtChannel } from './channel.js'
import { FtLagControl, LagMeter } from './lag.js'
import { OutputGate } from './output-gate.js'
import type { FtPrimary, Pairing } from './primary.js'
import type { FtHelloParams, FtMessage } from './protocol.js'
import { claimVm, endText, nextMessage, VmUplink, type AnnouncingPort, type FtRoleOptions, type RestoreSummary } from './role.js'

export type { AnnouncingPort, RestoreSummary }
import { precopy, sendFrozen, type PrecopyResult, type StateLink } from './state-sync.js'
import { WriteAfterReadGuard } from './write-after-read.js'

export interface LiveSideOptions {
  role: FtRoleOptions
  timers: Timers
  outputs: FtPrimary
  limiter?: CpuLimiter
  memoryBytes: number
  imageSha: Buffer
  /** the VM's disk, if any (a restore of a VM with a disk is not offered yet) */
  hasDisk: boolean
}

interface Current {
  ch: FtChannel
  pairing: Pairing
  control?: FtLagControl
}

/**
 * The side of a pair that runs the VM live — a primary, or a backup that took over — and its
 * backup, if any (ft/SPEC.md "Redundancy restore"). `pairWith` puts a channel under the pair's
 * rules (ACKs release outputs; on a loss, one claim of vm/<name> from the current generation: won,
 * the VM runs on alone; lost, it halts). `protect` pairs a VM that runs alone with a new backup
 * from a live checkpoint.
 */
export class LiveSide {
  /** 'paired' while a backup follows; 'alone' after winning a claim (or a backup gone live); 'halted' after losing one */
  state: 'paired' | 'alone' | 'halted' | 'handed-over'
  cur: Current | null = null
  /** the pairing before the last loss (its figures stay readable) */
  lastPairing: Pairing | null = null
  machine: Machine | null = null
  readonly uplink = new VmUplink()
  channelEnd: string | undefined
  takeoverMs: number | undefined
  /** the last loss's claim, once settled */
  lost: Promise<void> = Promise.resolve()
  restores: RestoreSummary[] = []
  private restoring = false
  /** our BYE (stop) went out: the backup closing after it is the run's clean end, no loss */
  private ending = false

  constructor(private readonly o: LiveSideOptions) {
    this.state = 'alone'
  }

  /**
   * Puts `ch` (HELLO answered) under the pair's rules. The outputs are paired with it by the
   * caller (`outputs.pair(pairing)`): before the VM runs, or in a live checkpoint's pause.
   */
  pairWith(ch: FtChannel): Pairing {
    const { role: o, timers, limiter, outputs } = this.o
    let detached = false
    const pairing: Pairing = {
      link: {
        log: (records) => {
          if (!detached) ch.send({ type: 'LOG', records })
        },
        get bufferedBytes() {
          return detached ? 0 : ch.bufferedBytes
        },
        drained: () => (detached ? Promise.resolve() : ch.drained()),
      },
      gate: new OutputGate(timers),
      lag: new LagMeter(),
      war: o.reads === 'disk' && this.o.hasDisk ? new WriteAfterReadGuard() : undefined,
    }
    ch.on('message', (m) => {
      if (m.type !== 'ACK' || this.cur?.ch !== ch) return
      try {
        outputs.ack(m)
      } catch (e) {
        ch.close(`a bad ACK: ${(e as Error).message}`)
      }
    })
    const control = limiter && o.lagControl !== false ? new FtLagControl(pairing.lag, limiter, timers) : undefined
    this.cur = { ch, pairing, control }
    this.state = 'paired'
    this.lost = ch.lost.then(async ({ reason }) => {
      detached = true
      this.channelEnd = reason
      // the VM has ended and the backup acknowledged everything: it closes the channel after our
      // BYE, and there is nothing to claim (a claim here wrote the lock and fenced the disk at
      // every clean end). An output still held means the backup was lost first: claimed as ever.
      if (this.ending && pairing.gate.held === 0) {
        this.channelEnd = 'BYE (stop)'
        await control?.stop()
        return
      }
      const t0 = timers.now()
      const { gate, war } = pairing
      gate.claimed(false)
      war?.lost()
      await control?.stop()
      if (limiter && limiter.percent < 100) limiter.setPercent(100)
      const generation = o.arbiter.generation
      o.log?.(`the FT backup is lost (${reason}): claiming vm/${o.vm} from generation ${generation}`)
      const won = await claimVm(o, generation, timers)
      this.cur = null
      this.lastPairing = pairing
      if (won) {
        this.state = 'alone'
        this.uplink.claimed()
        await o.arbiter.fence?.()
        gate.acked(Infinity)
        gate.claimed(true)
        outputs.alone()
        this.takeoverMs = timers.now() - t0
        o.log?.(`won vm/${o.vm}: running alone`)
      } else {
        this.state = 'halted'
        gate.halt()
        o.log?.(`lost vm/${o.vm} to the backup: halted, no output released`)
        this.machine?.halt(`halted: the backup took vm/${o.vm}`)
      }
    })
    void ch.ended.then((e) => e.kind === 'bye' && (this.channelEnd = endText(e)))
    return pairing
  }

  /** HELLO to a backup at `host:port`; its answer (refusals are typed errors, the channel closed). */
  async hello(host: string, port: number, start: FtHelloParams['start'], instret: number): Promise<FtChannel> {
    const { role: o, timers } = this.o
    const ch = await FtChannel.connect({ host, port, timers, lossMs: o.lossMs }).catch((e: Error) => {
      throw new StorageError('IoError', `cannot reach the FT backup at ${host}:${port}: ${e.message}`)
    })
    const hello: FtHelloParams = { version: 1, vm: o.vm, mode: 'replay', lockGeneration: o.arbiter.generation, memoryBytes: this.o.memoryBytes, imageSha256: this.o.imageSha, start, backupReads: o.reads, instret }
    ch.send({ type: 'HELLO', ...hello })
    let answer: FtMessage
    try {
      answer = await nextMessage(ch, 'HELLO_OK', 'the backup accepted')
    } catch (e) {
      ch.close('no answer')
      throw e
    }
    if (answer.type !== 'HELLO_OK') {
      ch.close('refused')
      throw new StorageError('InvalidArgument', `the FT backup refused: ${answer.type === 'HELLO_REFUSED' ? `${answer.reason}: ${answer.text}` : answer.type === 'ERROR' ? `${answer.code}: ${answer.text}` : answer.type}`)
    }
    return ch
  }

  /**
   * Redundancy restore (ft/SPEC.md): a VM running alone gets a new backup at `host:port` (a
   * `vm run --ft-backup` waiting for state). HELLO (start `state`); a live checkpoint whose pause
   * switches the outputs to held-until-acked and starts the log; the state and the memory as they
   * were at the pause, sent while the VM runs on (copy-on-write); STATE_END. The backup acks from
   * then on. A loss before the end is a loss as any other (the claim keeps the VM here).
   */
  async protect(host: string, port: number): Promise<RestoreSummary> {
    const { role: o, timers, outputs } = this.o
    const m = this.machine
    if (!m || this.state === 'halted' || this.state === 'handed-over') throw new StorageError('InvalidArgument', `no running VM to protect here (${this.state === 'alone' ? 'not started' : this.state})`)
    if (this.state === 'paired' || this.restoring) throw new StorageError('Exists', `vm/${o.vm} is already protected by a backup${this.restoring ? ' (a restore is under way)' : ''}`)
    if (this.o.hasDisk) throw new StorageError('Unsupported', 'a redundancy restore of a VM with a disk is not offered yet (its in-flight requests and storage fence keys are not carried over)')
    this.restoring = true
    const t0 = timers.now()
    try {
      const ch = await this.hello(host, port, 'state', m.hart.instret)
      const pairing = this.pairWith(ch)
      const firstAck = new Promise<number>((resolve) => {
        const on = (msg: FtMessage) => {
          if (msg.type === 'ACK') {
            ch.off('message', on)
            resolve(timers.now())
          }
        }
        ch.on('message', on)
      })
      const link: StateLink = {
        state: (data) => {
          if (ch.closed) throw new StorageError('IoError', 'the new backup was lost while its state was sent')
          return ch.send({ type: 'STATE', data })
        },
        drained: () => ch.drained(),
        end: (instret, hash) => ch.send({ type: 'STATE_END', instret, hash }),
      }
      let f: FrozenVm
      let pre: PrecopyResult
      let dirty: number[] = []
      let pausedAt = 0
      try {
        // the VM runs on meanwhile, its outputs leaving at once and nothing logged
        pre = await precopy(m.mem, link)
        f = await freeze(m, {
          inPause: () => {
            pausedAt = timers.now()
            dirty = m.mem.readAndClearDirty()
            outputs.pair(pairing)
          },
          now: () => timers.now(),
        })
      } catch (e) {
        // not paired: the backup has no state and makes no claim
        ch.close('the restore failed')
        throw e
      }
      let sent
      try {
        sent = await sendFrozen(f, link, dirty)
      } finally {
        f.release()
      }
      const syncMs = timers.now() - t0
      const acked = await Promise.race([firstAck, ch.ended.then((e) => Promise.reject(new StorageError('IoError', `the new backup was lost during the restore: ${endText(e)}`)))])
      const summary: RestoreSummary = { backup: `${host}:${port}`, instructions: f.instret, pauseMs: f.stunMs, precopyBytes: pre.bytes, precopyPages: pre.pages, precopyRounds: pre.rounds, stateBytes: sent.bytes, pages: sent.pages, cowPages: f.copied, syncMs, protectedMs: acked - pausedAt }
      this.restores.push(summary)
      o.log?.(`vm/${o.vm} protected again by the backup at ${host}:${port} from instruction ${f.instret} (pre-copy ${pre.pages} pages in ${pre.rounds} rounds; pause ${f.stunMs.toFixed(2)} ms; then ${sent.pages} dirty pages)`)
      return summary
    } finally {
      this.restoring = false
    }
  }

  /** The VM ended on its own: a paired side ends its backup's log cleanly (BYE stop). */
  async finish(instructions: number): Promise<void> {
    const cur = this.cur
    await cur?.control?.stop()
    if (cur && this.state === 'paired' && !cur.ch.closed) {
      await this.o.outputs.sink.close()
      this.ending = true
      cur.ch.send({ type: 'BYE', reason: 'stop', instret: instructions })
      await cur.ch.drained()
      // the backup's last ACK releases the last outputs
      await waitAtMost(this.o.timers, new Promise<void>((r) => cur.ch.once('end', () => r())), 1000)
      cur.ch.close('done')
    } else {
      await waitAtMost(this.o.timers, this.lost, 5000)
    }
  }
}

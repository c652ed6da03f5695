import { StorageError } from '../../disk-formats/errors.js'
import type { Timers } from '../vm/timers.js'

/** Faults on one port's outgoing link, for tests and the FT harness. */
export interface LinkFaults {
  /** every frame leaves this many ms after the switch took it (order is kept) */
  delayMs: number
  /** this share of frames (0 to 1) is dropped */
  loss: number
  /** frames are held, in order, until the stall is lifted */
  stall: boolean
}

export const NO_FAULTS: LinkFaults = Object.freeze({ delayMs: 0, loss: 0, stall: false })

/** Frames held per link (delayed or stalled); more are dropped: a stalled peer cannot exhaust memory. */
export const MAX_HELD = 4096

/** `delay=5,loss=0.01,stall` (any subset, in any order); `none` for no faults. */
export function parseFaults(spec: string): LinkFaults {
  const f = { ...NO_FAULTS }
  const bad = (why: string) => new StorageError('InvalidArgument', `invalid --fault '${spec}': ${why} (e.g. delay=5,loss=0.01,stall)`)
  if (spec.trim() === 'none') return f
  for (const part of spec.split(',')) {
    const [k, v, extra] = part.trim().split('=')
    const n = Number(v)
    if (extra !== undefined) throw bad(`'${part}'`)
    if (k === 'delay' && v !== undefined && v !== '' && n >= 0 && n <= 60_000) f.delayMs = n
    else if (k === 'loss' && v !== undefined && v !== '' && n >= 0 && n <= 1) f.loss = n
    else if (k === 'stall' && v === undefined) f.stall = true
    else throw bad(`'${part}' (delay=MS from 0 to 60000, loss=RATIO from 0 to 1, stall)`)
  }
  return f
}

/**
 * One port's outgoing link: `send` hands a frame to `deliver` at once when there are no faults,
 * else drops it (loss), or holds it until its delay has passed and no stall holds it. Frames
 * leave in the order they were sent.
 */
export class FaultyLink {
  lost = 0
  /** frames dropped because MAX_HELD were held */
  overflow = 0
  private faults: LinkFaults
  private held: { frame: Buffer; due: number }[] = []
  private pumping = false
  private wake: (() => void) | null = null
  private readonly stop = new AbortController()

  constructor(
    private readonly deliver: (frame: Buffer) => void,
    private readonly timers: Timers,
    private readonly random: () => number,
    faults: LinkFaults = NO_FAULTS,
  ) {
    this.faults = { ...faults }
  }

  get current(): LinkFaults {
    return { ...this.faults }
  }

  set(f: Partial<LinkFaults>): void {
    this.faults = { ...this.faults, ...f }
    this.wake?.()
  }

  send(frame: Buffer): void {
    const f = this.faults
    if (f.loss > 0 && this.random() < f.loss) {
      this.lost++
      return
    }
    if (!f.stall && f.delayMs <= 0 && this.held.length === 0) return this.deliver(frame)
    if (this.held.length >= MAX_HELD) {
      this.overflow++
      return
    }
    this.held.push({ frame, due: this.timers.now() + f.delayMs })
    if (!this.pumping) void this.pump()
  }

  private async pump(): Promise<void> {
    this.pumping = true
    while (this.held.length && !this.stop.signal.aborted) {
      const wait = this.held[0].due - this.timers.now()
      if (this.faults.stall) await new Promise<void>((r) => (this.wake = r))
      else if (wait > 0) await this.timers.sleep(wait, this.stop.signal)
      else this.deliver(this.held.shift()!.frame)
      this.wake = null
    }
    this.pumping = false
  }

  /** Drops what is held; nothing more leaves. */
  close(): void {
    this.held = []
    this.stop.abort()
    this.wake?.()
  }
}

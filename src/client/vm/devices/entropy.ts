import { EVENT } from '../events.js'
import type { StateReader, StateWriter } from '../state-codec.js'
import { mtimeWord } from './clint.js'
import type { DeviceContext, VmDevice } from './device.js'

/** Entropy and the wall clock: every read is an input (logged, or taken from the log). No state. */
export class EntropyClock implements VmDevice {
  readonly tag = 'ENTR'
  readonly size = 0x10

  constructor(
    readonly base: number,
    private readonly ctx: DeviceContext,
    private readonly entropy: () => number,
    /** wall-clock nanoseconds since the epoch */
    private readonly wall: () => bigint,
  ) {}

  read(r: number, size: number): number | undefined {
    if (size !== 4) return undefined
    if (r === 0) return this.ctx.input(EVENT.ENTROPY, 0, this.entropy)
    if (r === 4 || r === 8) return this.ctx.input(EVENT.RTC, r === 8 ? 1 : 0, () => mtimeWord(this.wall(), r === 8))
    return 0
  }

  write(_r: number, size: number): boolean {
    return size === 4
  }

  save(_w: StateWriter): void {}
  restore(_r: StateReader): void {}
}

export function randomWord(): number {
  const b = new Uint32Array(1)
  crypto.getRandomValues(b)
  return b[0]
}

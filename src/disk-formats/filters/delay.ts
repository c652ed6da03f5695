import type { BlockDevice } from '../block-device.js'
import { faultTest, type FaultOptions, type Op } from './fault.js'
import { Faulty } from './faulty.js'

export interface DelayOptions extends FaultOptions {
  /** how long a hit request waits before it goes to `next` (a function: drawn per request) */
  ms: number | ((op: Op, offset: number, length: number) => number)
  /** injected so tests run on a fake clock (default: the global setTimeout) */
  timers?: { setTimeout(fn: () => void, ms: number): unknown }
}

/** Slow-storage fault injection (DESIGN §11): hit requests reach `next` `ms` later. */
export function delay(next: BlockDevice, opts: DelayOptions): BlockDevice {
  const timers = opts.timers ?? { setTimeout: (fn: () => void, ms: number) => setTimeout(fn, ms) }
  const ms = opts.ms
  return new Faulty(next, faultTest(opts), (op, offset, length, go) =>
    new Promise<void>((r) => timers.setTimeout(r, typeof ms === 'number' ? ms : ms(op, offset, length))).then(go),
  )
}

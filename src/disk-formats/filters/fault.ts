/** The requests a fault applies to (the `delay` and `error` filters). */
export type Op = 'read' | 'write' | 'writeZeroes' | 'discard' | 'flush' | 'blockStatus' | 'compareAndWrite'

export interface FaultOptions {
  /** the operations hit (default: all) */
  ops?: readonly Op[]
  /** only requests overlapping [offset, offset+length) are hit (default: all); flush has no range and is always in it */
  range?: { offset: number; length: number }
  /** chance that a matching request is hit, 0…1 (default 1) */
  probability?: number
  /** uniform in [0, 1); injected so that a test is reproducible (default Math.random) */
  random?: () => number
}

/** Whether one request is hit: op, then range, then a draw (drawn only for a match). */
export type FaultTest = (op: Op, offset: number, length: number) => boolean

export function faultTest(opts: FaultOptions): FaultTest {
  const ops = opts.ops ? new Set(opts.ops) : null
  const range = opts.range
  const p = opts.probability ?? 1
  const random = opts.random ?? Math.random
  return (op, offset, length) => {
    if (ops && !ops.has(op)) return false
    if (range && op !== 'flush' && (offset + Math.max(length, 1) <= range.offset || offset >= range.offset + range.length)) return false
    return p >= 1 || random() < p
  }
}

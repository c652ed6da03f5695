import type { BlockDevice } from '../disk-formats/block-device.js'
import { StorageError } from '../disk-formats/errors.js'
import { Faulty } from '../disk-formats/filters/faulty.js'
import type { Op } from '../disk-formats/filters/fault.js'

/** One disk's fault: every request of `op` (reads; writes, write zeroes, discards and flushes; or any) is delayed, failed or held. */
export interface DiskFault {
  disk: string
  mode: 'delay' | 'error' | 'stall'
  /** delay: ms per request */
  ms: number
  op: 'read' | 'write' | 'any'
}

const MODES = ['delay', 'error', 'stall']
const OPS = ['read', 'write', 'any']
const WRITES: ReadonlySet<Op> = new Set(['write', 'writeZeroes', 'discard', 'flush', 'compareAndWrite'])

/** The `faults` of `PUT /api/v1/faults`, checked: InvalidArgument naming the field. */
export function parseFaults(body: Record<string, unknown>): DiskFault[] {
  const bad = (m: string) => new StorageError('InvalidArgument', m)
  if (!Array.isArray(body.faults)) throw bad('"faults" must be an array of {"disk","mode":"delay"|"error"|"stall","ms","op":"read"|"write"|"any"} ([] lifts every fault)')
  const seen = new Set<string>()
  return body.faults.map((f: unknown, i: number) => {
    const p = `"faults[${i}]`
    if (typeof f !== 'object' || f === null || Array.isArray(f)) throw bad(`${p}" must be an object`)
    const o = f as Record<string, unknown>
    for (const k of Object.keys(o)) if (!['disk', 'mode', 'ms', 'op'].includes(k)) throw bad(`${p}.${k}" is not a known field (disk, mode, ms, op)`)
    if (typeof o.disk !== 'string' || o.disk === '') throw bad(`${p}.disk" must be a disk's name`)
    if (seen.has(o.disk)) throw bad(`${p}.disk" names '${o.disk}' twice`)
    seen.add(o.disk)
    if (!MODES.includes(o.mode as string)) throw bad(`${p}.mode" must be "delay", "error" or "stall"`)
    const ms = o.ms ?? 0
    if (typeof ms !== 'number' || !Number.isInteger(ms) || ms < 0 || ms > 60_000) throw bad(`${p}.ms" must be an integer from 0 to 60000`)
    if (o.mode === 'delay' && ms === 0) throw bad(`${p}.ms" must be above 0 for a delay`)
    const op = o.op ?? 'any'
    if (!OPS.includes(op as string)) throw bad(`${p}.op" must be "read", "write" or "any"`)
    return { disk: o.disk, mode: o.mode as DiskFault['mode'], ms, op: op as DiskFault['op'] }
  })
}

/**
 * Disk faults switched at run time (`tandem serve --fault-injection`, `PUT /api/v1/faults`): each
 * export is wrapped in a `Faulty` filter that asks the current set per request. A stalled request
 * waits until its disk's stall is lifted, then goes on; an error fails the request with IoError
 * (the client sees a medium error or EIO); a delay holds it `ms` first.
 */
export class FaultInjection {
  private faults = new Map<string, DiskFault>()
  private wake: (() => void)[] = []

  list(): DiskFault[] {
    return [...this.faults.values()]
  }

  /** Replaces every fault (an empty list lifts them all); stalled requests re-check. */
  set(faults: DiskFault[]): void {
    this.faults = new Map(faults.map((f) => [f.disk, f]))
    for (const w of this.wake.splice(0)) w()
  }

  private hits(disk: string, op: Op): DiskFault | undefined {
    const f = this.faults.get(disk)
    if (!f || op === 'blockStatus') return undefined
    if (f.op === 'any' || (f.op === 'read') === (op === 'read') || (f.op === 'write' && WRITES.has(op))) return f
    return undefined
  }

  wrap(disk: string, dev: BlockDevice): BlockDevice {
    return new Faulty(
      dev,
      (op) => this.hits(disk, op) !== undefined,
      async <T>(op: Op, offset: number, length: number, go: () => Promise<T>): Promise<T> => {
        for (;;) {
          const f = this.hits(disk, op)
          if (!f) return go()
          if (f.mode === 'error') throw new StorageError('IoError', `injected error on ${disk}: ${op}${op === 'flush' ? '' : ` at ${offset}+${length}`}`)
          if (f.mode === 'delay') {
            await new Promise((r) => setTimeout(r, f.ms))
            return go()
          }
          await new Promise<void>((r) => this.wake.push(r))
        }
      },
    )
  }
}

import { PAGE_SIZE } from '../../vm/memory.js'
import type { Machine } from '../../vm/machine.js'
import { decodeState, encodeState } from '../../vm/state.js'
import { StateError } from '../../vm/state-codec.js'

/**
 * How a quasi-lockstep primary brings its secondary to its own state (colo/SPEC.md "Resync"): the
 * seam a checkpoint transfer plugs into. The primary captures while paused; the secondary applies
 * while paused. `begin` is called on each side before its VM first runs (both boot the same image:
 * that is the first synced state) and the implementation re-arms itself after each capture/apply.
 */
export interface Resync {
  begin(m: Machine): void
  /** primary, paused: the parts (each ≤ PART_BYTES) that make the secondary equal to `m` now */
  capture(m: Machine): Promise<Buffer[]>
  /** secondary, paused: takes the parts of one capture */
  apply(m: Machine, parts: Buffer[]): Promise<void>
}

/** a resync's parts are at most this (well within the channel's 16 MiB frame bound and its loss timeout) */
export const PART_BYTES = 1 << 20

/**
 * The first Resync: the pages dirty on either side since the last sync, plus the VM state (hart,
 * devices, host queues; `Machine.saveState` through the state codec).
 *
 * - Primary: the pages its memory's dirty bitmap marks (`readAndClearDirty`), with their contents.
 * - Secondary: a first-write hook keeps each page's content as of the last sync before the page's
 *   first write; at apply, the pages it wrote that the primary did not send go back to that content
 *   (equal to the primary's, which did not write them), then the primary's pages and state are taken.
 *
 * Wire: u32 state length, the encoded state, u32 page count, then (u32 page, 4096 bytes) each —
 * cut into parts of at most PART_BYTES.
 */
export class DirtyPageResync implements Resync {
  /** secondary: content as of the last sync of each page written since */
  private readonly before = new Map<number, Uint8Array>()
  /** figures of the last capture or apply */
  last = { pages: 0, bytes: 0, reverted: 0 }

  begin(m: Machine): void {
    this.arm(m)
  }

  private arm(m: Machine): void {
    const mem = m.mem
    this.before.clear()
    mem.armFirstWrite((page) => {
      const off = page * PAGE_SIZE
      this.before.set(page, mem.bytes.slice(off, off + PAGE_SIZE))
    })
  }

  async capture(m: Machine): Promise<Buffer[]> {
    const state = encodeState(m.saveState())
    const pages = m.mem.readAndClearDirty()
    const out = Buffer.allocUnsafe(8 + state.length + pages.length * (4 + PAGE_SIZE))
    let at = out.writeUInt32LE(state.length, 0)
    at += state.copy(out, at)
    at = out.writeUInt32LE(pages.length, at)
    for (const p of pages) {
      at = out.writeUInt32LE(p, at)
      out.set(m.mem.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), at)
      at += PAGE_SIZE
    }
    this.last = { pages: pages.length, bytes: out.length, reverted: 0 }
    const parts: Buffer[] = []
    for (let o = 0; o < out.length; o += PART_BYTES) parts.push(out.subarray(o, Math.min(out.length, o + PART_BYTES)))
    return parts
  }

  async apply(m: Machine, parts: Buffer[]): Promise<void> {
    const buf = parts.length === 1 ? parts[0] : Buffer.concat(parts)
    const what = 'the resync from the primary'
    if (buf.length < 8) throw new StateError(`${what} is ${buf.length} bytes`)
    const stateLen = buf.readUInt32LE(0)
    if (4 + stateLen + 4 > buf.length) throw new StateError(`${what} is cut short in its state`)
    const state = decodeState(buf.subarray(4, 4 + stateLen), what)
    let at = 4 + stateLen
    const n = buf.readUInt32LE(at)
    at += 4
    if (buf.length !== at + n * (4 + PAGE_SIZE)) throw new StateError(`${what} has ${buf.length - at} bytes for ${n} pages`)
    const mem = m.mem
    const sent = new Set<number>()
    for (let i = 0; i < n; i++, at += 4 + PAGE_SIZE) {
      const p = buf.readUInt32LE(at)
      if (p >= mem.pages) throw new StateError(`${what} has page ${p}, the VM ${mem.pages}`)
      sent.add(p)
    }
    // checked whole: now taken
    let reverted = 0
    for (const [p, content] of this.before) {
      if (sent.has(p)) continue
      mem.bytes.set(content, p * PAGE_SIZE)
      reverted++
    }
    at = 8 + stateLen
    for (let i = 0; i < n; i++, at += 4 + PAGE_SIZE) mem.bytes.set(buf.subarray(at + 4, at + 4 + PAGE_SIZE), buf.readUInt32LE(at) * PAGE_SIZE)
    m.loadState(state)
    this.last = { pages: n, bytes: buf.length, reverted }
    this.arm(m)
  }
}

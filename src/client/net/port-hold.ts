import { ANNOUNCE_ETHERTYPE } from './udp-uplink.js'
import { MONITOR_DEFAULTS } from './traffic-monitor.js'

/**
 * Port hold, between a `tandem switch` and one of its peers (a host's GuardedPort): a peer asks the
 * switch to hold (drop) the frames switched to it, or to pass them again; while it holds them, the
 * switch tells the peer what it dropped, at most every REPORT_MS, so the peer's meter still sees
 * the flood it no longer receives. Each message is a frame from and to 00:00:00:00:00:00 (no MAC a
 * NIC has) with the announce EtherType and a 4-byte verb:
 *
 * | offset | size | field                                    |
 * |--------|------|------------------------------------------|
 * | 0      | 12   | zero (destination and source MAC)        |
 * | 12     | 2    | 0x88b6                                   |
 * | 14     | 4    | HOLD, PASS (peer to switch); HELD (back) |
 * | 18     | 4    | HELD: frames dropped since the last      |
 * | 22     | 8    | HELD: their bytes (f64)                  |
 * | 30     | 4    | HELD: how many were small                |
 */
export const REPORT_MS = 10
/** a HELD report's small frames are those the monitor calls small */
export const SMALL_HELD = MONITOR_DEFAULTS.smallFrame

export type HoldVerb = 'HOLD' | 'PASS'

export interface HeldCounts {
  frames: number
  bytes: number
  small: number
}

const isControl = (f: Buffer) => f.length >= 18 && f.readUInt16BE(12) === ANNOUNCE_ETHERTYPE && f.subarray(0, 12).every((b) => b === 0)

export function holdFrame(verb: HoldVerb): Buffer {
  const f = Buffer.alloc(18)
  f.writeUInt16BE(ANNOUNCE_ETHERTYPE, 12)
  f.write(verb, 14, 'latin1')
  return f
}

/** HOLD or PASS, when the frame is one; else null. */
export function parseHold(f: Buffer): HoldVerb | null {
  if (!isControl(f) || f.length !== 18) return null
  const v = f.toString('latin1', 14, 18)
  return v === 'HOLD' || v === 'PASS' ? v : null
}

/** Is this a port-hold frame of any verb (a peer's own NIC must not send one)? */
export const isPortControl = isControl

export function heldFrame(c: HeldCounts): Buffer {
  const f = Buffer.alloc(34)
  f.writeUInt16BE(ANNOUNCE_ETHERTYPE, 12)
  f.write('HELD', 14, 'latin1')
  f.writeUInt32BE(Math.min(c.frames, 0xffffffff), 18)
  f.writeDoubleBE(c.bytes, 22)
  f.writeUInt32BE(Math.min(c.small, 0xffffffff), 30)
  return f
}

export function parseHeld(f: Buffer): HeldCounts | null {
  if (!isControl(f) || f.length !== 34 || f.toString('latin1', 14, 18) !== 'HELD') return null
  return { frames: f.readUInt32BE(18), bytes: f.readDoubleBE(22), small: f.readUInt32BE(30) }
}

import type { Socket } from 'node:dgram'
import { endianness } from 'node:os'
import { loadNative } from '../../disk-formats/native.js'

/**
 * Dropping a held peer's frames in the kernel (issue 19): the switch's socket gets a classic BPF
 * filter (SO_ATTACH_FILTER) that drops the datagrams whose frame is addressed to a MAC learned on
 * a held port, but for one in `SAMPLE_EVERY`, drawn at random by the kernel (the BPF ancillary
 * RANDOM load). A flood at a suspended VM (20,000 small frames a second in the DoS bench) then
 * costs the switch's Node a sixteenth of the datagrams it did; the ones that arrive are counted
 * `SAMPLE_EVERY` times each, so the HELD reports, and the host's meter that decides when the flood
 * is over, still see about the whole flood.
 *
 * The filter runs on the datagram from its UDP header: the frame starts at byte 8, its destination
 * MAC at 8..13, its source at 14..19. Datagrams shorter than a frame's header (keepalives) pass; so
 * does every frame *from* a filtered MAC, whatever its destination (a VM that moved, or came back
 * elsewhere, announces itself to itself: the switch must see it to learn the MAC's new port and
 * take it out of the filter). Only unicast MACs other than 00:00:00:00:00:00 are ever filtered: a
 * peer could otherwise hold a port it taught ff:ff:ff:ff:ff:ff (every broadcast) or the zero MAC
 * (every port-hold message). At most MAX_MACS MACs go into the program (jump offsets are 8 bits);
 * frames for the rest are dropped in Node, as without the filter.
 *
 * An approximation, bounded: datagrams already queued on the socket when the filter is attached
 * count SAMPLE_EVERY too (a few hundred at most, the socket's buffer), so the first report after a
 * HOLD can stand for more frames than came. The flood is detected by then; the meter sees it a
 * window longer at most.
 */
export const SAMPLE_EVERY = 16
export const MAX_MACS = 31

const UDP_HEADER = 8
const ETH_HEADER = 14
// classic BPF opcodes (linux/bpf_common.h, linux/filter.h)
const LD_W_ABS = 0x20
const LD_H_ABS = 0x28
const LD_W_LEN = 0x80
const JEQ_K = 0x15
const JGE_K = 0x35
const AND_K = 0x54
const RET_K = 0x06
/** SKF_AD_OFF + SKF_AD_RANDOM: a load of 32 random bits */
const AD_RANDOM = (-0x1000 + 56) >>> 0
const ACCEPT = 0xffffffff

type Insn = [code: number, jt: number, jf: number, k: number]

/** The program: `macs` (6 bytes each) dropped but for one datagram in `sampleEvery` (a power of two). */
export function dropProgram(macs: Buffer[], sampleEvery = SAMPLE_EVERY): Buffer {
  if (macs.length === 0) return Buffer.alloc(0)
  if (macs.length > MAX_MACS) throw new RangeError(`at most ${MAX_MACS} MACs in a drop filter`)
  if (!(sampleEvery >= 1 && (sampleEvery & (sampleEvery - 1)) === 0)) throw new RangeError('sampleEvery: a power of two')
  const n = macs.length
  // [0, 2): the length check; [2, 2+4n): from a filtered MAC: accept; [2+4n, 2+8n): to one: sample
  const accept = 2 + 8 * n
  const match = accept + 1
  const p: Insn[] = [
    [LD_W_LEN, 0, 0, 0],
    [JGE_K, 0, accept - 2, UDP_HEADER + ETH_HEADER],
  ]
  // four instructions: the MAC at byte `at` of the datagram equal to `mac`? then jump to `to`, else on
  const check = (at: number, mac: Buffer, to: number): Insn[] => {
    const next = p.length + 4
    return [
      [LD_W_ABS, 0, 0, at],
      [JEQ_K, 0, 2, mac.readUInt32BE(0)],
      [LD_H_ABS, 0, 0, at + 4],
      [JEQ_K, to - next, 0, mac.readUInt16BE(4)],
    ]
  }
  for (const mac of macs) p.push(...check(UDP_HEADER + 6, mac, accept))
  for (const mac of macs) p.push(...check(UDP_HEADER, mac, match))
  p.push([RET_K, 0, 0, ACCEPT], [LD_W_ABS, 0, 0, AD_RANDOM], [AND_K, 0, 0, sampleEvery - 1], [JEQ_K, 0, 1, 0], [RET_K, 0, 0, ACCEPT], [RET_K, 0, 0, 0])
  const out = Buffer.alloc(8 * p.length)
  const le = endianness() === 'LE'
  p.forEach(([code, jt, jf, k], i) => {
    out[le ? 'writeUInt16LE' : 'writeUInt16BE'](code, 8 * i)
    out[8 * i + 2] = jt
    out[8 * i + 3] = jf
    out[le ? 'writeUInt32LE' : 'writeUInt32BE'](k, 8 * i + 4)
  })
  return out
}

/** A MAC the filter may hold: unicast and not all zero (see above). */
const filterable = (mac: Buffer) => mac.length === 6 && (mac[0] & 1) === 0 && mac.some((b) => b !== 0)

/** The descriptor of a bound dgram socket (Node keeps it on the socket's handle), or null. */
function socketFd(sock: Socket): number | null {
  const state = Object.getOwnPropertySymbols(sock).find((s) => s.description === 'state symbol')
  const fd = state ? (sock as unknown as Record<symbol, { handle?: { fd?: unknown } }>)[state]?.handle?.fd : undefined
  return typeof fd === 'number' && fd >= 0 ? fd : null
}

/**
 * The drop filter of one socket. `set(macs)` replaces it (atomically, in the kernel); `weight(frame)`
 * is how many datagrams a frame that reached Node stands for (SAMPLE_EVERY when its destination is
 * filtered, else 1). Where the filter cannot be attached (no addon, not Linux, an error), `set`
 * says so once through `onUnavailable` and every frame counts 1: the drop happens in Node.
 */
export class KernelDrop {
  private filtered = new Set<string>()
  private readonly fd: number | null
  private available: boolean
  onUnavailable: (why: string) => void = () => {}

  /** `enabled` false: never attaches (every frame counts 1). */
  constructor(sock: Socket, enabled = true) {
    this.fd = socketFd(sock)
    this.available = enabled && this.fd !== null && process.platform === 'linux'
  }

  set(macs: Buffer[]): void {
    const keep = macs.filter(filterable).slice(0, MAX_MACS)
    const keys = new Set(keep.map((m) => m.toString('hex')))
    if (!this.available) return
    if (keys.size === this.filtered.size && [...keys].every((k) => this.filtered.has(k))) return
    let err: number
    try {
      err = loadNative().setSocketFilter(this.fd!, dropProgram(keep))
    } catch (e) {
      return this.unavailable((e as Error).message)
    }
    if (err !== 0) return this.unavailable(`setsockopt SO_ATTACH_FILTER: errno ${err}`)
    this.filtered = keys
  }

  /** Whether the MAC at `at` of `frame` is in the filter now. */
  covers(frame: Buffer, at = 0): boolean {
    return this.filtered.size > 0 && this.filtered.has(frame.toString('hex', at, at + 6))
  }

  weight(frame: Buffer): number {
    return this.covers(frame) ? SAMPLE_EVERY : 1
  }

  /** Gives up on the kernel's drop: the filter attached before, if any, is taken off first. */
  private unavailable(why: string): void {
    this.available = false
    if (this.filtered.size > 0) {
      try {
        loadNative().setSocketFilter(this.fd!, Buffer.alloc(0))
      } catch {
        // the addon answered before; nothing more to do if it does not now
      }
    }
    this.filtered = new Set()
    this.onUnavailable(why)
  }
}

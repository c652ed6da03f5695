import { UdpUplink } from '../net/udp-uplink.js'
import type { UdpAddress } from '../net/address.js'
import { MIN_FRAME } from '../vm/net.js'
import { realTimers, type Timers } from '../vm/timers.js'
import { KV_ETHERTYPE } from './client.js'

export interface FloodOptions {
  switch: UdpAddress
  /** the VM's MAC */
  to: Buffer
  /** this sender's MAC (announced: the VM's replies come back here, not to every port) */
  from: Buffer
  /** frames a second */
  pps: number
  /** bytes a frame, MIN_FRAME to 1514 */
  size: number
  seconds: number
  /** default the kvstore guest's: it parses each frame and answers ERR */
  ethertype?: number
  timers?: Timers
  /** epoch ms to the µs (the DoS guard's events compare with it) */
  wall?: () => number
}

export interface FloodReport {
  /** epoch ms of the first frame sent */
  startedAt: number
  endedAt: number
  frames: number
  /** frames that came back (the VM's replies) */
  replies: number
  /** frames sent a second, as achieved */
  pps: number
}

/** Frames sent at most at once, so a late timer does not burst a whole second's worth. */
const MAX_BATCH = 500

/**
 * `tandem kv flood`: frames of `size` bytes at `pps` for `seconds` to a VM's MAC, from one MAC of
 * its own — a small-frame flood (the DoS guard's test), or with large frames a bulk transfer
 * (which the guard must not flag). Sends each ms what is due since the start, at most MAX_BATCH
 * at once; `onStart` is called as the first frame goes out.
 */
export async function flood(o: FloodOptions, onStart?: (at: number) => void): Promise<FloodReport> {
  const timers = o.timers ?? realTimers
  const wall = o.wall ?? (() => performance.timeOrigin + performance.now())
  const up = await UdpUplink.join(o.switch, { mac: o.from })
  let replies = 0
  up.onReceive = () => replies++
  const ethertype = o.ethertype ?? KV_ETHERTYPE
  const frame = Buffer.alloc(Math.max(MIN_FRAME, o.size))
  o.to.copy(frame, 0)
  o.from.copy(frame, 6)
  frame.writeUInt16BE(ethertype, 12)
  frame.write('FLOOD', 14)
  // the switch learns this MAC from the announcement before the first frame
  await timers.sleep(20)
  const t0 = timers.now()
  const startedAt = wall()
  onStart?.(startedAt)
  let sent = 0
  const total = Math.round(o.pps * o.seconds)
  while (sent < total) {
    const due = Math.min(total, Math.floor(((timers.now() - t0) * o.pps) / 1000) + 1)
    for (let n = 0; sent < due && n < MAX_BATCH; n++, sent++) up.send(frame)
    await timers.sleep(1)
  }
  const endedAt = wall()
  // replies still in flight
  await timers.sleep(50)
  up.close()
  return { startedAt, endedAt, frames: sent, replies, pps: sent / Math.max(0.001, (endedAt - startedAt) / 1000) }
}

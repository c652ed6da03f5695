import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'
import { StorageError } from '../../disk-formats/errors.js'
import { MIN_FRAME, VirtualSwitch, type SwitchPort } from '../vm/net.js'
import { MAX_FRAME } from '../vm/event-format.js'
import { realTimers, type Timers } from '../vm/timers.js'
import { FaultyLink, NO_FAULTS, type LinkFaults } from './link-faults.js'
import { seededRandom } from './random.js'
import { formatAddress } from './address.js'
import { heldFrame, parseHold, REPORT_MS, SMALL_HELD, type HeldCounts } from './port-hold.js'
import { KernelDrop } from './kernel-drop.js'

/** What the switch logs through (a pino logger is one). */
export interface SwitchLog {
  info(fields: object, msg: string): void
  warn(fields: object, msg: string): void
  debug(fields: object, msg: string): void
}

const SILENT: SwitchLog = { info: () => {}, warn: () => {}, debug: () => {} }

export const SWITCH_DEFAULTS = {
  port: 5555,
  /** a peer silent this long leaves the switch (it is swept within a quarter more) */
  ageMs: 30_000,
  /** peers at once; a datagram from one more address is dropped (counted as refused) */
  maxPeers: 1024,
} as const

export interface UdpSwitchOptions {
  host?: string
  /** 0: any free port */
  port?: number
  ageMs?: number
  maxPeers?: number
  /** faults on the link to every peer that joins (setFaults changes them later) */
  faults?: LinkFaults
  /** seed of the loss fault's draws */
  seed?: number
  timers?: Timers
  log?: SwitchLog
  /**
   * Drop most frames to held peers in the kernel, counting a sample (kernel-drop.ts; default true).
   * false: every held frame reaches Node and is counted exactly.
   */
  kernelDrop?: boolean
}

export interface PeerInfo {
  /** HOST:PORT the peer sends from */
  peer: string
  framesIn: number
  framesOut: number
  /** frames to it dropped by the loss fault, or because too many were held */
  lost: number
  /** ms since its last datagram */
  idleMs: number
  faults: LinkFaults
  /** the peer asked for its frames to be held (port-hold.ts): they are dropped and reported */
  held: boolean
  /** frames to it dropped while held (with the kernel's drop, an estimate: kernel-drop.ts) */
  heldFrames: number
}

interface Peer {
  key: string
  sw: SwitchPort
  link: FaultyLink
  lastSeen: number
  framesIn: number
  /** frames the link handed to the socket */
  out: { frames: number }
  held: boolean
  heldFrames: number
  /** dropped since the last HELD report, and when that was */
  unreported: HeldCounts
  reportedAt: number
  /** a report of the frames held since reportedAt is due at reportedAt + REPORT_MS */
  reportDue: boolean
  /** where its datagrams come from */
  from: RemoteInfo
}

/**
 * `tandem switch`: a VirtualSwitch behind one UDP socket. Each address:port that sends a valid
 * datagram is one switch port; each datagram is one whole Ethernet frame (MIN_FRAME to MAX_FRAME
 * bytes) or empty (a keepalive: the peer joins or stays, nothing is switched). Datagrams of
 * other sizes are dropped and counted, and make no peer. A peer silent for `ageMs` is removed
 * with the MACs learned on it (SPEC.md "Switch and uplinks").
 */
export class UdpSwitch {
  readonly switch: VirtualSwitch
  /** datagrams dropped for their size */
  badDatagrams = 0
  /** datagrams from a new address dropped because maxPeers peers were joined */
  refused = 0
  /** peers removed for silence */
  aged = 0
  private readonly peers = new Map<string, Peer>()
  private readonly stop = new AbortController()
  private defaults: LinkFaults
  private readonly random: () => number
  private readonly timers: Timers
  private readonly log: SwitchLog
  private readonly ageMs: number
  private readonly maxPeers: number
  /** the kernel's share of the dropping: frames to a held peer's MACs, most never reach Node */
  private readonly drop: KernelDrop

  private constructor(
    private readonly sock: Socket,
    o: UdpSwitchOptions,
  ) {
    this.switch = new VirtualSwitch()
    this.timers = o.timers ?? realTimers
    this.log = o.log ?? SILENT
    this.ageMs = o.ageMs ?? SWITCH_DEFAULTS.ageMs
    this.maxPeers = o.maxPeers ?? SWITCH_DEFAULTS.maxPeers
    this.defaults = { ...(o.faults ?? NO_FAULTS) }
    this.random = seededRandom(o.seed ?? 1)
    this.drop = new KernelDrop(sock, o.kernelDrop !== false)
    this.drop.onUnavailable = (why) => this.log.warn({ why }, 'held frames are dropped in Node: the kernel filter is unavailable')
    sock.on('message', (msg, rinfo) => this.datagram(msg, rinfo))
    sock.on('error', (e) => this.log.warn({ err: e.message }, 'socket error'))
    void this.sweep()
  }

  /** Binds the socket (port 0: any free one); a bind failure is an IoError naming the address. */
  static async listen(o: UdpSwitchOptions = {}): Promise<UdpSwitch> {
    const host = o.host ?? '127.0.0.1'
    const port = o.port ?? SWITCH_DEFAULTS.port
    const sock = createSocket({ type: host.includes(':') ? 'udp6' : 'udp4' })
    await new Promise<void>((resolve, reject) => {
      sock.once('error', (e: NodeJS.ErrnoException) => {
        sock.close()
        reject(new StorageError('IoError', `cannot listen on udp:${formatAddress(host, port)}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}`))
      })
      sock.bind(port, host, () => {
        sock.removeAllListeners('error')
        resolve()
      })
    })
    return new UdpSwitch(sock, o)
  }

  get address(): { host: string; port: number } {
    const a = this.sock.address()
    return { host: a.address, port: a.port }
  }

  /** The joined peers, in the order they joined. */
  list(): PeerInfo[] {
    const now = this.timers.now()
    return [...this.peers.values()].map((p) => ({ peer: p.key, framesIn: p.framesIn, framesOut: p.out.frames, lost: p.link.lost + p.link.overflow, idleMs: now - p.lastSeen, faults: p.link.current, held: p.held, heldFrames: p.heldFrames }))
  }

  /** Faults on the link to one peer (HOST:PORT as `list` names it), or to every peer, present and future ('all'). */
  setFaults(peer: string, f: Partial<LinkFaults>): void {
    if (peer === 'all') {
      this.defaults = { ...this.defaults, ...f }
      for (const p of this.peers.values()) p.link.set(f)
      return
    }
    const p = this.peers.get(peer)
    if (!p) throw new StorageError('NotFound', `no peer ${peer} on the switch`)
    p.link.set(f)
  }

  private datagram(msg: Buffer, rinfo: RemoteInfo): void {
    if (msg.length !== 0 && (msg.length < MIN_FRAME || msg.length > MAX_FRAME)) {
      this.badDatagrams++
      this.log.debug({ from: formatAddress(rinfo.address, rinfo.port), bytes: msg.length }, 'datagram dropped: not a frame')
      return
    }
    const key = formatAddress(rinfo.address, rinfo.port)
    let p = this.peers.get(key)
    if (!p) {
      if (this.peers.size >= this.maxPeers) {
        this.refused++
        return
      }
      p = this.join(key, rinfo)
    }
    p.lastSeen = this.timers.now()
    if (msg.length === 0) return
    const hold = parseHold(msg)
    if (hold) {
      p.held = hold === 'HOLD'
      this.log.info({ peer: key, held: p.held }, p.held ? 'peer holds its frames' : 'peer takes its frames again')
      this.dropHeld()
      return
    }
    p.framesIn++
    p.sw.send(msg)
    // a MAC the kernel drops for, seen on a port that does not hold (a VM moved: FT failover): refilter
    if (!p.held && this.drop.covers(msg, 6)) this.dropHeld()
  }

  /** The kernel's filter: the MACs learned on held peers. */
  private dropHeld(): void {
    const macs: Buffer[] = []
    for (const q of this.peers.values()) if (q.held) for (const m of this.switch.macsOn(q.sw)) macs.push(Buffer.from(m, 'hex'))
    this.drop.set(macs)
  }

  private join(key: string, rinfo: RemoteInfo): Peer {
    const sw = this.switch.port()
    const out = { frames: 0 }
    const link = new FaultyLink(
      (frame) => {
        out.frames++
        this.sock.send(frame, rinfo.port, rinfo.address)
      },
      this.timers,
      this.random,
      this.defaults,
    )
    const p: Peer = { key, sw, link, out, lastSeen: 0, framesIn: 0, held: false, heldFrames: 0, unreported: { frames: 0, bytes: 0, small: 0 }, reportedAt: 0, reportDue: false, from: rinfo }
    sw.onReceive = (frame) => (p.held ? this.hold(p, frame) : p.link.send(frame))
    this.peers.set(key, p)
    this.log.info({ peer: key, peers: this.peers.size }, 'peer joined')
    return p
  }

  /**
   * A frame for a peer that holds its frames: dropped and counted; reported at once when the last
   * report is REPORT_MS old, else when it will be (so the last frames of a flood are reported too).
   */
  private hold(p: Peer, frame: Buffer): void {
    // a frame the kernel let through as its sample stands for the ones it dropped
    const w = this.drop.weight(frame)
    p.heldFrames += w
    const u = p.unreported
    u.frames += w
    u.bytes += w * frame.length
    if (frame.length <= SMALL_HELD) u.small += w
    const wait = p.reportedAt + REPORT_MS - this.timers.now()
    if (wait <= 0) return this.report(p)
    if (p.reportDue) return
    p.reportDue = true
    void this.timers.sleep(wait, this.stop.signal).then(() => {
      p.reportDue = false
      if (p.unreported.frames > 0 && this.peers.get(p.key) === p) this.report(p)
    })
  }

  private report(p: Peer): void {
    p.reportedAt = this.timers.now()
    this.sock.send(heldFrame(p.unreported), p.from.port, p.from.address)
    p.unreported = { frames: 0, bytes: 0, small: 0 }
  }

  private leave(p: Peer): void {
    p.sw.close()
    p.link.close()
    this.peers.delete(p.key)
    if (p.held) this.dropHeld()
  }

  /** Every quarter of ageMs: peers silent for ageMs or more leave. */
  private async sweep(): Promise<void> {
    const every = Math.max(10, this.ageMs / 4)
    while (!this.stop.signal.aborted) {
      await this.timers.sleep(every, this.stop.signal)
      const now = this.timers.now()
      for (const p of [...this.peers.values()]) {
        if (now - p.lastSeen < this.ageMs) continue
        this.leave(p)
        this.aged++
        this.log.info({ peer: p.key, silentMs: Math.round(now - p.lastSeen), peers: this.peers.size }, 'peer aged out')
      }
    }
  }

  close(): Promise<void> {
    this.stop.abort()
    for (const p of [...this.peers.values()]) this.leave(p)
    return new Promise((r) => this.sock.close(() => r()))
  }
}

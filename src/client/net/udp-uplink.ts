import { createSocket, type Socket } from 'node:dgram'
import { StorageError } from '../../disk-formats/errors.js'
import { MIN_FRAME, type SwitchPort } from '../vm/net.js'
import { MAX_FRAME } from '../vm/event-format.js'
import { realTimers, type Timers } from '../vm/timers.js'
import { formatAddress, type UdpAddress } from './address.js'

/** The EtherType of an uplink's announce frame (IEEE 802 local experimental 2). */
export const ANNOUNCE_ETHERTYPE = 0x88b6

/** A frame from `mac` to itself (the switch learns and filters it), or an empty datagram without a MAC. */
const announceFrame = (mac?: Buffer): Buffer => (mac ? Buffer.concat([mac, mac, Buffer.from([ANNOUNCE_ETHERTYPE >> 8, ANNOUNCE_ETHERTYPE & 0xff])]) : Buffer.alloc(0))

/** An uplink announces itself this often: well inside the switch's 30 s age. */
export const KEEPALIVE_MS = 10_000

export interface UplinkOptions {
  /** the MAC behind this uplink (a VM's NIC): announced, so the switch learns it before it sends */
  mac?: Buffer
  keepaliveMs?: number
  timers?: Timers
}

/**
 * A port on a remote `tandem switch`: each frame sent is one datagram to the switch from this
 * uplink's own ephemeral socket (connected to the switch, so datagrams from elsewhere never
 * arrive); each datagram from the switch is a frame for it. At join and every keepaliveMs it
 * announces itself: with a MAC, a 14-byte frame from that MAC to itself (the switch learns the MAC
 * and filters the frame); without, an empty datagram (the switch keeps the peer, switches nothing).
 */
export class UdpUplink implements SwitchPort {
  onReceive: ((frame: Buffer) => void) | null = null
  /** datagrams from the switch that were not frames */
  badDatagrams = 0
  private readonly stop = new AbortController()
  private announcement: Buffer

  private constructor(
    private readonly sock: Socket,
    o: UplinkOptions,
  ) {
    this.announcement = announceFrame(o.mac)
    sock.on('message', (msg) => {
      if (msg.length < MIN_FRAME || msg.length > MAX_FRAME) this.badDatagrams++
      else this.onReceive?.(msg)
    })
    // an unreachable switch (ICMP port unreachable) is not the uplink's end: it may come back
    sock.on('error', () => {})
    void this.keepalive(o.timers ?? realTimers, o.keepaliveMs ?? KEEPALIVE_MS)
  }

  static async join(to: UdpAddress, o: UplinkOptions = {}): Promise<UdpUplink> {
    const sock = createSocket({ type: to.host.includes(':') ? 'udp6' : 'udp4' })
    await new Promise<void>((resolve, reject) => {
      sock.once('error', (e) => {
        sock.close()
        reject(new StorageError('IoError', `cannot reach the switch at udp:${formatAddress(to.host, to.port)}: ${e.message}`))
      })
      sock.connect(to.port, to.host, () => {
        sock.removeAllListeners('error')
        resolve()
      })
    })
    return new UdpUplink(sock, o)
  }

  /** This uplink's own address, as the switch names the peer. */
  get local(): string {
    const a = this.sock.address()
    return formatAddress(a.address, a.port)
  }

  send(frame: Buffer): void {
    if (!this.stop.signal.aborted) this.sock.send(frame)
  }

  /**
   * Announces now, and from now on, `mac` (undefined: no MAC, keepalives only). A VM that takes
   * over another's MAC (an FT backup going live) announces it, and the switch moves the MAC here;
   * so a port that must not draw a MAC's frames yet joins without it.
   */
  announce(mac?: Buffer): void {
    this.announcement = announceFrame(mac)
    this.send(this.announcement)
  }

  private async keepalive(timers: Timers, every: number): Promise<void> {
    while (!this.stop.signal.aborted) {
      this.sock.send(this.announcement)
      await timers.sleep(every, this.stop.signal)
    }
  }

  close(): void {
    if (this.stop.signal.aborted) return
    this.stop.abort()
    this.sock.close()
  }
}

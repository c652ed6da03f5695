import { createSocket, type Socket } from 'node:dgram'
import { MAX_FRAME } from './events.js'

/**
 * A virtual Ethernet switch: frames (destination MAC, source MAC, EtherType, payload) sent on one
 * port go to the port that last sent from the destination MAC, or to every other port when the
 * destination is unknown or broadcast; a frame for a MAC learned on the port it came from is
 * filtered (802.1D). It remembers the `maxMacs` most recently seen source MACs (default 4096;
 * a forgotten MAC is flooded to, as an unknown one). VMs' NICs and UDP sockets join it as ports.
 */
export const MIN_FRAME = 14

export interface SwitchPort {
  /** a frame from this port into the switch */
  send(frame: Buffer): void
  /** frames from the switch to this port */
  onReceive: ((frame: Buffer) => void) | null
  close(): void
}

const macKey = (b: Buffer, at: number) => b.toString('hex', at, at + 6)

export class VirtualSwitch {
  private readonly ports = new Set<SwitchPort>()
  private readonly learned = new Map<string, SwitchPort>()
  frames = 0
  dropped = 0
  /** frames for a MAC on the port they came from, not forwarded */
  filtered = 0
  private readonly maxMacs: number

  constructor(opts: { maxMacs?: number } = {}) {
    this.maxMacs = opts.maxMacs ?? 4096
  }

  /** The MACs learned on `port` (hex, as macKey makes them). */
  macsOn(port: SwitchPort): string[] {
    return [...this.learned].filter(([, q]) => q === port).map(([mac]) => mac)
  }

  /** A new port on the switch. */
  port(): SwitchPort {
    const sw = this
    const p: SwitchPort = {
      onReceive: null,
      send(frame: Buffer) {
        sw.forward(p, frame)
      },
      close() {
        sw.ports.delete(p)
        for (const [mac, q] of sw.learned) if (q === p) sw.learned.delete(mac)
      },
    }
    this.ports.add(p)
    return p
  }

  private forward(from: SwitchPort, frame: Buffer): void {
    if (frame.length < MIN_FRAME || frame.length > MAX_FRAME) {
      this.dropped++
      return
    }
    this.frames++
    // the most recently seen MAC last: the first is the one to forget
    const src = macKey(frame, 6)
    this.learned.delete(src)
    this.learned.set(src, from)
    if (this.learned.size > this.maxMacs) this.learned.delete(this.learned.keys().next().value as string)
    const to = frame[0] & 1 ? undefined : this.learned.get(macKey(frame, 0))
    const copy = () => Buffer.from(frame)
    if (to === from) this.filtered++
    else if (to) to.onReceive?.(copy())
    else for (const p of this.ports) if (p !== from) p.onReceive?.(copy())
  }
}

/**
 * A UDP socket on a switch port, as qemu's `-netdev socket,udp=`: each datagram is one whole
 * Ethernet frame. Frames from the switch go to the address the last datagram came from.
 */
export class UdpPort {
  private peer: { address: string; port: number } | null = null
  private constructor(
    private readonly sock: Socket,
    private readonly port: SwitchPort,
  ) {
    port.onReceive = (frame) => {
      if (this.peer) sock.send(frame, this.peer.port, this.peer.address)
    }
    sock.on('message', (msg, rinfo) => {
      this.peer = { address: rinfo.address, port: rinfo.port }
      port.send(msg)
    })
  }

  static async listen(sw: VirtualSwitch, host: string, portNumber: number): Promise<UdpPort & { address: { address: string; port: number } }> {
    const sock = createSocket(host.includes(':') ? 'udp6' : 'udp4')
    await new Promise<void>((resolve, reject) => {
      sock.once('error', reject)
      sock.bind(portNumber, host, () => {
        sock.off('error', reject)
        resolve()
      })
    })
    sock.on('error', () => {}) // a bad datagram never ends the VM
    const u = new UdpPort(sock, sw.port())
    return Object.assign(u, { address: sock.address() })
  }

  close(): void {
    this.port.close()
    this.sock.close()
  }
}

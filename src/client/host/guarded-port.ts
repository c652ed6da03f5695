import { createSocket, type Socket } from 'node:dgram'
import { MIN_FRAME, type SwitchPort } from '../vm/net.js'
import { MAX_FRAME } from '../vm/event-format.js'
import { UdpUplink } from '../net/udp-uplink.js'
import { TrafficMonitor, type MonitorClock } from '../net/traffic-monitor.js'
import { holdFrame, isPortControl, parseHeld } from '../net/port-hold.js'
import type { UdpAddress } from '../net/address.js'

/** While blocked, HOLD is sent again (a lost datagram) at most this often, when frames still arrive. */
const HOLD_AGAIN_MS = 100

/**
 * A VM's port on a `tandem switch`, kept by its host (the DoS guard's meter and drop point): the
 * VM's NIC joins this loopback socket (`vm run --switch udp:127.0.0.1:PORT`) instead of the
 * switch, and the host relays its datagrams both ways through an uplink of its own, so the switch
 * still sees one peer per VM. Datagrams from the switch pass the TrafficMonitor (counted, dropped
 * while blocked); the VM's go out unchanged (its own keepalives and MAC announcements too). When
 * the monitor is blocked, the port asks the switch to hold its frames (port-hold.ts): a flood
 * then costs the switch a lookup per frame and this host nothing; the switch's HELD reports keep
 * the meter counting it. Only the first address that sends here is the VM: datagrams from any
 * other, and port-hold frames from the VM itself, are dropped and counted.
 */
export class GuardedPort {
  /** datagrams from an address that is not the VM's, not frames, or port-hold frames */
  strays = 0
  private vm: { address: string; port: number } | null = null
  private heldAt = -Infinity

  private constructor(
    private readonly sock: Socket,
    private readonly uplink: UdpUplink,
    readonly monitor: TrafficMonitor,
    private readonly clock: MonitorClock,
  ) {
    monitor.onReceive = (frame) => {
      if (this.vm) sock.send(frame, this.vm.port, this.vm.address)
    }
    monitor.onBlocked = (b) => this.hold(b)
    sock.on('message', (msg, rinfo) => {
      if (!this.vm) this.vm = { address: rinfo.address, port: rinfo.port }
      else if (this.vm.port !== rinfo.port || this.vm.address !== rinfo.address) {
        this.strays++
        return
      }
      if (msg.length !== 0 && (msg.length < MIN_FRAME || msg.length > MAX_FRAME || isPortControl(msg))) this.strays++
      else monitor.send(msg)
    })
    sock.on('error', () => {})
  }

  private hold(b: boolean): void {
    this.heldAt = this.clock.now()
    this.uplink.send(holdFrame(b ? 'HOLD' : 'PASS'))
  }

  /** Joins the switch at `to` and listens for the VM on 127.0.0.1, any free port. */
  static async open(to: UdpAddress, clock: MonitorClock): Promise<GuardedPort> {
    const uplink = await UdpUplink.join(to)
    const sock = createSocket('udp4')
    try {
      await new Promise<void>((resolve, reject) => {
        sock.once('error', reject)
        sock.bind(0, '127.0.0.1', () => {
          sock.off('error', reject)
          resolve()
        })
      })
    } catch (e) {
      uplink.close()
      sock.close()
      throw e
    }
    // between the uplink and the meter: HELD reports are counted, not passed on
    let port!: GuardedPort
    const inner: SwitchPort = { onReceive: null, send: (f) => uplink.send(f), close: () => uplink.close() }
    uplink.onReceive = (f) => {
      const held = parseHeld(f)
      if (held) return port.monitor.countHeld(held.frames, held.bytes, held.small)
      if (port.monitor.blocked && clock.now() - port.heldAt >= HOLD_AGAIN_MS) port.hold(true)
      inner.onReceive?.(f)
    }
    port = new GuardedPort(sock, uplink, new TrafficMonitor(inner, clock), clock)
    return port
  }

  /** What the VM is told to join: udp:127.0.0.1:PORT. */
  get address(): string {
    return `udp:127.0.0.1:${this.sock.address().port}`
  }

  close(): void {
    this.monitor.close()
    this.sock.close()
  }
}

import { createSocket, type Socket } from 'node:dgram'
import { MIN_FRAME } from '../vm/net.js'
import { MAX_FRAME } from '../vm/event-format.js'
import { UdpUplink } from '../net/udp-uplink.js'
import { TrafficMonitor, type MonitorClock } from '../net/traffic-monitor.js'
import type { UdpAddress } from '../net/address.js'

/**
 * A VM's port on a `tandem switch`, kept by its host (the DoS guard's meter and drop point): the
 * VM's NIC joins this loopback socket (`vm run --switch udp:127.0.0.1:PORT`) instead of the
 * switch, and the host relays its datagrams both ways through an uplink of its own, so the switch
 * still sees one peer per VM. Datagrams from the switch pass the TrafficMonitor (counted, dropped
 * while blocked); the VM's go out unchanged (its own keepalives and MAC announcements too). Only
 * the first address that sends here is the VM: datagrams from any other are dropped and counted.
 */
export class GuardedPort {
  /** datagrams from an address that is not the VM's, or not frames */
  strays = 0
  private vm: { address: string; port: number } | null = null

  private constructor(
    private readonly sock: Socket,
    readonly monitor: TrafficMonitor,
  ) {
    monitor.onReceive = (frame) => {
      if (this.vm) sock.send(frame, this.vm.port, this.vm.address)
    }
    sock.on('message', (msg, rinfo) => {
      if (!this.vm) this.vm = { address: rinfo.address, port: rinfo.port }
      else if (this.vm.port !== rinfo.port || this.vm.address !== rinfo.address) {
        this.strays++
        return
      }
      if (msg.length !== 0 && (msg.length < MIN_FRAME || msg.length > MAX_FRAME)) this.strays++
      else monitor.send(msg)
    })
    sock.on('error', () => {})
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
    return new GuardedPort(sock, new TrafficMonitor(uplink, clock))
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

import { pino, type Logger } from 'pino'
import { UdpSwitch, type UdpSwitchOptions } from './udp-switch.js'
import { formatAddress } from './address.js'

export interface RunningSwitch {
  switch: UdpSwitch
  log: Logger
  /** Closes the socket; logs the switch's totals. */
  close(): Promise<void>
}

/** `tandem switch`: the switch with a pino logger; its first line names the bound address. */
export async function runSwitch(o: UdpSwitchOptions & { logLevel?: string }): Promise<RunningSwitch> {
  const log = pino({ level: o.logLevel ?? 'info' })
  const sw = await UdpSwitch.listen({ ...o, log })
  const a = sw.address
  log.info({ listen: `udp:${formatAddress(a.host, a.port)}`, port: a.port, ageMs: o.ageMs, faults: o.faults }, 'tandem switch ready')
  return {
    switch: sw,
    log,
    close: async () => {
      const totals = { frames: sw.switch.frames, filtered: sw.switch.filtered, badDatagrams: sw.badDatagrams, refused: sw.refused, aged: sw.aged, peers: sw.list().length }
      await sw.close()
      log.info(totals, 'tandem switch stopped')
    },
  }
}

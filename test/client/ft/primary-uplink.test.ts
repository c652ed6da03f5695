import t from 'tap'
import { FtListener } from '../../../src/client/ft/channel.js'
import { ftPrimary } from '../../../src/client/ft/run-ft.js'
import type { MachineOptions } from '../../../src/client/vm/machine.js'
import type { SwitchPort } from '../../../src/client/vm/net.js'

/**
 * Only a side that holds the VM announces its MAC to the switch. A primary's uplink (UdpUplink)
 * announced the MAC when it joined; once paired, its keepalives carry none, so a primary deposed
 * while stopped or partitioned cannot draw the VM's frames back from the live backup with an
 * overdue keepalive (sigstop.test.ts); it announces again when it wins the claim and runs alone.
 */
t.test('a paired primary stops announcing the MAC; it announces again once it won the claim', async (t) => {
  const listener = await FtListener.listen({ port: 0 })
  t.teardown(() => listener.close())
  listener.once('channel', (ch) => ch.once('message', (m) => m.type === 'HELLO' && ch.send({ ...m, type: 'HELLO_OK' })))
  const mac = Buffer.from([2, 0, 0, 0, 0, 0x44])
  const announced: (string | undefined)[] = []
  const port: SwitchPort & { announce(mac?: Buffer): void } = { onReceive: null, send: () => {}, close: () => {}, announce: (m) => announced.push(m?.toString('hex')) }
  let claimed = -1
  const role = await ftPrimary(
    { role: 'primary', host: '127.0.0.1', port: listener.port, vm: 'vm1', reads: 'disk', lossMs: 200, arbiter: { generation: 7, claim: async (g) => ((claimed = g), true) } },
    { memoryBytes: 1 << 20, imageSha: Buffer.alloc(32) },
  )
  role.machineOptions({ image: Buffer.alloc(0), memory: 1 << 20, net: port, mac } as MachineOptions)
  t.same(announced, [undefined], 'paired: the uplink announces no MAC from now on')
  await listener.close() // the backup is gone: the primary claims (and wins here)
  for (let i = 0; i < 200 && announced.length < 2; i++) await new Promise((r) => setTimeout(r, 10))
  t.equal(claimed, 7, 'it claimed from its generation')
  t.same(announced, [undefined, mac.toString('hex')], 'alone: the MAC is announced again')
  t.equal(role.status().outcome, 'alone')
})

import { readFileSync } from 'node:fs'
import { tcpProxy } from './tcp-proxy.js'
import { createHash } from 'node:crypto'
import { Machine, guestPath, runUnder, type RunSummary } from '../../src/client/vm/index.js'
import { VirtualSwitch, type SwitchPort } from '../../src/client/vm/net.js'
import { KvClient } from '../../src/client/kv/client.js'
import { coloPrimary, coloSecondary } from '../../src/client/ft/colo/run-colo.js'
import type { Arbiter, FtReport, FtRole } from '../../src/client/ft/run-ft.js'
import type { ScsiPath } from '../../src/client/vm/scsi-path.js'

export const VM_MAC = Buffer.from([2, 0, 0, 0, 0, 0x42])

/**
 * A quasi-lockstep pair in one process: the real roles over a loopback FT channel, both VMs' NICs
 * on one VirtualSwitch with a kv client. One lock record decides a claim (the first side wins;
 * `winner`: that side always does). `cut()` ends the FT channel as a lost peer would.
 */
export async function coloPair(t: { teardown(fn: () => unknown): void }, o: { guest: string; timeoutMs: number; memory?: number; lossMs?: number; disk?: { primary: ScsiPath; secondary: ScsiPath }; maxHeldWrites?: number; checkpointMs?: number; winner?: 'primary' | 'secondary' }) {
  const image = readFileSync(guestPath(o.guest))
  const memory = o.memory ?? 16 << 20
  const imageSha = createHash('sha256').update(image).digest()
  let owner: string | null = o.winner ?? null
  const arbiter = (side: string): Arbiter => ({
    generation: 1,
    claim: async () => {
      owner ??= side
      return owner === side
    },
  })
  const sw = new VirtualSwitch()
  const role = { vm: 'vm1', reads: 'disk' as const, host: '127.0.0.1', lossMs: o.lossMs ?? 3000, colo: { timeoutMs: o.timeoutMs, maxHeldWrites: o.maxHeldWrites, checkpointMs: o.checkpointMs } }
  let port!: (p: number) => void
  const listening = new Promise<number>((r) => (port = r))
  const secondaryRole = coloSecondary({ ...role, role: 'backup', port: 0, arbiter: arbiter('secondary') }, { memoryBytes: memory, imageSha, onListening: port })
  const link = await tcpProxy(t, await listening)
  const primaryRole = coloPrimary({ ...role, role: 'primary', port: link.port, arbiter: arbiter('primary') }, { memoryBytes: memory, imageSha })
  const [s, p] = await Promise.all([secondaryRole, primaryRole])
  await link.refuse()
  const console = { primary: [] as number[], secondary: [] as number[] }
  const start = (r: FtRole, net: SwitchPort, out: number[], disk?: ScsiPath) => {
    const m = new Machine(r.machineOptions({ image, memory, net, mac: VM_MAC, onConsole: (b) => out.push(b), disk }))
    r.attach(m)
    const done = runUnder(m, r) as Promise<RunSummary & { ft: FtReport }>
    return { m, done }
  }
  const pm = start(p, sw.port(), console.primary, o.disk?.primary)
  const secondaryPort = sw.port()
  const sentBySecondary: Buffer[] = []
  const send = secondaryPort.send.bind(secondaryPort)
  secondaryPort.send = (f) => {
    sentBySecondary.push(f)
    send(f)
  }
  const sm = start(s, secondaryPort, console.secondary, o.disk?.secondary)
  const client = new KvClient({ port: sw.port(), vmMac: VM_MAC, retryMs: 1000, timeoutMs: 20_000 })
  return { primary: p, secondary: s, pm, sm, client, console, sw, sentBySecondary, owner: () => owner, cut: link.cut }
}

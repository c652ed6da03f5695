/**
 * The FT log channel's cost on loopback (both ends in this process): LOG frames of `FT_BATCH` bytes
 * (default 64 KiB) for `FT_MIB` MiB (default 256), sent as fast as backpressure allows; then the
 * idle heartbeat bandwidth over 2 s. Reports wall time and this process's CPU (user + sys): the
 * machine is shared, so wall-clock rates are noisy; CPU per MiB is the steadier figure.
 *
 *   npm run build && node dist/scripts/bench/ft-channel.js
 */
import { FtChannel, FtListener } from '../../src/client/ft/index.js'

const batch = Number(process.env.FT_BATCH ?? 64 << 10)
const mib = Number(process.env.FT_MIB ?? 256)

async function main(): Promise<void> {
  const listener = await FtListener.listen({ port: 0 })
  const accepted = new Promise<FtChannel>((r) => listener.once('channel', r))
  const primary = await FtChannel.connect({ port: listener.port })
  const backup = await accepted
  let got = 0
  const total = Math.floor((mib << 20) / batch)
  const all = new Promise<void>((resolve) =>
    backup.on('message', (m) => {
      if (m.type === 'LOG' && ++got === total) resolve()
    }),
  )
  const records = Buffer.alloc(batch, 0x5a)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (let i = 0; i < total; i++) if (!primary.send({ type: 'LOG', records })) await primary.drained()
  await all
  const wall = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const cpuS = (cpu.user + cpu.system) / 1e6
  const moved = (total * batch) / (1 << 20)
  console.log(`LOG ${batch} B batches: ${moved} MiB in ${wall.toFixed(2)} s wall = ${(moved / wall).toFixed(0)} MiB/s; CPU ${cpuS.toFixed(2)} s (user ${(cpu.user / 1e6).toFixed(2)}, sys ${(cpu.system / 1e6).toFixed(2)}) = ${((cpuS * 1000) / moved).toFixed(2)} ms CPU per MiB (both ends)`)
  const idle0 = primary.sent.bytes
  const idleB0 = backup.sent.bytes
  await new Promise((r) => setTimeout(r, 2000))
  const up = (primary.sent.bytes - idle0) / 2
  const down = (backup.sent.bytes - idleB0) / 2
  console.log(`idle: primary→backup ${((up * 8) / 1000).toFixed(1)} kbit/s, backup→primary ${((down * 8) / 1000).toFixed(1)} kbit/s (heartbeats; ${primary.sent.byType.HEARTBEAT.messages} sent by the primary)`)
  await primary.bye('stop', 0)
  await listener.close()
}

await main()

/**
 * FT redundancy restore (issue 17 item 6): a VM running alone gets a new backup from a live
 * checkpoint, over a real FT channel on loopback (both sides in this process). For 64 MiB and
 * 256 MiB of guest memory (memdirty's own 16 MiB plus the rest filled with random pages, so every
 * page is sent), memdirty writing memory all along: the pre-copy (bytes, rounds; the VM runs
 * unprotected), the pause (VM stopped to VM running), what is sent after it (pages dirty at the
 * pause, copy-on-write), the time to STATE_END and from the pause to the new backup's first ACK
 * (outputs wait that long), and the process's CPU time over the restore. Anchors: VMware FT VMotion pause < 1 s, vMotion
 * 500 ms goal, Xen 60–210 ms. `npm run bench` with BENCH_ONLY=ft-restore prints it.
 */
import { randomFillSync } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { Machine } from '../../src/client/vm/machine.js'
import { guestPath } from '../../src/client/vm/guests.js'
import { realTimers } from '../../src/client/vm/timers.js'
import { FtPrimary } from '../../src/client/ft/primary.js'
import { LiveSide, type RestoreSummary } from '../../src/client/ft/live-side.js'
import { ftBackup, type Arbiter, type FtRoleOptions } from '../../src/client/ft/run-ft.js'

const MiB = 1 << 20
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
/** a lockspace that always grants the claim: the bench measures the restore, not the arbitration */
const arbiter: Arbiter = { generation: 1, claim: async () => true }
const role = (r: 'primary' | 'backup'): FtRoleOptions => ({ role: r, host: '127.0.0.1', port: 0, vm: 'bench', reads: 'disk', arbiter, lossMs: 5000, lagControl: false })

async function once(image: Buffer, memory: number, fill: Uint8Array): Promise<RestoreSummary & { cpuMs: number }> {
  const sha = createHash('sha256').update(image).digest()
  const out = new FtPrimary({ timers: realTimers, reads: 'disk' })
  const live = new LiveSide({ role: role('primary'), timers: realTimers, outputs: out, memoryBytes: memory, imageSha: sha, hasDisk: false })
  const m = new Machine({ image, memory, ...out.machineOptions({}) })
  m.mem.bytes.set(fill.subarray(0, memory - 16 * MiB), 16 * MiB)
  live.machine = m
  out.attach(m)
  const running = m.run()
  // the guest is writing memory when the restore starts
  while (m.hart.instret < 1_000_000) await new Promise((r) => setTimeout(r, 2))
  let port!: (p: number) => void
  const listening = new Promise<number>((r) => (port = r))
  const backup = ftBackup(role('backup'), { memoryBytes: memory, imageSha: sha, onListening: (p) => port(p) })
  const cpu0 = process.cpuUsage()
  const [summary] = await Promise.all([live.protect('127.0.0.1', await listening), backup])
  const c = process.cpuUsage(cpu0)
  m.halt('bench over')
  await running
  live.cur?.ch.close('bench over')
  await live.lost
  return { ...summary, cpuMs: (c.user + c.system) / 1000 }
}

export async function ftRestoreBench(o: { reps: number }): Promise<void> {
  const image = readFileSync(guestPath('memdirty'))
  console.log('\n## FT redundancy restore (memdirty writing memory; both sides in one process, loopback)')
  console.log('| memory | pre-copy MiB (rounds), VM running unprotected | pause ms (median / max) | after the pause: KiB (pages, COW) | STATE_END ms from the request | outputs held ms (pause → first ACK) | CPU ms (process) |')
  console.log('|---|---|---|---|---|---|---|')
  for (const memory of [64 * MiB, 256 * MiB]) {
    const fill = randomFillSync(new Uint8Array(memory - 16 * MiB))
    const rows: (RestoreSummary & { cpuMs: number })[] = []
    for (let i = 0; i < o.reps; i++) rows.push(await once(image, memory, fill))
    const pick = (f: (r: RestoreSummary & { cpuMs: number }) => number) => median(rows.map(f))
    console.log(
      `| ${memory / MiB} MiB | ${(pick((r) => r.precopyBytes) / MiB).toFixed(1)} (${pick((r) => r.precopyRounds)}) | ${pick((r) => r.pauseMs).toFixed(2)} / ${Math.max(...rows.map((r) => r.pauseMs)).toFixed(2)} | ${(pick((r) => r.stateBytes) / 1024).toFixed(0)} (${pick((r) => r.pages)}, ${pick((r) => r.cowPages)}) | ${Math.round(pick((r) => r.syncMs))} | ${Math.round(pick((r) => r.protectedMs))} | ${Math.round(pick((r) => r.cpuMs))} |`,
    )
  }
  console.log('(anchors: VMware FT VMotion pause < 1 s; vMotion 500 ms goal; Xen 60–210 ms. The pause is the live checkpoint\'s stun: memory goes copy-on-write, so no page is sent inside it.)')
}

if (import.meta.url === `file://${process.argv[1]}`) await ftRestoreBench({ reps: Number(process.env.BENCH_REPS ?? 3) })

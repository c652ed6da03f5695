import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { CMD_WINDOW, CONNECTION_MEMORY_BOUND } from '../../../src/server/iscsi/limits.js'
import { tmp } from '../../helpers/peers.js'
import { bearer, startServe } from '../../helpers/server.js'
import { RawIscsi, read10, write10 } from '../../helpers/iscsi-raw.js'

/*
 * A client that sends commands and never reads the replies (or never sends the data its writes
 * announce) grows a real `tandem serve` by no more than the documented bound per connection
 * (CONNECTION_MEMORY_BOUND, README iSCSI), measured from outside as VmRSS. SLACK covers what is
 * not the connection's: the heap's own growth, allocator arenas, code compiled on the way.
 */

const MiB = 1 << 20
const SLACK = 32 * MiB
const COMMANDS = 600

const rss = (pid: number) => Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024

/** VmRSS once it has stopped growing (no MiB gained in 2 s), or after 30 s. */
async function settledRss(pid: number): Promise<number> {
  let last = rss(pid)
  let still = Date.now()
  for (const end = Date.now() + 30_000; Date.now() < end; ) {
    await new Promise((r) => setTimeout(r, 200))
    const now = rss(pid)
    if (now > last + MiB) {
      last = now
      still = Date.now()
    } else if (Date.now() - still >= 2000) return Math.max(now, last)
  }
  return last
}

async function serveWithDisk(t: Test): Promise<{ p: Awaited<ReturnType<typeof startServe>>; target: string; metric: (series: string) => Promise<number> }> {
  const p = await startServe(t, tmp(t, 'tandem-mem-'))
  const res = await fetch(`http://127.0.0.1:${p.httpPort}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(p.token) }, body: JSON.stringify({ name: 'm', size: 64 * MiB }) })
  t.equal(res.status, 201)
  const metric = async (series: string) => {
    const m = await (await fetch(`http://127.0.0.1:${p.httpPort}/metrics`)).text()
    return Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(m)?.[1] ?? 0)
  }
  return { p, target: 'iqn.2026-11.local.tandem:m', metric }
}

t.test(`${COMMANDS} × 1 MiB READ(10) never read: the server grows by less than the bound`, async (t) => {
  const { p, target, metric } = await serveWithDisk(t)
  const c = await RawIscsi.open(p.iscsiPort)
  t.teardown(() => c.close())
  await c.login(target, 'MaxRecvDataSegmentLength=262144\0')
  // warm up the read path, so its code and first buffers are in the baseline
  for (let i = 0; i < 8; i++) t.equal((await c.readBlocks(i * 2048, 2048)).status, 0)
  const before = await settledRss(p.child.pid!)
  c.sock.pause() // from here on, nothing the target sends is read
  for (let i = 0; i < COMMANDS; i++) c.command(read10((i % 32) * 2048, 2048), { readLength: MiB })
  const after = await settledRss(p.child.pid!)
  const grew = after - before
  t.comment(`VmRSS ${(before / MiB).toFixed(0)} -> ${(after / MiB).toFixed(0)} MiB (+${(grew / MiB).toFixed(1)}); bound ${(CONNECTION_MEMORY_BOUND / MiB).toFixed(0)} MiB + ${SLACK / MiB} slack`)
  t.ok(grew < CONNECTION_MEMORY_BOUND + SLACK, `grew ${(grew / MiB).toFixed(1)} MiB`)
  const reads = await metric('tandem_export_operations_total{export="m",protocol="iscsi",op="read"}')
  t.ok(reads <= 8 + CMD_WINDOW, `${reads - 8} of the ${COMMANDS} reads executed: at most the window of ${CMD_WINDOW}`)
})

t.test(`${COMMANDS} × 1 MiB WRITE(10) whose R2Ts are never answered: the server grows by less than the bound`, async (t) => {
  const { p, target } = await serveWithDisk(t)
  const c = await RawIscsi.open(p.iscsiPort)
  t.teardown(() => c.close())
  await c.login(target, 'MaxRecvDataSegmentLength=262144\0InitialR2T=Yes\0ImmediateData=Yes\0FirstBurstLength=262144\0MaxBurstLength=1048576\0')
  // warm up the write path
  for (let i = 0; i < 8; i++) t.equal(await c.writeBlocks(i * 2048, Buffer.alloc(MiB, i), 256 * 1024), 0, `warm-up write ${i}`)
  const before = await settledRss(p.child.pid!)
  c.sock.pause()
  // each sends its first 256 KiB as immediate data, then never what its R2T asks for
  const immediate = Buffer.alloc(256 * 1024, 0x5a)
  for (let i = 0; i < COMMANDS; i++) c.command(write10((i % 32) * 2048, 2048), { write: immediate, edtl: MiB })
  const after = await settledRss(p.child.pid!)
  const grew = after - before
  t.comment(`VmRSS ${(before / MiB).toFixed(0)} -> ${(after / MiB).toFixed(0)} MiB (+${(grew / MiB).toFixed(1)}); bound ${(CONNECTION_MEMORY_BOUND / MiB).toFixed(0)} MiB + ${SLACK / MiB} slack`)
  t.ok(grew < CONNECTION_MEMORY_BOUND + SLACK, `grew ${(grew / MiB).toFixed(1)} MiB`)
})

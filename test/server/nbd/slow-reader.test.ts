import t, { type Test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { pattern, tmp, within } from '../../helpers/peers.js'
import { rssOf } from '../../helpers/serve-process.js'
import { bearer, startServe, startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { MAX_CONNECTION_BYTES } from '../../../src/server/nbd/protocol.js'

const MiB = 1 << 20
/** What one connection may cost the server (README, NBD): its budget plus the socket queue's 4 MiB of unread requests. */
const BOUND = MAX_CONNECTION_BYTES + 4 * MiB
/** What is not the connection's: the heap's own growth, the allocator's slack. */
const SLACK = 48 * MiB
const DISK = 64 * MiB
const DATA = pattern(DISK, 61)

/** A `tandem serve` process with a disk `d` full of DATA (so reads return real, resident bytes). */
async function serverWithData(t: Test): Promise<Awaited<ReturnType<typeof startServe>>> {
  const p = await startServe(t, tmp(t, 'tandem-slow-'))
  const res = await fetch(`http://127.0.0.1:${p.httpPort}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(p.token) }, body: JSON.stringify({ name: 'd', size: DISK }) })
  t.equal(res.status, 201)
  const c = await TestNbdClient.open(p.nbdPort, 'd')
  for (let off = 0; off < DISK; off += 4 * MiB) t.equal((await c.pwrite(off, DATA.subarray(off, off + 4 * MiB))).errno, 0)
  c.disconnect()
  await c.closed
  await sleep(500)
  return p
}

/**
 * The server's growth over `base` while it works on what it was sent: sampled until it has not grown
 * for two seconds (or 30 s passed), stopping early once it is past the limit.
 */
async function growth(pid: number, base: number): Promise<number> {
  let max = 0
  let lastRise = Date.now()
  for (const t0 = Date.now(); Date.now() - t0 < 30_000 && Date.now() - lastRise < 2000; ) {
    await sleep(100)
    const g = rssOf(pid) - base
    if (g > max + MiB) lastRise = Date.now()
    max = Math.max(max, g)
    if (max > BOUND + SLACK) break
  }
  return max
}

/** Opens a connection that sends requests but does not read its replies (until it resumes). */
async function deafClient(port: number): Promise<TestNbdClient> {
  const c = await TestNbdClient.open(port, 'd', { structured: true })
  c.sock.pause()
  return c
}

const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`

t.test('600 × 1 MiB reads whose replies are not read: the server stays within its bound, and serves them all once read', { timeout: 180_000 }, async (t) => {
  const p = await serverWithData(t)
  const pid = p.child.pid!
  const base = rssOf(pid)
  const c = await deafClient(p.nbdPort)
  let good = 0
  const replies: Promise<void>[] = []
  for (let i = 0; i < 600; i++) {
    const off = (i % 64) * MiB
    replies.push(c.pread(off, MiB).then((r) => void (r.errno === 0 && r.data.equals(DATA.subarray(off, off + MiB)) && good++)))
  }
  const g = await growth(pid, base)
  t.ok(g < BOUND + SLACK, `the server grew by ${mib(g)} (bound ${mib(BOUND)} + ${mib(SLACK)} slack)`)
  // another client is served meanwhile
  const other = await TestNbdClient.open(p.nbdPort, 'd')
  t.ok((await other.pread(5 * MiB, MiB)).data.equals(DATA.subarray(5 * MiB, 6 * MiB)), 'another client reads meanwhile')
  other.disconnect()
  // the client reads at last: every reply comes, right (backpressure, not a deadlock)
  c.sock.resume()
  await Promise.all(replies)
  t.equal(good, 600, 'all 600 replies arrive with the right data once the client reads')
  c.disconnect()
  p.child.kill('SIGTERM')
  t.same(await p.exited, { code: 0, signal: null })
})

t.test('96 × 32 MiB reads whose replies are not read: bounded; SIGTERM still ends the server', { timeout: 180_000 }, async (t) => {
  const p = await serverWithData(t)
  const pid = p.child.pid!
  const base = rssOf(pid)
  const c = await deafClient(p.nbdPort)
  for (let i = 0; i < 96; i++) void c.pread((i % 2) * 32 * MiB, 32 * MiB)
  const g = await growth(pid, base)
  t.ok(g < BOUND + SLACK, `the server grew by ${mib(g)} (bound ${mib(BOUND)} + ${mib(SLACK)} slack)`)
  // the stuck connection does not hold shutdown: the server cuts it and exits
  const t0 = Date.now()
  p.child.kill('SIGTERM')
  const exit = await within(p.exited, 30_000, 'hung')
  t.same(exit, { code: 0, signal: null }, `SIGTERM with a client that reads nothing: exit 0 after ${Date.now() - t0} ms`)
  c.destroy()
})

t.test('a connection stuck on replies nobody reads lets go of its disk when the client goes: delete succeeds', { timeout: 60_000 }, async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', DISK)
  const c = await deafClient(s.nbdPort)
  for (let i = 0; i < 8; i++) void c.pread((i % 2) * 32 * MiB, 32 * MiB)
  await sleep(1000) // the server has filled its budget and stopped reading the connection
  await t.rejects(s.ds.deleteDisk('d'), { code: 'Busy' }, 'connected: the disk is in use')
  c.destroy()
  await c.closed
  let deleted = false
  for (const t0 = Date.now(); !deleted && Date.now() - t0 < 20_000; await sleep(100)) {
    deleted = await s.ds.deleteDisk('d').then(
      () => true,
      () => false,
    )
  }
  t.ok(deleted, 'once the client is gone, the disk deletes')
})

t.test('the server closes while a deaf client holds it at its budget: close settles, the process does not run dry', { timeout: 60_000 }, async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', DISK)
  const c = await deafClient(s.nbdPort)
  for (let i = 0; i < 8; i++) void c.pread((i % 2) * 32 * MiB, 32 * MiB).catch(() => undefined)
  await sleep(1000) // the server has filled its budget and waits to admit the next read
  // a ref'd timer keeps the process alive, so a close nobody settles fails here rather than ending the run
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<string>((r) => (timer = setTimeout(() => r('never settled'), 20_000)))
  const closed = await Promise.race([s.close().then(() => 'closed'), late])
  clearTimeout(timer)
  t.equal(closed, 'closed', 'the server closed with the connection cut mid-wait')
  c.destroy()
})

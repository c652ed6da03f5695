import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmp, pattern, rng } from '../helpers/peers.js'
import { TestNbdClient } from '../helpers/nbd-client.js'
import { bearer, startServe } from '../helpers/server.js'

t.test('SIGKILL right after a flush completes loses no acknowledged write', async (t) => {
  const dir = tmp(t, 'tandem-kill-')
  const SIZE = 16 << 20
  let p = await startServe(t, dir)
  const res = await fetch(`http://127.0.0.1:${p.httpPort}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(p.token) }, body: JSON.stringify({ name: 'vm', size: SIZE }) })
  t.equal(res.status, 201)
  const expect = Buffer.alloc(SIZE)
  const r = rng(77)
  for (let round = 0; round < 6; round++) {
    const c = await TestNbdClient.open(p.nbdPort, 'vm')
    // a burst of pipelined writes of mixed sizes (partial grains, several grains)
    // In-flight NBD writes have no order between them, so the writes of one burst never overlap
    // (bursts are sequential, so later bursts do overwrite earlier ones).
    const writes: Promise<{ errno: number }>[] = []
    const taken: [number, number][] = []
    for (let i = 0; i < 64; i++) {
      const len = (1 + (r() % 64)) * 512 * (r() % 4 === 0 ? 64 : 1)
      const off = (r() % ((SIZE - len) / 512)) * 512
      if (taken.some(([a, b]) => off < b && a < off + len)) continue
      taken.push([off, off + len])
      const data = pattern(len, r())
      data.copy(expect, off)
      writes.push(c.pwrite(off, data))
    }
    for (const w of await Promise.all(writes)) t.equal(w.errno, 0)
    const f = await c.flush()
    p.child.kill('SIGKILL') // the instant the flush is acknowledged
    t.equal(f.errno, 0, `round ${round}: flush acknowledged, server killed`)
    t.equal((await p.exited).signal, 'SIGKILL')
    p = await startServe(t, dir)
    const v = await TestNbdClient.open(p.nbdPort, 'vm')
    const got = await v.pread(0, SIZE)
    t.ok(got.data.equals(expect), `round ${round}: every acknowledged write reads back after restart`)
    v.disconnect()
  }
  p.child.kill('SIGTERM')
  t.same(await p.exited, { code: 0, signal: null }, 'SIGTERM: clean exit 0')
  // a clean shutdown leaves no layer marked uncleanShutdown (header byte 72)
  const rec = JSON.parse(readFileSync(join(dir, 'vm', 'disk.json'), 'utf8'))
  t.equal(readFileSync(join(dir, 'vm', rec.top))[72], 0, 'uncleanShutdown cleared on SIGTERM')
})

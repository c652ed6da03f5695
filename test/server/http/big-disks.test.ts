import t from 'tap'
import type { AddressInfo } from 'node:net'
import { pino } from 'pino'
import { Datastore } from '../../../src/server/datastore/index.js'
import { createApp } from '../../../src/server/http/app.js'
import { AUTH_OFF_FOR_TESTS } from '../../../src/server/http/auth.js'
import { Metrics } from '../../../src/server/metrics.js'
import { tmp } from '../../helpers/peers.js'

const TiB = 2 ** 40

/** The REST app on an ephemeral loopback port; its base URL. */
async function serve(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const ds = await Datastore.open(tmp(t, 'tandem-big-'))
  const app = createApp({ ds, log: pino({ level: 'silent' }), metrics: new Metrics({ processMetrics: false }), advertise: { host: '127.0.0.1', nbdPort: 10809, iscsiPort: 3260 }, auth: AUTH_OFF_FOR_TESTS })
  const server = app.listen(0, '127.0.0.1')
  await new Promise<void>((res) => server.once('listening', res))
  t.teardown(async () => {
    await new Promise((res) => server.close(res))
    await ds.close()
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

const post = (base: string, body: unknown) =>
  fetch(`${base}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

t.test('REST: 100T and 12T disks are created sparse, and health answers meanwhile; past the limit, 400 naming it', async (t) => {
  const base = await serve(t)
  // health polled while the creates run: no answer may wait behind them
  let creating = true
  let slowest = 0
  let answered = 0
  const poll = (async () => {
    while (creating) {
      const t0 = performance.now()
      const r = await fetch(`${base}/api/v1/health`)
      await r.arrayBuffer()
      if (r.status === 200) answered++
      slowest = Math.max(slowest, performance.now() - t0)
    }
  })()
  const t0 = performance.now()
  const [big, mid] = await Promise.all([post(base, { name: 'big', size: '100T' }), post(base, { name: 'mid', size: '12T' })])
  const took = performance.now() - t0
  creating = false
  await poll
  t.equal(big.status, 201, 'the 100T disk is created')
  t.equal(mid.status, 201, 'the 12T disk is created')
  const b = (await big.json()) as { size: number; actualSize: number }
  const m = (await mid.json()) as { size: number; actualSize: number }
  t.equal(b.size, 100 * TiB)
  t.equal(m.size, 12 * TiB)
  t.ok(b.actualSize < 32 << 20, `100T: ${b.actualSize} bytes on disk (qemu-img: 25 MiB)`)
  t.ok(m.actualSize < 8 << 20, `12T: ${m.actualSize} bytes on disk`)
  t.ok(took < 10_000, `both created in ${Math.round(took)} ms`)
  t.ok(answered > 0, `health answered ${answered} times`)
  t.ok(slowest < 1000, `the slowest health answer took ${Math.round(slowest)} ms`)

  const r = await post(base, { name: 'huge', size: '300T' })
  t.equal(r.status, 400)
  const e = (await r.json()) as { error: { code: string; message: string } }
  t.equal(e.error.code, 'InvalidArgument')
  t.match(e.error.message, /holds at most 281474976645120 bytes \(2\^32 - 1 grains of 65536 bytes\)/)
  t.equal((await fetch(`${base}/api/v1/disks/huge`)).status, 404, 'nothing is left behind')
})

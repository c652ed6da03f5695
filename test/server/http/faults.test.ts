import t from 'tap'
import { bearer, startServer } from '../../helpers/server.js'

type Body = { faults?: unknown[]; error?: { code: string; message: string } }
async function api(base: string, method: string, path: string, body?: unknown, token?: string | null): Promise<{ status: number; body: Body; text: string }> {
  const r = await fetch(`${base}${path}`, { method, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...bearer(token) }, body: body === undefined ? undefined : JSON.stringify(body) })
  const text = await r.text()
  return { status: r.status, body: JSON.parse(text) as Body, text }
}

t.test('without --fault-injection /api/v1/faults is refused: 404 JSON, nothing set', async (t) => {
  const s = await startServer(t)
  const base = `http://127.0.0.1:${s.httpPort}`
  for (const [m, b] of [['GET', undefined], ['PUT', { faults: [{ disk: 'd1', mode: 'error' }] }]] as const) {
    const r = await api(base, m, '/api/v1/faults', b, s.apiToken)
    t.equal(r.status, 404, m)
    t.match(r.body.error, { code: 'NotFound', message: /fault injection is off: start tandem serve with --fault-injection/ })
  }
})

t.test('--fault-injection: a disk\'s exports delay, fail and stall as PUT /api/v1/faults says, and recover when lifted; other disks untouched', async (t) => {
  const s = await startServer(t, { faultInjection: true })
  const base = `http://127.0.0.1:${s.httpPort}`
  for (const name of ['d1', 'd2']) t.equal((await api(base, 'POST', '/api/v1/disks', { name, size: '1M' }, s.apiToken)).status, 201)
  const h1 = await s.ds.openExport('d1')
  const h2 = await s.ds.openExport('d2')
  t.teardown(async () => {
    await h1.release()
    await h2.release()
  })
  const d1 = h1.device
  const data = Buffer.alloc(4096, 7)
  await d1.write(0, data)
  const put = (faults: unknown[]) => api(base, 'PUT', '/api/v1/faults', { faults }, s.apiToken)

  t.same((await put([{ disk: 'd1', mode: 'error', op: 'write' }])).body, { faults: [{ disk: 'd1', mode: 'error', ms: 0, op: 'write' }] })
  await t.rejects(d1.write(4096, data), { code: 'IoError', message: /injected error on d1: write at 4096\+4096/ }, 'a write fails')
  t.same(await d1.read(0, 4096), data, 'reads still pass')
  await t.resolves(h2.device.write(0, data), 'd2 is untouched')

  t.equal((await put([{ disk: 'd1', mode: 'delay', ms: 150, op: 'read' }])).status, 200)
  let start = performance.now()
  await d1.read(0, 512)
  t.ok(performance.now() - start >= 140, `a read waits the delay (${Math.round(performance.now() - start)} ms)`)

  t.equal((await put([{ disk: 'd1', mode: 'stall' }])).status, 200)
  let done = false
  const held = d1.write(8192, data).then(() => (done = true))
  await new Promise((r) => setTimeout(r, 200))
  t.notOk(done, 'a write is held while the disk stalls')
  t.same((await api(base, 'GET', '/api/v1/faults')).body.faults, [{ disk: 'd1', mode: 'stall', ms: 0, op: 'any' }])
  start = performance.now()
  t.same((await put([])).body, { faults: [] }, 'lifted')
  await held
  t.ok(done, 'the held write completes once the stall is lifted')
  t.same(await d1.read(8192, 4096), data, 'and landed')
})

t.test('bad fault lists: 400 JSON naming the field, the current set unchanged', async (t) => {
  const s = await startServer(t, { faultInjection: true })
  const base = `http://127.0.0.1:${s.httpPort}`
  const cases: [unknown, RegExp][] = [
    [{}, /"faults" must be an array/],
    [{ faults: [7] }, /"faults\[0\]" must be an object/],
    [{ faults: [{ disk: 'd1', mode: 'melt' }] }, /"faults\[0\].mode" must be "delay", "error" or "stall"/],
    [{ faults: [{ disk: 'd1', mode: 'delay' }] }, /"faults\[0\].ms" must be above 0 for a delay/],
    [{ faults: [{ disk: 'd1', mode: 'delay', ms: 1e9 }] }, /"faults\[0\].ms" must be an integer from 0 to 60000/],
    [{ faults: [{ disk: 'd1', mode: 'error', op: 'trim' }] }, /"faults\[0\].op" must be "read", "write" or "any"/],
    [{ faults: [{ disk: 'd1', mode: 'error', size: 1 }] }, /"faults\[0\].size" is not a known field/],
    [{ faults: [{ disk: 'd1', mode: 'error' }, { disk: 'd1', mode: 'stall' }] }, /"faults\[1\].disk" names 'd1' twice/],
  ]
  for (const [body, re] of cases) {
    const r = await api(base, 'PUT', '/api/v1/faults', body, s.apiToken)
    t.equal(r.status, 400, JSON.stringify(body))
    t.match(r.body.error?.message, re)
    t.notMatch(r.text, /\n\s+at /)
  }
  t.same((await api(base, 'GET', '/api/v1/faults')).body, { faults: [] })
})

import t from 'tap'
import { createServer as createTcpServer, type Socket } from 'node:net'
import { IscsiLockStorage } from '../../src/client/locks/iscsi-storage.js'
import { LockManager } from '../../src/disk-formats/lock-region/index.js'
import { vmsOfHosts } from '../../src/server/host-vms.js'
import { bearer, startServer } from '../helpers/server.js'
import { PRIMARY_VM as PRIMARY, stubHostApi as hostApi } from '../helpers/host-api.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

t.test('vmsOfHosts: each host\'s VMs with their pair side, role and lag; hosts that fail are listed with why', async (t) => {
  const good = await hostApi(t, { host: 'esx-01', vms: [PRIMARY, { name: 'web', state: 'stopped', pid: null, generation: 1, startedAt: '2026-12-02T04:00:00.000Z', ft: null }, { nope: 1 }, 7] })
  const notJson = await hostApi(t, 'hello')
  const noList = await hostApi(t, { vms: 'many' })
  // a host that accepts and never answers
  const sockets: Socket[] = []
  const hung = createTcpServer((s) => sockets.push(s))
  await new Promise<void>((r) => hung.listen(0, '127.0.0.1', r))
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    hung.close()
  })
  const closed = createTcpServer()
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
  const closedPort = (closed.address() as { port: number }).port
  await new Promise((r) => closed.close(r))
  const t0 = Date.now()
  const r = await vmsOfHosts(
    [
      { name: 'esx-01', api: good },
      { name: 'esx-02', api: notJson },
      { name: 'esx-03', api: noList },
      { name: 'esx-04', api: `http://127.0.0.1:${(hung.address() as { port: number }).port}` },
      { name: 'esx-05', api: `http://127.0.0.1:${closedPort}` },
      { name: 'serve', api: null },
    ],
    1500,
  )
  t.ok(Date.now() - t0 < 3000, 'a hung host costs the timeout, not more')
  t.same(r.vms, [
    { host: 'esx-01', name: 'db', state: 'running', pid: 4242, generation: 3, startedAt: '2026-12-02T05:00:00.000Z', ft: { side: 'primary', mode: 'checkpoint', role: 'primary', lagMs: 12.5, peer: 'http://127.0.0.1:7801', logBytesPerSecond: 1024 } },
    { host: 'esx-01', name: 'web', state: 'stopped', pid: null, generation: 1, startedAt: '2026-12-02T04:00:00.000Z', ft: null },
  ], 'what is not a VM is left out; only the listed fields')
  t.same(r.unreachable.map((u) => [u.host, u.error]), [
    ['esx-02', 'the answer is not JSON'],
    ['esx-03', 'the answer has no "vms" list'],
    ['esx-04', 'no answer within 1500 ms'],
    ['esx-05', r.unreachable[3]?.error],
  ])
  t.match(r.unreachable[3].error, /^cannot connect/)
})

t.test('GET /api/v1/vms: the VMs of the live hosts that registered an API', async (t) => {
  const s = await startServer(t)
  const ls = (await (await fetch(`http://127.0.0.1:${s.httpPort}/api/v1/lockspace`)).json()) as { uri: string }
  const storage = await IscsiLockStorage.open(ls.uri, { initiatorName: 'iqn.2026-11.local.tandem:host:esx-01' })
  t.teardown(() => storage.close())
  const esx = new LockManager(storage, 'esx-01')
  await esx.join()
  t.teardown(() => esx.leave().catch(() => undefined))
  const api = await hostApi(t, { host: 'esx-01', vms: [PRIMARY] })
  const put = await fetch(`http://127.0.0.1:${s.httpPort}/api/v1/hosts/esx-01`, { method: 'PUT', headers: { 'content-type': 'application/json', ...bearer(s.apiToken) }, body: JSON.stringify({ api }) })
  t.equal(put.status, 200)
  let body: { vms: { host: string; name: string; ft: { role: string; lagMs: number } | null }[]; unreachable: unknown[] } = { vms: [], unreachable: [] }
  // the server judges the host live once it has seen its heartbeat advance
  for (let i = 0; i < 60 && body.vms.length === 0; i++) {
    if (i) await sleep(100)
    const res = await fetch(`http://127.0.0.1:${s.httpPort}/api/v1/vms`)
    t.equal(res.status, 200)
    body = (await res.json()) as typeof body
  }
  t.match(body, { vms: [{ host: 'esx-01', name: 'db', ft: { role: 'primary', lagMs: 12.5 } }], unreachable: [] })
})

import t from 'tap'
import { IscsiLockStorage } from '../../src/client/locks/iscsi-storage.js'
import { LockManager } from '../../src/disk-formats/lock-region/index.js'
import { bearer, startServer } from '../helpers/server.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
type Host = { name: string; heartbeat: string; api: string | null; vms: string[]; alive: boolean | null }
const req = async (port: number, path: string, init: RequestInit & { token?: string | null } = {}) => {
  const r = await fetch(`http://127.0.0.1:${port}${path}`, { ...init, headers: { ...(init.body ? { 'content-type': 'application/json' } : {}), ...bearer(init.token) } })
  return { status: r.status, body: (await r.json()) as Record<string, unknown> & { hosts?: Host[]; error?: { code: string; message: string } } }
}

t.test('GET /api/v1/hosts: each host of the lockspace, its heartbeat, the API it registered, the VMs whose locks it holds', async (t) => {
  const s = await startServer(t)
  const ls = await req(s.httpPort, '/api/v1/lockspace')
  t.equal(ls.status, 200)
  t.equal(ls.body.uri, `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:lockspace/0`, 'where hosts join the lockspace')
  const storage = await IscsiLockStorage.open(ls.body.uri as string, { initiatorName: 'iqn.2026-11.local.tandem:host:esx-01' })
  t.teardown(() => storage.close())
  const esx = new LockManager(storage, 'esx-01')
  await esx.join()
  await esx.acquire('vm/web')
  await esx.acquire('not-a-vm')
  const reg = await req(s.httpPort, '/api/v1/hosts/esx-01', { method: 'PUT', token: s.apiToken, body: JSON.stringify({ api: 'http://127.0.0.1:7800/' }) })
  t.equal(reg.status, 200)
  t.equal(reg.body.api, 'http://127.0.0.1:7800')
  let esxView: Host | undefined
  for (let i = 0; i < 50 && esxView?.heartbeat !== 'live'; i++) {
    await sleep(100)
    esxView = (await req(s.httpPort, '/api/v1/hosts')).body.hosts!.find((h) => h.name === 'esx-01')
  }
  t.match(esxView, { name: 'esx-01', heartbeat: 'live', alive: true, api: 'http://127.0.0.1:7800', vms: ['web'] })
  const server = (await req(s.httpPort, '/api/v1/hosts')).body.hosts!.find((h) => h.name === s.locks.hostName)
  t.match(server, { heartbeat: 'live', api: null, vms: [] }, 'the server itself: no API registered, no VM')
  t.match((await req(s.httpPort, '/api/v1/hosts/esx-01')).body, { name: 'esx-01', vms: ['web'] })
  t.equal((await req(s.httpPort, '/api/v1/hosts/nobody')).status, 404)
  for (const bad of [{}, { api: 'ftp://x' }, { api: 'http://a b' }, { api: 7 }, { api: `http://x/${'a'.repeat(300)}` }]) {
    const r = await req(s.httpPort, '/api/v1/hosts/esx-01', { method: 'PUT', token: s.apiToken, body: JSON.stringify(bad) })
    t.equal(r.status, 400, JSON.stringify(bad))
    t.equal(r.body.error?.code, 'InvalidArgument')
  }
  const long = await req(s.httpPort, `/api/v1/hosts/${'h'.repeat(65)}`, { method: 'PUT', token: s.apiToken, body: JSON.stringify({ api: 'http://x:1' }) })
  t.equal(long.status, 400, 'a name longer than a slot\'s is refused')
  // the host hangs: its heartbeat expires; the VM's lock is still its (it may not be taken before the lease is over)
  esx.halt()
  for (let i = 0; i < 60 && esxView?.heartbeat !== 'expired'; i++) {
    await sleep(100)
    esxView = (await req(s.httpPort, '/api/v1/hosts')).body.hosts!.find((h) => h.name === 'esx-01')
  }
  t.match(esxView, { heartbeat: 'expired', alive: false, vms: ['web'] })
})

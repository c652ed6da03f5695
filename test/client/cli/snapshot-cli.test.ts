import t from 'tap'
import { createServer, type AddressInfo } from 'node:net'
import { CLI, pattern, run } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { drawTree } from '../../../src/client/cli/snapshot-tree-text.js'
import { TandemApi } from '../../../src/client/api/tandem.js'

const MiB = 1 << 20
/** `tandem snapshot …` against `server` (the token found by the CLI itself, in the server's datastore). */
const snap = (server: string, ...args: string[]) => run(process.execPath, [CLI, 'snapshot', ...args, '--server', server], { timeout: 60_000 })

t.test('every tandem snapshot verb against a real server, with bad input', async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  await s.ds.createDisk('d', MiB)
  const w = await s.ds.openExport('d')
  await w.device.write(0, pattern(4096, 1))
  await w.release()

  const c1 = await snap(url, 'create', 'd', 'base', '--description', 'fresh install\nof the OS', '--json')
  t.equal(c1.status, 0, c1.stderr)
  const base = JSON.parse(c1.stdout)
  t.match(base, { name: 'base', parent: null, description: 'fresh install\nof the OS', isCurrent: true, state: 'committed' })
  t.ok(Math.abs(Date.parse(base.createdAt) - Date.now()) < 120_000, 'created now')
  t.match((await snap(url, 'create', 'd', 'a')).stdout, /^snapshot 'a' of 'd' created \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(parent 'base'\)\n$/)

  // revert to base, then a sibling b: the tree forks
  const rv = await snap(url, 'revert', 'd', 'base')
  t.equal(rv.stdout, "'d' reverted to 'base'\n", rv.stderr)
  t.equal((await snap(url, 'create', 'd', 'b', '-d', 'second branch')).status, 0)
  const tree = await snap(url, 'tree', 'd')
  t.equal(tree.status, 0, tree.stderr)
  const lines = tree.stdout.trimEnd().split('\n')
  t.equal(lines[0], 'd')
  t.match(lines[1], /^└─ base  \S+ \S+ UTC  fresh install ⏎ of the OS$/)
  t.match(lines[2], /^   ├─ a  \S+ \S+ UTC$/)
  t.match(lines[3], /^   └─ b \*  \S+ \S+ UTC  second branch$/)
  t.equal(lines[4], '      └─ ▶ You are here', 'the current position, under the current snapshot')
  t.equal(lines.length, 5)

  const list = await snap(url, 'list', 'd')
  t.match(list.stdout, /^NAME +PARENT +CREATED +CURRENT +DESCRIPTION\nbase +- +\S+ \S+ UTC +fresh install of the OS\na +base +\S+ \S+ UTC +\nb +base +\S+ \S+ UTC +yes +second branch\n$/)
  const api = new TandemApi(url) // the typed client the CLI uses, in this process
  const lj = await api.snapshots('d')
  t.equal(lj.current, 'b')
  t.same(lj.snapshots.map((x) => x.name), ['base', 'a', 'b'])

  const show = await snap(url, 'show', 'd', 'a')
  t.match(show.stdout, /^disk: d\nsnapshot: a\nparent: base\ncreated: \S+ \S+ UTC\ndescription: -\n$/)
  t.same(await api.snapshot('d', 'b'), { name: 'b', parent: 'base', createdAt: lj.snapshots[2].createdAt, description: 'second branch', isCurrent: true })
  t.equal((await s.ds.readRecord('d')).snapshots[0].description, 'fresh install\nof the OS', 'kept in disk.json')

  // a writer connected: revert refused (409, naming the connections) unless --force
  const nbd = await TestNbdClient.open(s.nbdPort, 'd')
  t.teardown(() => nbd.destroy())
  t.equal((await nbd.pwrite(0, pattern(4096, 2))).errno, 0)
  const busy = await snap(url, 'revert', 'd', 'a')
  t.equal(busy.status, 1)
  const who = `nbd 127.0.0.1:${nbd.sock.localPort}`
  t.equal(busy.stderr, `tandem: cannot revert 'd' to 'a': 1 client(s) of 'd' (${who}) (force reverts under them)\n`, 'the writer named by its address')
  const rest = await fetch(`${url}/api/v1/disks/d/snapshots/a/revert`, { method: 'POST', headers: { authorization: `Bearer ${s.apiToken}` } })
  t.equal(rest.status, 409)
  t.same(await rest.json(), { error: { code: 'Busy', message: `cannot revert 'd' to 'a': 1 client(s) of 'd' (${who}) (force reverts under them)`, connections: { d: 1 }, clients: { d: [who] } } })
  t.ok((await nbd.pread(0, 4096)).data.equals(pattern(4096, 2)), 'the refused revert changed nothing under the writer')
  const del = await fetch(`${url}/api/v1/disks/d`, { method: 'DELETE', headers: { authorization: `Bearer ${s.apiToken}` } })
  t.same(await del.json(), { error: { code: 'Busy', message: `disk 'd' is in use by 1 client(s) of 'd' (${who})`, connections: { d: 1 }, clients: { d: [who] } } }, 'delete of a disk in use says who uses it')
  const forced = await snap(url, 'revert', 'd', 'a', '--force')
  t.equal(forced.status, 0, forced.stderr)
  t.ok((await nbd.pread(0, 4096)).data.equals(pattern(4096, 1)), 'forced: the writer reads the reverted content')
  nbd.disconnect()

  // delete
  t.equal((await snap(url, 'delete', 'd', 'b')).stdout, "snapshot 'b' of 'd' deleted\n")
  t.same((await api.snapshots('d')).snapshots.map((x) => x.name), ['base', 'a'])

  // bad input: one line, exit 1, nothing changed
  const bad: [string[], RegExp][] = [
    [['create', 'd', 'bad name'], /^tandem: invalid snapshot name "bad name"/],
    [['create', 'd', 'long', '-d', 'x'.repeat(1025)], /^tandem: a snapshot description is text of at most 1024 characters/],
    [['show', 'd', 'nope'], /^tandem: disk 'd' has no snapshot 'nope'\n$/],
  ]
  for (const [args, msg] of bad) {
    const r = await snap(url, ...args)
    t.equal(r.status, 1, args.join(' '))
    t.match(r.stderr, msg, args.join(' '))
  }
  // the same errors through the typed client (each verb's, without a process each)
  const code = (c: string, status: number, message: RegExp) => ({ code: c, status, message })
  await t.rejects(api.createSnapshot('d', 'a'), code('Exists', 409, /already has a snapshot 'a'/))
  await t.rejects(api.createSnapshot('nodisk', 'x'), code('NotFound', 404, /no disk named 'nodisk'/))
  await t.rejects(api.revert('d', 'nope'), code('NotFound', 404, /no snapshot 'nope'/))
  await t.rejects(api.deleteSnapshot('d', 'nope'), code('NotFound', 404, /no snapshot 'nope'/))
  await t.rejects(api.snapshots('nodisk'), code('NotFound', 404, /no disk named 'nodisk'/))
  await t.rejects(api.snapshot('d', '.hidden'), code('InvalidArgument', 400, /invalid snapshot name/))
  const rawBad = await fetch(`${url}/api/v1/disks/d/snapshots`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${s.apiToken}` }, body: JSON.stringify({ name: 'x', description: 7 }) })
  t.equal(rawBad.status, 400)
  const closed = createServer()
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
  const port = (closed.address() as AddressInfo).port
  await new Promise((r) => closed.close(r))
  const noServer = await snap(`http://127.0.0.1:${port}`, 'list', 'd')
  t.equal(noServer.stderr, `tandem: could not reach http://127.0.0.1:${port}: ECONNREFUSED\n`)
  const missing = await run(process.execPath, [CLI, 'snapshot', 'create', 'd'])
  t.equal(missing.status, 1)
  t.match(missing.stderr, /missing required argument 'name'/)
  t.same((await s.ds.readRecord('d')).snapshots.map((x) => x.name), ['base', 'a'], 'no bad request changed the tree')
})

t.test('drawTree: no snapshots, a current state at the top, a missing parent', async (t) => {
  t.equal(drawTree('d', null, []), 'd\n└─ ▶ You are here\n')
  const at = '2026-12-02T05:00:00.000Z'
  const snaps = [
    { name: 'x', parent: null, createdAt: at, description: '', isCurrent: false },
    { name: 'y', parent: 'gone', createdAt: at, description: '', isCurrent: false },
  ]
  t.equal(drawTree('d', null, snaps), 'd\n├─ x  2026-12-02 05:00:00 UTC\n├─ y  2026-12-02 05:00:00 UTC\n└─ ▶ You are here\n')
})

import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, runOk as sh, run as shStatus, tmp, pattern } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'

t.test('nbdinfo --list, --json and --map', needs('nbdinfo'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('alpha', 8 << 20)
  await s.ds.createDisk('beta', 4 << 20)
  const list = await sh('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${s.nbdPort}`])
  const names = JSON.parse(list).exports.map((e: { 'export-name': string }) => e['export-name'])
  t.same(names, ['alpha', 'beta'])
  const info = JSON.parse(await sh('nbdinfo', ['--json', s.uri('alpha')])).exports[0]
  t.equal(info['export-size'], 8 << 20)
  t.equal(info.is_read_only, false)
  t.equal(info.can_multi_conn, true)
  t.same(info.contexts, ['base:allocation'])
  const c = await TestNbdClient.open(s.nbdPort, 'alpha')
  t.equal((await c.pwrite(1 << 20, pattern(65536, 1))).errno, 0)
  c.disconnect()
  const map = await sh('nbdinfo', ['--map', '--json', s.uri('alpha')])
  t.same(JSON.parse(map).map((e: { offset: number; length: number; type: number }) => [e.offset, e.length, e.type]), [
    [0, 1 << 20, 3],
    [1 << 20, 65536, 0],
    [(1 << 20) + 65536, (8 << 20) - (1 << 20) - 65536, 3],
  ])
  const r = await shStatus('nbdinfo', [s.uri('nope')])
  t.not(r.status, 0)
  t.match(r.stderr, /opt_go.*No such|unknown/i, 'the client is told the export does not exist')
})

t.test('nbdcopy in and out; qemu-io and qemu-img over nbd://', needs('nbdcopy', 'qemu-io', 'qemu-img'), async (t) => {
  const s = await startServer(t)
  const d = tmp(t)
  await s.ds.createDisk('vm', 32 << 20)
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(32 << 20)
  pattern(10 << 20, 2).copy(data, 3 << 20)
  writeFileSync(src, data)
  await sh('nbdcopy', [src, s.uri('vm')])
  const back = join(d, 'back.raw')
  await sh('nbdcopy', [s.uri('vm'), back])
  t.ok(readFileSync(back).equals(data), 'nbdcopy round trip')
  await sh('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 20M 1M', '-c', 'write -z 3M 64k', s.uri('vm')])
  data.fill(0xab, 20 << 20, 21 << 20)
  data.fill(0, 3 << 20, (3 << 20) + 65536)
  const r = await shStatus('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0xab 20M 1M', s.uri('vm')])
  t.match(r.stdout, /read 1048576\/1048576/)
  const q = join(d, 'q.raw')
  await sh('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', s.uri('vm'), q])
  t.ok(readFileSync(q).equals(data), 'qemu-img convert from nbd:// reads what was written')
  t.equal((await shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', q, s.uri('vm')])).status, 0)
  // the datastore's files are valid VMDKs qemu-img can check (-U: the server holds them open, with
  // qemu's image locks, so without it qemu-img is refused as against a running qemu)
  await s.ds.openExport('vm').then((h) => h.device.flush().then(() => h.release()))
  t.not((await shStatus('qemu-img', ['check', join(s.dir, 'vm', 'l-0000.vmdk')])).status, 0, 'refused without -U')
  t.equal((await shStatus('qemu-img', ['check', '-U', join(s.dir, 'vm', 'l-0000.vmdk')])).status, 0)
})

t.test('snapshots: create, revert, delete proven by content read through NBD', needs('qemu-io'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 4 << 20)
  // One client stays connected to the disk through every snapshot operation.
  const live = await TestNbdClient.open(s.nbdPort, 'd')
  const A = pattern(1 << 20, 10)
  const B = pattern(1 << 20, 11)
  const C = pattern(1 << 20, 12)
  t.equal((await live.pwrite(0, A)).errno, 0)
  await s.ds.createSnapshot('d', 's1') // s1: A
  t.equal((await live.pwrite(0, B)).errno, 0) // current: B on s1
  t.ok((await live.pread(0, 1 << 20)).data.equals(B), 'the connected client writes into the new delta')
  const s1 = await TestNbdClient.open(s.nbdPort, 'd@s1')
  t.ok((await s1.pread(0, 1 << 20)).data.equals(A), 'd@s1 shows the snapshot content')
  t.equal((await s1.pwrite(0, B)).errno, 1, 'd@s1 is read-only (EPERM)')
  t.ok(s1.flags & 2, 'd@s1 advertises NBD_FLAG_READ_ONLY')
  s1.disconnect()
  await s.ds.createSnapshot('d', 's2') // s2: B, child of s1
  await s.ds.revertSnapshot('d', 's1', { force: true })
  t.ok((await live.pread(0, 1 << 20)).data.equals(A), 'after revert the connected client reads s1 content')
  t.equal((await live.pwrite(1 << 20, C)).errno, 0) // branch: A + C, on s1
  await s.ds.createSnapshot('d', 's3') // s3 on s1 (a branch beside s2)
  const tree = await s.ds.describe('d')
  t.same(tree.snapshots.map((x) => [x.name, x.parent]), [['s1', null], ['s2', 's1'], ['s3', 's1']], 'a tree: s2 and s3 both on s1')
  const read = async (e: string, off: number) => {
    const c = await TestNbdClient.open(s.nbdPort, e)
    const r = (await c.pread(off, 1 << 20)).data
    c.disconnect()
    await c.closed // the server closes the socket once it has released the export (a delete now is not Busy)
    return r
  }
  // delete s1: its layer is consolidated into s2, s3 and nothing changes content
  await s.ds.deleteSnapshot('d', 's1')
  t.ok((await read('d@s2', 0)).equals(B), 's2 unchanged after deleting s1')
  t.ok((await read('d@s3', 0)).equals(A) && (await read('d@s3', 1 << 20)).equals(C), 's3 unchanged')
  t.ok((await live.pread(0, 1 << 20)).data.equals(A) && (await live.pread(1 << 20, 1 << 20)).data.equals(C), 'the current state unchanged')
  t.same((await s.ds.describe('d')).snapshots.map((x) => [x.name, x.parent]), [['s2', null], ['s3', null]])
  await s.ds.deleteSnapshot('d', 's3') // the current state's parent
  t.ok((await live.pread(0, 1 << 20)).data.equals(A), 'current state unchanged after deleting its parent snapshot')
  // qemu reads the same through the live export
  const q = await shStatus('qemu-io', ['-f', 'raw', '-r', '-c', `read -v 0 16`, s.uri('d')])
  t.match(q.stdout, new RegExp(A.subarray(0, 4).toString('hex').replace(/(..)/g, '$1 ').trim().slice(0, 11)))
  // a snapshot export that is open blocks deleting snapshots
  const hold = await TestNbdClient.open(s.nbdPort, 'd@s2')
  await t.rejects(s.ds.deleteSnapshot('d', 's2'), { code: 'Busy' })
  hold.disconnect()
  await hold.closed
  await new Promise((r) => setImmediate(r))
  live.disconnect()
  await live.closed
})

t.test('two connections to one export see each other (multi-conn)', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('m', 1 << 20)
  const a = await TestNbdClient.open(s.nbdPort, 'm')
  const b = await TestNbdClient.open(s.nbdPort, 'm')
  const data = pattern(4096, 3)
  t.equal((await a.pwrite(8192, data)).errno, 0)
  t.equal((await a.flush()).errno, 0)
  t.ok((await b.pread(8192, 4096)).data.equals(data))
  a.disconnect()
  b.disconnect()
})

import t from 'tap'
import { join } from 'node:path'
import { IscsiLockStorage } from '../../../src/client/locks/iscsi-storage.js'
import { IscsiInitiator } from '../../../src/client/transport/iscsi/index.js'
import { encodeRecord, LockManager, MODE_FREE, recordOffset, regionSize } from '../../../src/disk-formats/lock-region/index.js'
import { CLI, ROOT, run, sh, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { needsTgtd, startTgtd } from '../../helpers/tgtd.js'

const LOCKSPACE_IQN = 'iqn.2026-11.local.tandem:lockspace'
const RACER = join(ROOT, 'dist', 'scripts', 'locks', 'racer.js')
const tandem = (...args: string[]) => run(process.execPath, [CLI, ...args], { timeout: 30_000 })

t.test('the served lockspace is a LUN: a host over iSCSI and a host on the file exclude each other', async (t) => {
  const s = await startServer(t)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/${LOCKSPACE_IQN}/0`
  const st = await IscsiLockStorage.open(uri)
  t.teardown(() => st.close())
  t.equal(st.size, regionSize({ maxHosts: 64, maxLocks: 256 }), 'the region the header describes')
  const remote = new LockManager(st, 'remote')
  await remote.join()
  t.teardown(() => remote.leave())
  const g1 = (await remote.acquire('vm1')).generation
  const local = await tandem('lock', 'run', 'vm1', '--lockspace', s.locks.path, '--host', 'local', '--', 'true')
  t.not(local.status, 0, 'a host on the file cannot take it')
  t.match(local.stderr, /held by host 'remote'/)
  t.equal((await s.locks.view()).locks.find((l) => l.name === 'vm1')?.owner, 'remote', 'the server sees the remote host\'s lock')
  await remote.release('vm1')
  const ran = await tandem('lock', 'run', 'vm1', '--lockspace', s.locks.path, '--host', 'local', '--', 'sh', '-c', 'echo $TANDEM_LOCK_GENERATION')
  t.equal(ran.status, 0, ran.stderr)
  const g2 = Number(ran.stdout.trim())
  t.ok(g2 > g1, `then it can (generation ${g2} after ${g1})`)
  t.ok((await remote.acquire('vm1')).generation > g2, 'and the remote host after it')
  const ls = await tandem('lock', 'ls', '--lockspace', uri, '--json')
  t.equal(ls.status, 0, ls.stderr)
  const view = JSON.parse(ls.stdout) as { hosts: { name: string; alive: boolean }[]; locks: { name: string; owner: string }[] }
  t.ok(view.hosts.some((h) => h.name === 'remote' && h.alive), 'lock ls over iSCSI sees the live remote host')
  t.equal(view.locks.find((l) => l.name === 'vm1')?.owner, 'remote')
  const init = await tandem('lock', 'init', '--lockspace', uri)
  t.not(init.status, 0, 'lock init does not overwrite the served lockspace')
  t.match(init.stderr, /not empty/)
})

t.test('one atomicity domain: COMPARE AND WRITE over iSCSI and compare-and-write on the file never both win', async (t) => {
  const s = await startServer(t)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/${LOCKSPACE_IQN}/0`
  const index = 255 // the last record: no one else's
  const st = await IscsiLockStorage.open(uri)
  await st.write(recordOffset({ maxHosts: 64 }, index), encodeRecord({ name: 'race', mode: MODE_FREE, managed: false, generation: 0, owner: 0, ownerGeneration: 0, shared: new Set() }))
  const racers = [s.locks.path, s.locks.path, uri, uri].map((spec) => run(process.execPath, [RACER, spec, String(index), '3000'], { timeout: 60_000 }))
  const results = await Promise.all(racers)
  const counts = results.map((r) => {
    t.equal(r.status, 0, r.stderr)
    return JSON.parse(r.stdout) as { wins: number; tries: number }
  })
  const wins = counts.reduce((a, c) => a + c.wins, 0)
  const tries = counts.reduce((a, c) => a + c.tries, 0)
  t.comment(`racers (file, file, iSCSI, iSCSI): ${JSON.stringify(counts)}`)
  t.ok(counts.every((c) => c.wins > 0), 'every racer, on the file and over iSCSI, won some rounds')
  t.ok(tries > wins, 'and lost some: they did race')
  const rec = await st.read(recordOffset({ maxHosts: 64 }, index), 512)
  await st.close()
  const { decodeRecord } = await import('../../../src/disk-formats/lock-region/index.js')
  t.equal(decodeRecord(rec, index, 'ls').generation, wins, 'every win is one increment: no round had two winners')
})

t.test('lock init and run on any LU with COMPARE AND WRITE (a disk of Tandem\'s target)', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('san', 1 << 20)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:san/0`
  const init = await tandem('lock', 'init', '--lockspace', uri, '--hosts', '4', '--locks', '8')
  t.equal(init.status, 0, init.stderr)
  t.match(init.stdout, /4 hosts, 8 locks/)
  const st = await IscsiLockStorage.open(uri)
  t.equal(st.size, regionSize({ maxHosts: 4, maxLocks: 8 }), 'the lockspace is the start of the LU')
  await st.close()
  const ran = await tandem('lock', 'run', 'x', '--lockspace', uri, '--host', 'h', '--', 'sh', '-c', 'echo $TANDEM_LOCK_GENERATION')
  t.equal(ran.status, 0, ran.stderr)
  t.equal(ran.stdout.trim(), '1')
})

t.test('a unit attention does not fail a COMPARE AND WRITE: it is sent again', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 1 << 20)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:d/0`
  const a = await IscsiInitiator.connect(uri, { initiatorName: 'iqn.2026-11.test:a' })
  const b = await IscsiInitiator.connect(uri, { initiatorName: 'iqn.2026-11.test:b' })
  t.teardown(() => Promise.all([a.close(), b.close()]))
  const prOut = (c: IscsiInitiator, sa: number, key: bigint, saKey: bigint) => {
    const cdb = Buffer.alloc(10)
    cdb[0] = 0x5f // PERSISTENT RESERVE OUT
    cdb[1] = sa
    cdb.writeUInt32BE(24, 5)
    const p = Buffer.alloc(24)
    p.writeBigUInt64BE(key, 0)
    p.writeBigUInt64BE(saKey, 8)
    return c.command(cdb, p)
  }
  await prOut(a, 0x06, 0n, 1n) // REGISTER AND IGNORE EXISTING KEY
  await prOut(b, 0x06, 0n, 2n)
  await prOut(a, 0x03, 1n, 0n) // CLEAR: b gets RESERVATIONS PREEMPTED
  t.equal(await b.compareAndWrite(0, Buffer.alloc(512), Buffer.alloc(512, 7)), true, 'written after the unit attention')
  t.ok((await a.read(0, 512)).equals(Buffer.alloc(512, 7)))
})

t.test('tgtd (no COMPARE AND WRITE) is refused with the reason', needsTgtd(), async (t) => {
  const file = join(tmp(t, 'tandem-tgt-'), 'lun.raw')
  sh('truncate', ['-s', '1M', file])
  const uri = await startTgtd(t, file)
  const why = /the target has no COMPARE AND WRITE \(SBC-3 ATS\); Tandem's lockspace needs it/
  await t.rejects(IscsiLockStorage.open(uri), { code: 'Unsupported', message: why })
  for (const args of [
    ['init', '--lockspace', uri],
    ['ls', '--lockspace', uri],
    ['run', 'x', '--lockspace', uri, '--host', 'h', '--', 'true'],
  ]) {
    const r = await tandem('lock', ...args)
    t.not(r.status, 0, `lock ${args[0]} fails`)
    t.match(r.stderr, why, `lock ${args[0]} says why`)
    t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
  }
})

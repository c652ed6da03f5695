import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { open } from 'node:fs/promises'
import { needs, run, runOk, tmp, pattern } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

t.test('libiscsi tools and qemu-img over iscsi:// see the bytes the NBD export shows', needs('iscsi-ls', 'iscsi-inq', 'iscsi-readcapacity16', 'qemu-img', 'nbdcopy'), async (t) => {
  const s = await startServer(t)
  const d = tmp(t)
  await s.ds.createDisk('vm', 16 << 20)
  const portal = `iscsi://127.0.0.1:${s.iscsiPort}`
  const lun = `${portal}/iqn.2026-11.local.tandem:vm/0`
  t.match(await runOk('iscsi-ls', ['-s', portal]), /Target:iqn\.2026-11\.local\.tandem:vm Portal:127\.0\.0\.1:\d+,1/)
  t.match(await runOk('iscsi-inq', [lun]), /Vendor:TANDEM/)
  t.match(await runOk('iscsi-readcapacity16', [lun]), /Total size:16777216/)
  // write through iSCSI, read through NBD
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(16 << 20)
  pattern(5 << 20, 3).copy(data, 1 << 20)
  writeFileSync(src, data)
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, lun])
  const viaNbd = join(d, 'nbd.raw')
  await runOk('nbdcopy', [s.uri('vm'), viaNbd])
  t.ok(readFileSync(viaNbd).equals(data), 'iSCSI writes read back through NBD')
  // write through NBD, read through iSCSI
  const other = Buffer.from(data)
  pattern(1 << 20, 4).copy(other, 10 << 20)
  writeFileSync(src, other)
  await runOk('nbdcopy', [src, s.uri('vm')])
  const viaIscsi = join(d, 'iscsi.raw')
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', lun, viaIscsi])
  t.ok(readFileSync(viaIscsi).equals(other), 'NBD writes read back through iSCSI')
  // /metrics counts the iSCSI traffic under the disk's name, as it does NBD's
  const m = await (await fetch(`http://127.0.0.1:${s.httpPort}/metrics`)).text()
  const value = (series: string) => Number(new RegExp(`^${series.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(m)?.[1] ?? 0)
  t.ok(value('tandem_export_bytes_total{export="vm",protocol="iscsi",direction="write"}') >= 5 << 20, 'bytes written: at least the 5 MiB of data')
  t.ok(value('tandem_export_bytes_total{export="vm",protocol="iscsi",direction="read"}') >= 5 << 20, 'bytes read: at least the 5 MiB of data')
  t.ok(value('tandem_export_operations_total{export="vm",protocol="iscsi",op="write"}') > 0, 'write commands counted')
  t.ok(value('tandem_export_operations_total{export="vm",protocol="iscsi",op="read"}') > 0, 'read commands counted')
  t.ok(value('tandem_export_request_seconds_count{protocol="iscsi",op="read"}') > 0, 'read latency observed')
})

t.test('LUN masking: an initiator not on the access list neither sees nor logs in', needs('iscsi-ls', 'iscsi-inq'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('secret', 1 << 20)
  await s.ds.createDisk('open', 1 << 20)
  await s.ds.setAccess('secret', { initiators: ['iqn.2026-11.local.host:allowed'] })
  const portal = `iscsi://127.0.0.1:${s.iscsiPort}`
  const seen = (await runOk('iscsi-ls', ['-i', 'iqn.2026-11.local.host:other', '-s', portal])).trim().split('\n').map((l) => l.split(' ')[0])
  t.same(seen.filter((l) => l.startsWith('Target:')).sort(), ['Target:iqn.2026-11.local.tandem:lockspace', 'Target:iqn.2026-11.local.tandem:open'], 'discovery hides the masked disk (and lists the lockspace)')
  const allowed = await runOk('iscsi-ls', ['-i', 'iqn.2026-11.local.host:allowed', '-s', portal])
  t.match(allowed, /tandem:secret/, 'the listed initiator sees it')
  const refused = await run('iscsi-inq', ['-i', 'iqn.2026-11.local.host:other', `${portal}/iqn.2026-11.local.tandem:secret/0`])
  t.not(refused.status, 0, 'login refused')
  const ok = await run('iscsi-inq', ['-i', 'iqn.2026-11.local.host:allowed', `${portal}/iqn.2026-11.local.tandem:secret/0`])
  t.equal(ok.status, 0, ok.stderr)
})

t.test('CHAP and mutual CHAP with libiscsi', needs('iscsi-inq'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('c', 1 << 20)
  await s.ds.setAccess('c', { initiators: [], chap: { user: 'alice', secret: 'alice-secret-123', mutualUser: 'tandem', mutualSecret: 'target-secret-456' } })
  const at = (auth: string, q = '') => `iscsi://${auth}127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:c/0${q}`
  const none = await run('iscsi-inq', [at('')])
  t.not(none.status, 0)
  t.match(none.stderr + none.stdout, /Authentication failure/, 'no credentials: authentication failure')
  const wrong = await run('iscsi-inq', [at('alice%wrong-secret-000@')])
  t.match(wrong.stderr + wrong.stdout, /Authentication failure/, 'wrong secret refused')
  const ok = await run('iscsi-inq', [at('alice%alice-secret-123@')])
  t.match(ok.stdout, /Vendor:TANDEM/, 'one-way CHAP')
  const mutual = await run('iscsi-inq', [at('alice%alice-secret-123@', '?target_user=tandem&target_password=target-secret-456')])
  t.match(mutual.stdout, /Vendor:TANDEM/, 'mutual CHAP: the target proves itself too')
  const impostor = await run('iscsi-inq', [at('alice%alice-secret-123@', '?target_user=tandem&target_password=bad-target-pw0')])
  t.not(impostor.status, 0, 'the initiator refuses a target that cannot answer its challenge')
})

t.test('CRC32C header digests, as libiscsi negotiates them', needs('iscsi-inq', 'iscsi-test-cu'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('dg', 4 << 20)
  const lun = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:dg/0?header_digest=crc32c`
  t.match((await run('iscsi-inq', [lun])).stdout, /Vendor:TANDEM/)
  for (const suite of ['SCSI.Write10', 'SCSI.Read10']) {
    const r = await run('iscsi-test-cu', ['--dataloss', '-i', 'iqn.2026-11.test:one', '-I', 'iqn.2026-11.test:two', '-t', suite, lun])
    const m = /^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(r.stdout)
    t.ok(m && Number(m[3]) > 0 && Number(m[4]) === 0, `${suite} over a digest-protected session: ${m?.[0]?.trim()}`)
  }
})

t.test('a disk that cannot be opened: login ends with Target Error, other targets carry on', needs('iscsi-inq'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('broken', 1 << 20)
  await s.ds.createDisk('fine', 1 << 20)
  const f = join(s.dir, 'broken', 'l-0000.vmdk')
  const fh = await open(f, 'r+')
  await fh.write(Buffer.alloc(512), 0, 512, 0) // no KDMV magic, no descriptor
  await fh.close()
  const bad = await run('iscsi-inq', [`iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:broken/0`])
  t.not(bad.status, 0)
  t.match(bad.stderr + bad.stdout, /Target error/, `libiscsi reports the login status: ${bad.stderr.trim()}`)
  const ok = await run('iscsi-inq', [`iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:fine/0`])
  t.equal(ok.status, 0, 'another target still logs in')
})

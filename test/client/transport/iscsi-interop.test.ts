import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { IscsiInitiator } from '../../../src/client/transport/iscsi/index.js'
import { needs, pattern, sh, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { needsTgtd, startTgtd } from '../../helpers/tgtd.js'

const run = promisify(execFile)
const SIZE = 8 << 20

/**
 * Byte-identical both ways with libiscsi (qemu-img's iscsi:// driver is libiscsi; iscsi-inq and
 * iscsi-readcapacity16 are its own tools), on one LU: what the Tandem initiator writes, libiscsi
 * reads back; what libiscsi writes, the Tandem initiator reads back. Each image is random bytes
 * with a zero stretch (qemu-img writes zeroes its own way: WRITE SAME or skipping).
 */
async function bothWays(t: Test, lu: string) {
  const d = tmp(t, 'tandem-interop-')
  const inq = (await run('iscsi-inq', [lu])).stdout
  t.match(inq, /Peripheral Device Type|device type|Vendor/i, 'iscsi-inq reads the LU\'s INQUIRY')
  const cap = (await run('iscsi-readcapacity16', ['-s', lu])).stdout
  const ini = await IscsiInitiator.connect(lu)
  t.equal(Number(cap.trim()), ini.size, 'iscsi-readcapacity16 and the initiator agree on the size')
  // Tandem writes, libiscsi reads
  const ours = pattern(SIZE, 41)
  ours.fill(0, 2 << 20, 3 << 20)
  await ini.write(0, ours.subarray(0, 5 << 20))
  await Promise.all([ini.write(5 << 20, ours.subarray(5 << 20, 6 << 20)), ini.write(6 << 20, ours.subarray(6 << 20), { fua: true })])
  await ini.flush()
  const copy = join(d, 'copy.raw')
  await run('qemu-img', ['convert', '-O', 'raw', lu, copy])
  t.ok(readFileSync(copy).equals(ours), 'libiscsi reads back every byte the Tandem initiator wrote')
  // libiscsi writes, Tandem reads
  const theirs = pattern(SIZE, 42)
  theirs.fill(0, 4 << 20, (4 << 20) + 65536)
  const src = join(d, 'src.raw')
  writeFileSync(src, theirs)
  await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, lu])
  t.ok((await ini.read(0, SIZE)).equals(theirs), 'the Tandem initiator reads back every byte libiscsi wrote')
  await ini.close()
  return theirs
}

t.test('against Tandem\'s target: byte-identical both ways with libiscsi', needs('qemu-img', 'iscsi-inq', 'iscsi-readcapacity16'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', SIZE)
  await bothWays(t, `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:d/0`)
})

t.test('against tgtd: byte-identical both ways with libiscsi', { ...needs('qemu-img', 'iscsi-inq', 'iscsi-readcapacity16'), ...needsTgtd() }, async (t) => {
  const file = join(tmp(t, 'tandem-tgt-'), 'lun.raw')
  sh('truncate', ['-s', String(SIZE), file])
  const theirs = await bothWays(t, await startTgtd(t, file))
  t.ok(readFileSync(file).equals(theirs), 'tgtd\'s backing file holds the same bytes')
})

import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, run, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

/**
 * libiscsi's conformance suite against a Tandem disk: every SCSI.* and iSCSI.* suite, one process
 * per suite (CompareAndWrite.InvalidDataOutSize changes a CDB byte and never restores it). The
 * URL is given twice: MultipathIO.* logs in twice (two I_T nexuses on one LU).
 * CUnit counts skips as passes, so each test's own section is read for [SKIPPED].
 */
t.test('iscsi-test-cu: every SCSI and iSCSI suite, no failure', needs('iscsi-test-cu'), async (t) => {
  const s = await startServer(t)
  // 1 GiB (sparse): larger than MAXIMUM WRITE SAME LENGTH (512 MiB), as WriteSame*.ZeroBlocks needs
  await s.ds.createDisk('conf', 1 << 30)
  const url = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:conf/0`
  const list = (await run('iscsi-test-cu', ['--list'])).stdout
  const suites = list.split('\n').filter((l) => /^(SCSI|iSCSI)\.[A-Za-z0-9]+$/.test(l.trim())).map((l) => l.trim())
  t.ok(suites.length >= 40, `${suites.length} suites`)
  const tally = { passed: 0, failed: 0, skipped: 0 }
  const skipped: string[] = []
  const failed: string[] = []
  for (const suite of suites) {
    const r = await run('iscsi-test-cu', ['--dataloss', '-V', '-i', 'iqn.2026-11.test:one', '-I', 'iqn.2026-11.test:two', '-t', suite, url, url])
    const sections = r.stdout.split(/\n\s+Test: /).slice(1)
    for (const sec of sections) {
      const name = `${suite}.${sec.slice(0, sec.indexOf(' '))}`
      if (/\bFAILED\b/.test(sec.split('\n')[0]) || /^\s+\d+\. test_/m.test(sec)) {
        tally.failed++
        failed.push(name)
      } else if (/\[SKIPPED\]/.test(sec)) {
        tally.skipped++
        skipped.push(`${name}: ${/\[SKIPPED\]\s*([^\n]*)/.exec(sec)?.[1]?.trim() ?? ''}`)
      } else tally.passed++
    }
    const summary = /^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(r.stdout)
    t.ok(summary, `${suite}: ran to its summary`)
    if (summary) t.equal(Number(summary[4]), 0, `${suite}: no failed test`)
  }
  t.comment(`iscsi-test-cu: ${tally.passed} passed, ${tally.failed} failed, ${tally.skipped} skipped`)
  writeFileSync(join(tmp(t), 'skips.txt'), skipped.join('\n'))
  if (process.env.TANDEM_ISCSI_SKIPS) writeFileSync(process.env.TANDEM_ISCSI_SKIPS, skipped.join('\n') + '\n')
  t.same(failed, [], 'no failed test')
  t.ok(tally.passed >= 190, `passes: ${tally.passed}`)
})

import type { Test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { run, tmp } from './peers.js'
import { startServer } from './server.js'

/**
 * libiscsi's suites with a 3-second command timeout in them (iscsi_set_timeout(…, 3)): a command the
 * target must ignore times out, and the next one must be served within the same bound (2–3 s, as
 * libiscsi counts whole seconds). They run in their own test file, alone and at normal CPU
 * priority; in the nice-19 lane a loaded machine starved the server past that bound (CI
 * 2026-12-03: iSCSI.iSCSIcmdsn failed once in ~60 runs, never by hand, 55 runs with and without
 * busy loops beside it).
 */
export const TIMED_SUITES = ['iSCSI.iSCSIcmdsn', 'iSCSI.iSCSIdatasn', 'iSCSI.iSCSIResiduals']

export interface SuitesTally {
  passed: number
  failed: string[]
  skipped: string[]
}

/**
 * Runs `iscsi-test-cu` once per suite (CompareAndWrite.InvalidDataOutSize changes a CDB byte and
 * never restores it) against a fresh 1-GiB Tandem disk (sparse; larger than MAXIMUM WRITE SAME
 * LENGTH, 512 MiB, as WriteSame*.ZeroBlocks needs). The URL is given twice: MultipathIO.* logs in
 * twice (two I_T nexuses on one LU). `pick` chooses among the SCSI.* and iSCSI.* suites listed.
 * CUnit counts skips as passes, so each test's own section is read for [SKIPPED]. Asserts that
 * each suite ran to its summary with no failure; the skips go to skips.txt in the test's folder.
 */
export async function runSuites(
  t: Test,
  pick: (suite: string) => boolean,
): Promise<SuitesTally> {
  const s = await startServer(t)
  await s.ds.createDisk('conf', 1 << 30)
  const url = `iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:conf/0`
  const list = (await run('iscsi-test-cu', ['--list'])).stdout
  const suites = list.split('\n').map((l) => l.trim()).filter((l) => /^(SCSI|iSCSI)\.[A-Za-z0-9]+$/.test(l)).filter(pick)
  const tally: SuitesTally = { passed: 0, failed: [], skipped: [] }
  for (const suite of suites) {
    const r = await run('iscsi-test-cu', ['--dataloss', '-V', '-i', 'iqn.2026-11.test:one', '-I', 'iqn.2026-11.test:two', '-t', suite, url, url])
    const sections = r.stdout.split(/\n\s+Test: /).slice(1)
    for (const sec of sections) {
      const name = `${suite}.${sec.slice(0, sec.indexOf(' '))}`
      if (/\bFAILED\b/.test(sec.split('\n')[0]) || /^\s+\d+\. test_/m.test(sec)) tally.failed.push(name)
      else if (/\[SKIPPED\]/.test(sec)) tally.skipped.push(`${name}: ${/\[SKIPPED\]\s*([^\n]*)/.exec(sec)?.[1]?.trim() ?? ''}`)
      else tally.passed++
    }
    const summary = /^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(r.stdout)
    t.ok(summary, `${suite}: ran to its summary`)
    if (summary) t.equal(Number(summary[4]), 0, `${suite}: no failed test`)
  }
  t.comment(`iscsi-test-cu: ${suites.length} suites, ${tally.passed} passed, ${tally.failed.length} failed, ${tally.skipped.length} skipped`)
  writeFileSync(join(tmp(t), 'skips.txt'), tally.skipped.join('\n'))
  t.same(tally.failed, [], 'no failed test')
  return tally
}

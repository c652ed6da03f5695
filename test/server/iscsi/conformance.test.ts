import t from 'tap'
import { needs } from '../../helpers/peers.js'
import { runSuites, TIMED_SUITES } from '../../helpers/iscsi-test-cu.js'

/**
 * libiscsi's conformance suite against a Tandem disk: every SCSI.* and iSCSI.* suite but the three
 * with a 3-second command timeout in them, which conformance-timed.test.ts runs alone (this file
 * runs in the nice-19 lane; see test/helpers/iscsi-test-cu.ts).
 */
t.test('iscsi-test-cu: every SCSI and iSCSI suite without a timeout, no failure', needs('iscsi-test-cu'), async (t) => {
  const tally = await runSuites(t, (suite) => !TIMED_SUITES.includes(suite))
  t.ok(tally.passed >= 185, `passes: ${tally.passed}`)
})

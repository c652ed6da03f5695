import t from 'tap'
import { needs } from '../../helpers/peers.js'
import { runSuites, TIMED_SUITES } from '../../helpers/iscsi-test-cu.js'

/**
 * libiscsi's suites with a 3-second command timeout (iSCSIcmdsn: CmdSN outside the window is
 * ignored, then the next command served; iSCSIdatasn; iSCSIResiduals.Read10Invalid), alone at
 * normal CPU priority (not in lanes.json): every test passes, none skipped.
 */
t.test('iscsi-test-cu: the suites with a 3-second timeout, no failure', needs('iscsi-test-cu'), async (t) => {
  const tally = await runSuites(t, (suite) => TIMED_SUITES.includes(suite))
  t.equal(tally.passed, 13, `every test passes (${tally.passed})`)
  t.same(tally.skipped, [], 'none skipped')
})

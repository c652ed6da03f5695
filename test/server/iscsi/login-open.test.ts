import t from 'tap'
import { createHash } from 'node:crypto'
import { bearer } from '../../helpers/server.js'
import { rawTarget, opcode, textKeys, writersAfterClose } from '../../helpers/iscsi-raw.js'

/*
 * The disk is opened when the login completes, not when it starts: an initiator that asks for a
 * CHAP challenge and never answers holds nothing (no open export, no writer), so the disk can be
 * deleted under it; its late answer then finds no target.
 */

const INITIATOR = 'iqn.2026-11.test:silent'

t.test('a CHAP login left unanswered does not open the disk', async (t) => {
  const { s, c, api } = await rawTarget(t, 'c', 1 << 20)
  await s.ds.setAccess('c', { initiators: [], chap: { user: 'alice', secret: 'alice-secret-123' } })

  // security stage: AuthMethod, then the CHAP algorithm; the target sends its challenge
  c.loginRequest(0, 1, true, `InitiatorName=${INITIATOR}\0SessionType=Normal\0TargetName=iqn.2026-11.local.tandem:c\0AuthMethod=CHAP,None\0`)
  let r = await c.read()
  t.equal(opcode(r), 0x23, 'login response')
  t.equal(r.bhs.readUInt16BE(36), 0, 'status: continue')
  t.equal(textKeys(r).get('AuthMethod'), 'CHAP')
  c.loginRequest(0, 1, true, 'CHAP_A=5\0')
  r = await c.read()
  const keys = textKeys(r)
  t.equal(keys.get('CHAP_A'), '5')
  t.ok(keys.get('CHAP_C'), 'challenge sent')
  t.equal(r.bhs[1] & 0x80, 0, 'no transit before the answer')

  // ... and the initiator goes silent, connected
  const disk = (await (await fetch(api)).json()) as { openExports: Record<string, number>; writers: number }
  t.same(disk.openExports, {}, 'no open export while the challenge is unanswered')
  t.equal(disk.writers, 0, 'no writer')
  const del = await fetch(api, { method: 'DELETE', headers: bearer(s.apiToken) })
  t.equal(del.status, 204, `DELETE succeeds while the socket is connected: ${del.status === 204 ? '' : await del.text()}`)
  t.equal((await fetch(api)).status, 404, 'the disk is gone')
  t.notOk(c.sock.destroyed, 'the silent initiator is still connected')

  // the right answer, late: the target no longer exists
  const id = Number(keys.get('CHAP_I'))
  const challenge = Buffer.from(keys.get('CHAP_C')!.slice(2), 'hex')
  const answer = createHash('md5').update(Buffer.from([id])).update('alice-secret-123').update(challenge).digest('hex')
  c.loginRequest(0, 1, true, `CHAP_N=alice\0CHAP_R=0x${answer}\0`)
  r = await c.read()
  t.equal(opcode(r), 0x23)
  if (r.bhs[36] === 0 && r.bhs[1] & 0x80) {
    // authenticated: the disk is looked for when the operational stage ends
    c.loginRequest(1, 3, true, 'MaxRecvDataSegmentLength=262144\0')
    r = await c.read()
  }
  t.equal(r.bhs.readUInt16BE(36), 0x0203, 'login fails: Not Found')
})

t.test('the disk is opened when the login completes, and released when the session ends', async (t) => {
  const { s, c, api } = await rawTarget(t, 'n', 1 << 20)
  // security stage done (AuthMethod None), operational stage begun: still nothing open
  c.loginRequest(0, 1, true, `InitiatorName=${INITIATOR}\0SessionType=Normal\0TargetName=iqn.2026-11.local.tandem:n\0AuthMethod=None\0`)
  let r = await c.read()
  t.equal(r.bhs.readUInt16BE(36), 0)
  t.equal(r.bhs[1] & 0x83, 0x81, 'transit to the operational stage')
  let disk = (await (await fetch(api)).json()) as { openExports: Record<string, number>; writers: number }
  t.equal(disk.writers, 0, 'not open during the login')
  c.loginRequest(1, 3, true, 'MaxRecvDataSegmentLength=262144\0')
  r = await c.read()
  t.equal(r.bhs.readUInt16BE(36), 0, 'login complete')
  disk = (await (await fetch(api)).json()) as { openExports: Record<string, number>; writers: number }
  t.equal(disk.writers, 1, 'open in full feature phase')
  t.equal((await fetch(api, { method: 'DELETE', headers: bearer(s.apiToken) })).status, 409, 'in use')
  const read = await c.readBlocks(0, 1)
  t.equal(read.status, 0, 'READ(10) GOOD')
  c.close()
  t.equal(await writersAfterClose(api), 0, 'released at the end of the session')
})

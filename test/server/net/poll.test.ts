import t, { type Test } from 'tap'
import { setImmediate as turn } from 'node:timers/promises'
import { Poller, poller } from '../../../src/server/net/poll.js'
import { needs, runOk } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'

t.test('the loop is kept turning for the window after a reply, then left to sleep', async (t) => {
  let now = 1000
  const p = new Poller(0.2, () => now)
  t.notOk(p.polling, 'idle at first')
  p.expectNext()
  t.ok(p.polling, 'polling after a reply')
  for (let i = 0; i < 5; i++) {
    await turn()
    now += 0.03
    t.ok(p.polling, `still polling ${((i + 1) * 30).toFixed(0)} µs later`)
  }
  p.expectNext() // another reply at 1000.15 ms: the window now ends at 1000.35
  now += 0.1
  await turn()
  t.ok(p.polling, 'a new reply extends the window')
  now += 0.2
  await turn()
  await turn()
  t.notOk(p.polling, 'stopped once the window has passed without a reply')
})

t.test('a window of 0 never polls; cancel stops at the next turn', async (t) => {
  const p = new Poller(0, () => 0)
  p.expectNext()
  t.notOk(p.polling, 'window 0: nothing')
  p.windowUs = 500
  t.equal(p.windowUs, 500)
  p.expectNext()
  t.ok(p.polling)
  p.cancel()
  await turn()
  await turn()
  t.notOk(p.polling, 'cancelled')
})

/**
 * The process's poller with a window long enough to be seen by the test (60 s), idle to begin
 * with; put back as it was at the end.
 */
async function idleLongPoller(t: Test): Promise<void> {
  const saved = poller.windowUs
  t.teardown(() => {
    poller.cancel()
    poller.windowUs = saved
  })
  poller.windowUs = 60_000_000
  poller.cancel()
  await turn()
  await turn()
  t.notOk(poller.polling, 'idle to begin with')
}

t.test('an NBD reply that leaves its connection idle starts polling', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('disk', 1 << 20)
  const c = await TestNbdClient.open(s.nbdPort, 'disk')
  await idleLongPoller(t)
  const r = await c.pread(0, 4096)
  t.equal(r.errno, 0)
  t.ok(poller.polling, 'polling for the next request')
  c.disconnect()
})

t.test('an iSCSI reply that leaves its connection idle starts polling', needs('iscsi-inq'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('disk', 1 << 20)
  await idleLongPoller(t)
  const out = await runOk('iscsi-inq', [`iscsi://127.0.0.1:${s.iscsiPort}/iqn.2026-11.local.tandem:disk/0`])
  t.match(out, /TANDEM/, 'iscsi-inq read the INQUIRY data')
  t.ok(poller.polling, 'polling for the next command')
})

import t, { type Test } from 'tap'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import { IscsiInitiator, SessionLostError } from '../../../src/client/transport/iscsi/index.js'
import type { Timers } from '../../../src/client/transport/iscsi/index.js'
import { pattern, sh, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { needsTgtd, startTgtd } from '../../helpers/tgtd.js'
import { tcpProxy } from '../../helpers/tcp-proxy.js'

const IQN = 'iqn.2026-11.local.tandem:'
const CHUNK = 256 << 10
const WRITES = 32

/**
 * WRITES writes of CHUNK bytes each (distinct patterns), all issued at once through a proxy that
 * cuts the first connection once `cut` bytes went to the target: every write is answered, once;
 * the session logged in again; every byte reads back through a separate session.
 */
async function cutMidWrite(t: Test, target: (port: number) => string, port: number, direct: string, digests: boolean) {
  const cut = 3 << 20 // in the middle of the 8 MiB written
  const proxy = await tcpProxy(t, port, { cutAfterBytes: cut })
  const ini = await IscsiInitiator.connect(target(proxy.port), { queueDepth: 8, headerDigest: digests, dataDigest: digests })
  const base = 1 << 20
  const settled: number[] = new Array(WRITES).fill(0)
  const writes = Array.from({ length: WRITES }, (_, i) =>
    ini.write(base + i * CHUNK, pattern(CHUNK, 100 + i)).then(
      () => void settled[i]++,
      (e: Error) => {
        settled[i]++
        throw e
      },
    ),
  )
  await Promise.all(writes)
  t.ok(proxy.upBytes > cut, 'the proxy carried more bytes than the cut: a second connection')
  t.equal(proxy.connections, 2, 'one cut, one new connection')
  t.equal(ini.recoveries.reconnects, 1, 'the session logged in again once')
  t.same(settled, new Array(WRITES).fill(1), 'every write answered exactly once')
  // the recovered session keeps working
  await ini.write(0, pattern(4096, 7))
  t.ok((await ini.read(0, 4096)).equals(pattern(4096, 7)), 'the recovered session reads and writes')
  await ini.close()
  const check = await IscsiInitiator.connect(direct)
  const all = await check.read(base, WRITES * CHUNK)
  await check.close()
  let lost = 0
  for (let i = 0; i < WRITES; i++) if (!all.subarray(i * CHUNK, (i + 1) * CHUNK).equals(pattern(CHUNK, 100 + i))) lost++
  t.equal(lost, 0, 'every acknowledged write reads back from another session')
}

t.test('against Tandem\'s target: a connection cut mid-write recovers with no acknowledged write lost', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 16 << 20)
  for (const digests of [false, true]) {
    await t.test(`digests ${digests}`, (t) => cutMidWrite(t, (p) => `iscsi://127.0.0.1:${p}/${IQN}d/0`, s.iscsiPort, `iscsi://127.0.0.1:${s.iscsiPort}/${IQN}d/0`, digests))
  }
})

t.test('against tgtd: a connection cut mid-write recovers with no acknowledged write lost', needsTgtd(), async (t) => {
  const file = join(tmp(t, 'tandem-tgt-'), 'lun.raw')
  sh('truncate', ['-s', '16M', file])
  const direct = await startTgtd(t, file)
  const port = Number(/:(\d+)\//.exec(direct)![1])
  await cutMidWrite(t, (p) => direct.replace(`:${port}/`, `:${p}/`), port, direct, false)
  const bytes = readFileSync(file)
  t.ok(bytes.subarray(1 << 20, (1 << 20) + CHUNK).equals(pattern(CHUNK, 100)), 'tgtd\'s backing file holds the writes')
})

t.test('a target that stays gone: bounded logins with back-off, then one typed error for every command', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 16 << 20)
  const proxy = await tcpProxy(t, s.iscsiPort, { cutAfterBytes: 1 << 20 })
  const delays: number[] = []
  // back-off delays are recorded and run at once; the login's own time limit stays real
  const timers: Timers = {
    setTimeout: (fn, ms) => {
      if (ms < 1000) delays.push(ms)
      return setTimeout(fn, ms < 1000 ? 0 : ms)
    },
    clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
  }
  const ini = await IscsiInitiator.connect(`iscsi://127.0.0.1:${proxy.port}/${IQN}d/0`, {
    timers,
    commandTimeoutMs: 0,
    reconnect: { attempts: 4, firstDelayMs: 50, maxDelayMs: 150 },
  })
  await proxy.refuse()
  const outcomes = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => ini.write(i * CHUNK, pattern(CHUNK, i))))
  t.same(delays, [50, 100, 150], 'back-off between the 4 attempts, doubling up to its bound')
  t.ok(outcomes.every((o) => o.status === 'rejected'), 'every write failed')
  for (const o of outcomes) {
    const e = (o as PromiseRejectedResult).reason
    t.ok(e instanceof SessionLostError && e.code === 'IoError' && e.attempts === 4, 'SessionLostError after 4 attempts')
  }
  t.match((outcomes[0] as PromiseRejectedResult).reason.message, /connection was lost and 4 login attempt\(s\) failed \(last: .*ECONNREFUSED/)
  await t.rejects(ini.read(0, 512), { code: 'IoError' }, 'later commands fail at once with the same error')
  await ini.close()
})

t.test('a connection gone dead (no close seen by the target): the initiator\'s timeouts drop it, and its new login ends the old session at the target (reinstatement)', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 16 << 20)
  let stall = false
  const proxy = await tcpProxy(t, s.iscsiPort, { stallFirst: () => stall })
  const ini = await IscsiInitiator.connect(`iscsi://127.0.0.1:${proxy.port}/${IQN}d/0`, { commandTimeoutMs: 500, taskManagementTimeoutMs: 500 })
  stall = true
  const data = pattern(CHUNK, 9)
  await ini.write(0, data)
  t.equal(ini.recoveries.drops, 1, 'no answer to the command nor to task management: the connection was dropped')
  t.equal(ini.recoveries.reconnects, 1, 'and the session logged in again')
  t.equal(proxy.targetClosed[0], true, 'the target ended the old session, which it had not seen go')
  t.ok((await ini.read(0, CHUNK)).equals(data), 'the write reads back')
  await ini.close()
})

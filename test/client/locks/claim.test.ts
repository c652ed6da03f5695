import t, { type Test } from 'tap'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { IscsiLockStorage } from '../../../src/client/locks/iscsi-storage.js'
import { countingStorage, delayedStorage, FileLockStorage, initLockspace, LockManager, regionSize, type Held, type LockStorage } from '../../../src/disk-formats/lock-region/index.js'
import { tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'

/**
 * The FT pair's split-brain rule on real lock storage (ft-architecture.md §1.3): two hosts claim
 * the generation they last saw, 50 times in a row; exactly one wins each time, the loser sees the
 * winner's generation, and the deposed holder's next renewal reports the lock lost.
 */

const LOCKSPACE_IQN = 'iqn.2026-11.local.tandem:lockspace'
const LOCK = 'vm/ft1'

/** `onRound`: called before each round (a test may slow one host down in some rounds). */
async function race(t: Test, raw: [LockStorage, LockStorage], onRound: (round: number) => void = () => {}): Promise<void> {
  const storages = raw.map((s) => countingStorage(s))
  const hosts = storages.map((s, i) => new LockManager(s, `claim-${i}`))
  const lost = [0, 0]
  hosts.forEach((m, i) => {
    m.onLost = () => lost[i]++
    m.onFence = (reason) => t.fail(`host ${i} lost its lease: ${reason}`)
  })
  for (const m of hosts) await m.join()
  t.teardown(() => Promise.all(hosts.map((m) => m.leave().catch(() => undefined))))
  let g = (await hosts[0].acquire(LOCK)).generation
  let owner = 0
  const winners = [0, 0]
  /** rounds where the loser's compare-and-write reached the storage too */
  let contested = 0
  for (let round = 0; round < 50; round++) {
    onRound(round)
    const cas = storages.reduce((n, s) => n + s.counts.cas, 0)
    // the first to start would nearly always win: take turns starting first
    const order = round % 2 ? [1, 0] : [0, 1]
    const claims: Promise<Held | null>[] = []
    for (const i of order) claims[i] = hosts[i].claim(LOCK, g)
    const got = await Promise.all(claims)
    if (storages.reduce((n, s) => n + s.counts.cas, 0) - cas > 1) contested++
    const won = got.flatMap((h, i) => (h ? [i] : []))
    if (won.length !== 1) {
      t.fail(`round ${round}: ${won.length} winners`)
      return
    }
    const w = won[0]
    winners[w]++
    t.equal(got[w]!.generation, g + 1, `round ${round}: host ${w} won generation ${g + 1}`)
    const seen = (await hosts[1 - w].view()).locks.find((l) => l.name === LOCK)
    t.match(seen, { owner: `claim-${w}`, generation: g + 1 }, `round ${round}: the loser sees the winner's generation`)
    t.equal(await hosts[1 - w].claim(LOCK, g), null, `round ${round}: a claim of the stale generation fails`)
    if (owner !== w) {
      const before = lost[owner]
      await hosts[owner].heartbeat()
      t.ok(lost[owner] === before + 1 || (lost[owner] === before && !hosts[owner].holds(LOCK)), `round ${round}: the deposed holder's renewal reports the loss`)
      t.notOk(hosts[owner].holds(LOCK))
    }
    t.ok(hosts[w].holds(LOCK), `round ${round}: the winner holds it`)
    owner = w
    g++
  }
  t.comment(`wins: ${JSON.stringify(winners)}, losses reported: ${JSON.stringify(lost)}, rounds where both compare-and-writes reached the storage: ${contested}`)
  t.ok(winners.every((n) => n > 0), 'both hosts won some rounds')
  t.ok(contested > 0, 'and in some the storage itself refused the loser')
}

t.test('file lockspace (fcntl compare-and-write)', async (t) => {
  const path = join(tmp(t), 'lockspace')
  await writeFile(path, Buffer.alloc(regionSize({ maxHosts: 8, maxLocks: 16 })))
  const init = await FileLockStorage.open(path)
  await initLockspace(init, { maxHosts: 8, maxLocks: 16 })
  const a = await FileLockStorage.open(path)
  const b = await FileLockStorage.open(path)
  t.teardown(async () => {
    for (const s of [a, b, init]) await s.close()
  })
  await race(t, [a, b])
})

t.test('iSCSI lockspace LUN (COMPARE AND WRITE), two sessions', async (t) => {
  const s = await startServer(t)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/${LOCKSPACE_IQN}/0`
  const a = await IscsiLockStorage.open(uri, { initiatorName: 'iqn.2026-11.local.tandem:host:claim-0' })
  const b = await IscsiLockStorage.open(uri, { initiatorName: 'iqn.2026-11.local.tandem:host:claim-1' })
  t.teardown(() => Promise.all([a.close(), b.close()]))
  await race(t, [a, b])
})

t.test('one atomicity domain: a host on the served lockspace file against a host over its LUN', async (t) => {
  const s = await startServer(t)
  const file = await FileLockStorage.open(s.locks.path)
  const lun = await IscsiLockStorage.open(`iscsi://127.0.0.1:${s.iscsiPort}/${LOCKSPACE_IQN}/0`, { initiatorName: 'iqn.2026-11.local.tandem:host:claim-1' })
  t.teardown(async () => {
    await lun.close()
    await file.close()
  })
  // either host may be the quicker one (the LUN's initiator answers first on most runs): in one
  // round of four the file host is slowed down (20 ms per operation), in another the LUN host, so
  // each wins some rounds whatever their speeds; the other two rounds race as they come
  let slow: [number, number] = [0, 0]
  await race(t, [delayedStorage(file, () => slow[0]), delayedStorage(lun, () => slow[1])], (round) => {
    slow = round % 4 === 1 ? [20, 0] : round % 4 === 3 ? [0, 20] : [0, 0]
  })
})

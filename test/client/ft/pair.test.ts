import t from 'tap'
import { join } from 'node:path'
import { RawFile } from '../../../src/disk-formats/index.js'
import { VirtualSwitch } from '../../../src/client/vm/net.js'
import { localPair } from '../../helpers/ft-pair.js'
import { rng, shmTmp, within } from '../../helpers/peers.js'

const text = (b: number[]) => Buffer.from(b).toString('latin1')

t.test('a pair runs diskio to the end in both read modes: the backup ends in the primary\'s state and never writes', async (t) => {
  const dir = shmTmp(t, 'tandem-ft-pair-')
  for (const reads of ['disk', 'log'] as const) {
    const dev = await RawFile.create(join(dir, `${reads}.raw`), 8 << 20)
    t.teardown(() => dev.close())
    let backupWrites = 0
    let backupReads = 0
    const p = localPair({ guest: 'diskio', dev, reads })
    const shared = p.backup['o'].disk!.shared
    const exec = shared.execute.bind(shared)
    shared.execute = (cdb, out, n, req) => {
      if (cdb[0] === 0x2a) backupWrites++
      if (cdb[0] === 0x28) backupReads++
      return exec(cdb, out, n, req)
    }
    const [a, b] = await Promise.all([p.pm.run().finally(() => p.finish()), p.bm.run()])
    t.equal(a.end, 'exit', `${reads}: the primary exits`)
    t.equal(a.exitCode, 0, `${reads}: diskio verified its disk`)
    t.equal(b.end, 'exit', `${reads}: the backup exits: ${b.message ?? ''}`)
    t.equal(b.instructions, a.instructions, `${reads}: at the same instruction`)
    t.equal(b.stateHash, a.stateHash, `${reads}: in the same state`)
    t.equal(b.console, a.console, `${reads}: with the same console`)
    t.equal(text(p.console.primary), a.console, `${reads}: the primary's console left it`)
    t.equal(p.console.backup.length, 0, `${reads}: the backup's did not`)
    t.equal(backupWrites, 0, `${reads}: the backup wrote nothing`)
    if (reads === 'disk') t.ok(backupReads >= 64, `disk: the backup read the shared disk (${backupReads} READs)`)
    else t.equal(backupReads, 0, 'log: the backup read nothing, the data came in the log')
    t.ok(p.gate.snapshot().released.disk >= 64, `${reads}: the primary's writes went through the output gate`)
  }
})

t.test('kvstore: replies leave the primary only once the backup has the log; the backup answers the same after a failover', async (t) => {
  const sw = new VirtualSwitch()
  const mac = Buffer.from([2, 0, 0, 0, 0, 0x42])
  const client = sw.port()
  const replies: string[] = []
  client.onReceive = (f) => replies.push(f.subarray(14).toString('latin1'))
  const clientMac = Buffer.from([2, 0, 0, 0, 0, 0xcc])
  const send = (s: string) => client.send(Buffer.concat([mac, clientMac, Buffer.from([0x88, 0xb5]), Buffer.from(s, 'latin1')]))
  // the link delivers when the test says: the primary's reply waits for the backup's ack
  const queue: (() => void)[] = []
  const p = localPair({ guest: 'kvstore', net: { primary: sw.port(), backup: sw.port() }, mac, deliver: (fn) => queue.push(fn) })
  const runs = [p.pm.run(), p.bm.run()]
  const pump = async (until: () => boolean) => {
    for (let i = 0; i < 20_000 && !until(); i++) {
      queue.splice(0).forEach((fn) => fn())
      await new Promise((r) => setImmediate(r))
    }
  }
  const until = async (n: number) => pump(() => replies.length >= n)
  // the guest's start-up line goes out first
  await pump(() => p.console.primary.includes(10) && p.gate.held === 0)
  // one request; hold the link: the primary answers but the reply is held
  send('SET a 1')
  for (let i = 0; i < 200 && p.gate.snapshot().heldBytes < 16; i++) await new Promise((r) => setImmediate(r))
  t.equal(p.gate.heldBytes, 16, `the reply (16 bytes) is held in the output gate: ${JSON.stringify(p.gate.snapshot())}`)
  t.equal(replies.length, 0, 'not sent before the backup acknowledged')
  await until(1)
  t.same(replies, ['OK'], 'sent once the backup acknowledged the log')
  for (let i = 0; i < 20; i++) {
    send(`SET k${i} v${i}`)
    await until(2 + i)
  }
  t.equal(replies.length, 21)
  // the primary's host is gone: the backup takes over at its last horizon and answers on the MAC
  p.cut()
  p.failover()
  for (let i = 0; i < 100 && !p.backup.live; i++) await new Promise((r) => setImmediate(r))
  t.ok(p.backup.live, 'the backup is live')
  replies.length = 0
  send('GET k19')
  await pump(() => replies.length >= 1)
  t.same(replies, ['VALUE v19'], 'the backup has every acknowledged SET')
  send('COUNT')
  await pump(() => replies.length >= 2)
  t.equal(replies[1], 'COUNT 21')
  send('QUIT')
  const [, b] = await Promise.all([Promise.race([runs[0], new Promise((r) => setTimeout(r, 50))]), runs[1]])
  t.equal((b as { end: string }).end, 'exit', 'the backup, now live, ran the guest to its end')
  p.pm.hart.requestStop()
})

t.test('diskio survives a failover at 12 seeded moments: the backup, live, verifies every byte', async (t) => {
  const dir = shmTmp(t, 'tandem-ft-fail-')
  const r = rng(17)
  for (let i = 0; i < 12; i++) {
    const reads = i % 2 ? 'log' : 'disk'
    const dev = await RawFile.create(join(dir, `d${i}.raw`), 8 << 20)
    const stopAt = 50_000 + Math.floor((r() / 2 ** 32) * 2_500_000)
    const p = localPair({ guest: 'diskio', dev, reads, maxInstructions: stopAt })
    const b = p.bm.run()
    const a = await p.pm.run()
    // the primary stopped at stopAt (as if its host died there, with its writes held or done)
    p.cut()
    p.failover()
    const s = await b
    t.equal(s.end, 'exit', `run ${i} (${reads}, primary gone at ${a.instructions}): the backup finished live: ${s.message ?? ''}`)
    t.equal(s.exitCode, 0, `run ${i}: diskio read back every byte it wrote`)
    await dev.close()
  }
})

t.test('at the guest\'s exit the primary ships its last records and the backup acknowledges the last instruction, before either run ends', async (t) => {
  // no finish(): the log is never closed, so the END record reaches the backup only because the
  // primary ships it at the exit (before, it went with the close, after the run's 64 MiB hash)
  const p = localPair({ guest: 'ticker' })
  let backupEnded = false
  const b = p.bm.run().finally(() => (backupEnded = true))
  const a = await p.pm.run()
  t.equal(a.end, 'exit')
  const s = await within(b, 30_000, null)
  t.ok(s, 'the backup reached the end from the log shipped at the exit')
  t.equal(s?.end, 'exit', s?.message ?? '')
  t.equal(s?.instructions, a.instructions, 'at the same instruction')
  const last = p.acks.findIndex((k) => k.executed === a.instructions)
  t.ok(last >= 0, `an ack of the last instruction (${a.instructions}) was sent`)
  t.equal(p.lag.executed, a.instructions, 'the primary has it: its lag meter is at the end')
  t.ok(backupEnded, 'the backup\'s run ended')
  p.finish()
})

import t, { type Test } from 'tap'
import { FakeTimers } from '../../helpers/timers.js'
import { coloPair } from '../../helpers/colo-pair.js'
import { OutputComparator, type MismatchReason } from '../../../src/client/ft/colo/comparator.js'
import { decodeColo, encodeColo, type ColoMessage } from '../../../src/client/ft/colo/messages.js'
import { FtProtocolError } from '../../../src/client/ft/protocol.js'
import { DirtyPageResync } from '../../../src/client/ft/colo/resync.js'
import { Machine, guestPath, logicalUnitPath } from '../../../src/client/vm/index.js'
import { mediumRange, type ScsiPath } from '../../../src/client/vm/scsi-path.js'
import { LogicalUnit } from '../../../src/server/scsi/index.js'
import { RawFile } from '../../../src/disk-formats/index.js'
import { join } from 'node:path'
import { shmTmp } from '../../helpers/peers.js'
import { DISKLOG, recordsOnDisk } from '../../helpers/disklog.js'
import { VirtualSwitch } from '../../../src/client/vm/net.js'
import { KvClient } from '../../../src/client/kv/client.js'
import { readFileSync } from 'node:fs'

t.test('COLO messages round-trip; a malformed one is a BadPayload protocol error', async (t) => {
  const samples: ColoMessage[] = [
    { kind: 'INPUT', frame: Buffer.from('frame bytes') },
    { kind: 'OUTPUT', epoch: 3, stream: 'console', bytes: Buffer.from('line\n') },
    { kind: 'OUTPUT', epoch: 0, stream: 'frame', bytes: Buffer.alloc(60, 7) },
    { kind: 'SYNC', epoch: 9, part: 1, parts: 2, bytes: Buffer.alloc(100, 1) },
    { kind: 'SYNC_ACK', epoch: 9 },
    { kind: 'RELEASED', epoch: 2, frames: 10, console: 1 },
  ]
  for (const m of samples) t.same(decodeColo(encodeColo(m)), m, m.kind)
  const bad = (b: Buffer) => {
    try {
      decodeColo(b)
    } catch (e) {
      return e instanceof FtProtocolError ? e.code : 'other'
    }
    return 'no error'
  }
  t.equal(bad(Buffer.alloc(3)), 'BadPayload', 'short')
  t.equal(bad(Buffer.from([9, 0, 0, 0, 0, 0, 0, 0])), 'BadPayload', 'unknown kind')
  t.equal(bad(Buffer.from([2, 3, 0, 0, 0, 0, 0, 0])), 'BadPayload', 'unknown stream')
  t.equal(bad(Buffer.from([1, 0, 1, 0, 0, 0, 0, 0])), 'BadPayload', 'reserved set')
  const sync = encodeColo({ kind: 'SYNC', epoch: 1, part: 0, parts: 1, bytes: Buffer.alloc(0) })
  sync.writeUInt32LE(5, 8)
  t.equal(bad(sync), 'BadPayload', 'SYNC part past its count')
  t.equal(bad(encodeColo({ kind: 'SYNC_ACK', epoch: 1 }).subarray(0, 8).length === 8 ? Buffer.concat([encodeColo({ kind: 'SYNC_ACK', epoch: 1 }), Buffer.alloc(1)]) : Buffer.alloc(0)), 'BadPayload', 'SYNC_ACK with a body')
})

t.test('the comparator releases equal outputs at once and in order; a difference or a timeout reports once; a resync starts over', async (t) => {
  const timers = new FakeTimers()
  const mismatches: Array<[MismatchReason, string]> = []
  const released: string[] = []
  const c = new OutputComparator({ timers, timeoutMs: 100, onMismatch: (r, d) => mismatches.push([r, d]) })
  const out = (s: string) => () => released.push(s)
  c.primary('frame', Buffer.from('a'), out('a'))
  c.primary('console', Buffer.from('x\n'), out('x'))
  c.primary('frame', Buffer.from('b'), out('b'))
  t.same(released, [], 'nothing leaves before the secondary\'s outputs')
  c.secondary(0, 'frame', Buffer.from('a'))
  t.same(released, ['a'], 'the first frame matched: released at once')
  c.secondary(0, 'frame', Buffer.from('b'))
  t.same(released, ['a'], 'the second frame matched but waits behind the console line')
  c.secondary(0, 'console', Buffer.from('x\n'))
  t.same(released, ['a', 'x', 'b'], 'then both leave, in the order made')
  c.secondary(0, 'frame', Buffer.from('c'))
  c.primary('frame', Buffer.from('C'), out('C'))
  t.same(mismatches.map((m) => m[0]), ['mismatch'], 'a difference is reported')
  c.primary('frame', Buffer.from('d'), out('d'))
  c.secondary(0, 'frame', Buffer.from('d'))
  await timers.advance(500)
  c.tick()
  t.equal(mismatches.length, 1, 'once per epoch')
  t.equal(c.heldCount, 2, 'held until the resync')
  const held = c.nextEpoch()
  t.equal(held.length, 2)
  held.forEach((h) => h.release())
  t.same(released, ['a', 'x', 'b', 'C', 'd'], 'the resync releases the primary\'s outputs')
  t.equal(c.epoch, 1)
  c.secondary(0, 'frame', Buffer.from('e'))
  c.primary('frame', Buffer.from('e'), out('e'))
  t.same(released.length, 5, 'an output of the last epoch is stale: not compared')
  await timers.advance(101)
  c.tick()
  t.same(mismatches.map((m) => m[0]), ['mismatch', 'timeout'], 'unmatched past the timeout')
})

/** sequential SETs then GETs through the pair; every reply checked */
async function workload(t: Test, p: Awaited<ReturnType<typeof coloPair>>, n: number) {
  for (let i = 0; i < n; i++) t.equal((await p.client.request(`SET k${i % 10} v${i}`)).text, 'OK', `SET ${i}`)
  for (let i = n - 10; i < n; i++) t.equal((await p.client.request(`GET k${i % 10}`)).text, `VALUE v${i}`, `GET k${i % 10}`)
  t.equal((await p.client.request('QUIT')).text, 'BYE')
  const [a, b] = await Promise.all([p.pm.done, p.sm.done])
  return { a, b }
}

t.test('kvstore in colo mode: the secondary\'s outputs match, (almost) every reply leaves without a resync', async (t) => {
  const p = await coloPair(t, { guest: 'kvstore', timeoutMs: 3000 })
  const { a, b } = await workload(t, p, 60)
  const c = a.ft.colo!
  t.equal(a.end, 'exit')
  t.match(a.ft, { outcome: 'paired' })
  t.ok(c.outputs >= 73, `${c.outputs} outputs: the listening line, 71 replies (more if a retry was answered) and the closing line`)
  const resyncs = c.resyncs.mismatch + c.resyncs.timeout + c.resyncs.overflow
  t.ok(resyncs <= 1, `${resyncs} resyncs`)
  t.ok(c.releasedMatched >= c.outputs - 3, `${c.releasedMatched} of ${c.outputs} released on a match`)
  t.equal(Buffer.from(p.console.primary).toString(), a.console, 'the primary\'s console left it')
  t.equal(p.console.secondary.length, 0, 'the secondary\'s never did')
  t.equal(p.sentBySecondary.length, 0, 'nor did a frame of the secondary reach the switch')
  t.match(b.ft, { role: 'backup', outcome: 'paired' })
})

t.test('kvstore at the shortest period (--ft-colo-checkpoint-ms 5): resyncs every 5 ms while the guest runs, none after it ended; every answer right', async (t) => {
  const p = await coloPair(t, { guest: 'kvstore', timeoutMs: 3000, checkpointMs: 5 })
  const { a, b } = await workload(t, p, 60)
  const c = a.ft.colo!
  t.match(a, { end: 'exit', ft: { outcome: 'paired' } })
  t.match(b, { end: 'exit', ft: { outcome: 'paired' } })
  t.ok(c.resyncs.periodic >= 10, `${c.resyncs.periodic} periodic resyncs in the primary's ${a.seconds.toFixed(2)} s run, pause p50 ${c.pauseMs.p50.toFixed(2)} ms`)
  t.equal(c.resyncs.mismatch + c.resyncs.timeout + c.resyncs.overflow, 0, 'none for a difference')
  // at most one per 5 ms of the run: once the guest ended, the pair's end is not put off by more
  // (they went on while the primary waited for its last outputs: ~900 in a 5-s end)
  t.ok(c.resyncs.periodic <= (a.seconds * 1000) / 5 + 2, `${c.resyncs.periodic} ≤ one per 5 ms of the run`)
  t.equal(p.client.retries, 0, 'no request was sent twice')
})

t.test('noisy in colo mode: every reply differs, each resyncs the secondary, the answers are right and the sides end equal', async (t) => {
  const p = await coloPair(t, { guest: 'noisy', timeoutMs: 3000 })
  const { a, b } = await workload(t, p, 30)
  const c = a.ft.colo!
  t.ok(c.resyncs.mismatch >= 35, `${c.resyncs.mismatch} resyncs on a mismatch for 41 replies`)
  t.equal(c.resyncs.timeout, 0, 'none by timeout')
  t.ok(c.releasedByResync >= 35, `${c.releasedByResync} outputs released by a resync`)
  t.ok(c.lastPages > 0 && c.lastPages < 64, `the last resync sent ${c.lastPages} dirty pages, not the whole memory`)
  t.ok(c.pauseMs.count >= c.epoch, `${c.pauseMs.count} pauses, mean ${c.pauseMs.mean.toFixed(2)} ms`)
  t.match(b.ft, { role: 'backup', outcome: 'paired' })
})

t.test('a resync makes the secondary the primary\'s state: its dirty pages, the pages only the secondary wrote put back, the devices', async (t) => {
  const image = readFileSync(guestPath('noisy'))
  const mac = Buffer.from([2, 0, 0, 0, 0, 0x42])
  const machine = (sw: VirtualSwitch) => new Machine({ image, memory: 16 << 20, net: sw.port(), mac })
  const swA = new VirtualSwitch()
  const swB = new VirtualSwitch()
  const a = machine(swA)
  const b = machine(swB)
  const ra = new DirtyPageResync()
  const rb = new DirtyPageResync()
  ra.begin(a)
  rb.begin(b)
  const runs = [a.run(), b.run()]
  const ca = new KvClient({ port: swA.port(), vmMac: mac, retryMs: 1000 })
  const cb = new KvClient({ port: swB.port(), vmMac: mac, retryMs: 1000 })
  for (let i = 0; i < 5; i++) {
    t.equal((await ca.request(`SET k${i} a${i}`)).text, 'OK')
    t.equal((await cb.request(`SET k${i} a${i}`)).text, 'OK')
  }
  const sync = async () => {
    await a.requestPause()
    await b.requestPause()
    const parts = await ra.capture(a)
    const want = a.stateHash()
    await rb.apply(b, parts)
    t.equal(b.stateHash(), want, 'the secondary\'s whole state hash (registers, devices, all memory) is the primary\'s')
    a.resume()
    b.resume()
  }
  // the first sync: every page written since boot
  await sync()
  t.equal(rb.last.reverted, 0)
  // the secondary diverges: keys and pages the primary never had
  for (let i = 0; i < 40; i++) await cb.request(`SET only-b-${i} ${'x'.repeat(100)}`)
  t.not(b.stateHash(), a.stateHash(), 'apart')
  await sync()
  t.ok(rb.last.reverted > 0, `${rb.last.reverted} pages only the secondary wrote were put back`)
  t.ok(ra.last.pages < 64, `${ra.last.pages} dirty pages sent (of 4096)`)
  // from the same state and the same input, the same answer (the noisy guest's nonce aside)
  t.equal((await cb.request('GET only-b-3')).text, 'NOTFOUND', 'the secondary lost what only it had')
  t.equal((await cb.request('GET k4')).text, 'VALUE a4')
  t.equal((await cb.request('COUNT')).text, 'COUNT 5')
  a.halt('done')
  b.halt('done')
  await Promise.all(runs)
})

t.test('a replay primary and a colo secondary do not pair: the HELLO is refused for its mode', async (t) => {
  const { coloSecondary } = await import('../../../src/client/ft/colo/run-colo.js')
  const { ftPrimary } = await import('../../../src/client/ft/run-ft.js')
  const sha = Buffer.alloc(32, 1)
  const arbiter = { generation: 1, claim: async () => true }
  let port!: (p: number) => void
  const listening = new Promise<number>((r) => (port = r))
  const secondary = coloSecondary({ role: 'backup', host: '127.0.0.1', port: 0, vm: 'vm1', reads: 'disk', arbiter }, { memoryBytes: 1 << 20, imageSha: sha, onListening: port }).catch((e: Error) => e)
  const primary = ftPrimary({ role: 'primary', host: '127.0.0.1', port: await listening, vm: 'vm1', reads: 'disk', arbiter }, { memoryBytes: 1 << 20, imageSha: sha })
  await t.rejects(primary, /the FT backup refused: mode: mode 'replay' where this backup runs --ft-mode colo/)
  t.match(String(await secondary), /refused the FT primary: mode 'replay'/)
})

t.test('colo with a disk (disklog, in one process): no write of the secondary reaches the shared disk; at its buffer\'s bound it waits for the resync the primary\'s next output forces; every record on the disk', async (t) => {
  const dir = shmTmp(t, 'tandem-colo-bound-')
  const records = 512
  const capacity = DISKLOG.firstLba + records
  const run = async (name: string, maxHeldWrites: number) => {
    const file = join(dir, name)
    const dev = await RawFile.create(file, capacity * 512)
    t.teardown(() => dev.close())
    const lu = new LogicalUnit(dev, { serial: 'vm' })
    const primary = logicalUnitPath(lu, 'iqn.2026-11.local.tandem:vm:vm1,i,0x000000000001')
    const shared = logicalUnitPath(lu, 'iqn.2026-11.local.tandem:vm:vm1,i,0x000000000002')
    let reached = 0
    const secondary: ScsiPath = {
      get blocks() {
        return shared.blocks
      },
      execute: (cdb, dataOut, n, req) => {
        if (mediumRange(cdb)?.write) reached++
        return shared.execute(cdb, dataOut, n, req)
      },
    }
    const p = await coloPair(t, { guest: 'disklog', timeoutMs: 50, disk: { primary, secondary }, maxHeldWrites })
    const [a, b] = await Promise.all([p.pm.done, p.sm.done])
    return { a, b, reached, records: recordsOnDisk(file, capacity) }
  }
  const bounded = await run('bounded.raw', 32)
  t.match(bounded.a, { end: 'exit', exitCode: 0 }, 'the primary ran disklog to a full disk')
  t.equal(bounded.records, records, 'every record is on the shared disk')
  t.equal(bounded.reached, 0, 'no write of the secondary reached it')
  const held = bounded.b.ft.colo!.heldWritesMax!
  t.ok(held <= 32 + 8, `the secondary's buffer held at most ${held} writes (bound 32, a slice's few past it)`)
  const c = bounded.a.ft.colo!
  t.ok(c.resyncs.timeout + c.resyncs.mismatch > 0, `resyncs: ${JSON.stringify(c.resyncs)}`)
  const free = await run('free.raw', 1 << 20)
  t.ok(free.b.ft.colo!.heldWritesMax! > 40, `without the bound the secondary ran ahead: ${free.b.ft.colo!.heldWritesMax} writes held at once`)
  t.equal(free.records, records)
})

t.test('a secondary whose guest ended first takes a resync by running again from the primary\'s state: going live after it, every write is on the disk', async (t) => {
  // diskio: 64 chunks of 16 blocks from LBA 2048, each WRITE(10) then read back
  const CHUNK = 16
  const FIRST = 2048
  const dir = shmTmp(t, 'tandem-colo-rerun-')
  const file = join(dir, 'disk.raw')
  const dev = await RawFile.create(file, 4096 * 512)
  t.teardown(() => dev.close())
  const lu = new LogicalUnit(dev, { serial: 'vm' })
  const shared = logicalUnitPath(lu, 'iqn.2026-11.local.tandem:vm:vm1,i,0x000000000001')
  const secondary = logicalUnitPath(lu, 'iqn.2026-11.local.tandem:vm:vm1,i,0x000000000002')
  // the primary's writes from chunk 8 on wait until the test lets each through
  const gates = new Map<number, () => void>()
  const opened = new Set<number>()
  const open = (c: number) => {
    opened.add(c)
    gates.get(c)?.()
  }
  const primary: ScsiPath = {
    get blocks() {
      return shared.blocks
    },
    execute: async (cdb, dataOut, n, req) => {
      const r = mediumRange(cdb)
      const chunk = r?.write ? (r.lba - FIRST) / CHUNK : -1
      if (chunk >= 8 && !opened.has(chunk)) await new Promise<void>((go) => gates.set(chunk, go))
      return shared.execute(cdb, dataOut, n, req)
    },
  }
  const p = await coloPair(t, { guest: 'diskio', timeoutMs: 60_000, checkpointMs: 20, disk: { primary, secondary }, winner: 'secondary' })
  const until = async (what: string, ok: () => boolean) => {
    for (let i = 0; !ok(); i++) {
      if (i > 2000) throw new Error(`not within 20 s: ${what}`)
      await new Promise((r) => setTimeout(r, 10))
    }
  }
  // the primary holds at chunk 8 (a periodic resync it asked for waits for that write); the secondary runs diskio to its end
  await until('the secondary\'s guest ended', () => p.sm.m.ended === 'exit')
  // and the primary has asked for its periodic pause (it waits for chunk 8's write: opened before, it
  // would block on chunk 9's instead)
  await until('the primary\'s pause asked for', () => p.pm.m.pauseAsked)
  const acked = p.primary.status().colo!.syncMs.count
  open(8)
  // the resync taken at chunk 8's end reaches a secondary whose run ended: it runs again from it
  await until('the secondary acknowledged a resync after its end', () => p.primary.status().colo!.syncMs.count > acked)
  // the primary's host is gone while its chunk 9 waits: the secondary claims and goes live
  p.cut()
  const b = await p.sm.done
  for (let c = 9; c < 64; c++) open(c)
  const a = await p.pm.done
  t.match(b, { end: 'exit', exitCode: 0 }, 'the secondary ran diskio to its end')
  t.equal(b.ft.outcome, 'live', 'it went live')
  t.match(Buffer.from(p.console.secondary).toString(), /diskio: wrote and verified 1024 blocks/)
  t.equal(a.ft.outcome, 'halted', 'the primary lost the claim')
  const r = a.ft.colo!.resyncs
  t.ok(r.periodic >= 1 && r.mismatch + r.timeout + r.overflow === 0, `every resync periodic (--ft-colo-checkpoint-ms): ${JSON.stringify(r)}`)
  // every chunk on the shared disk, in diskio's pattern (the primary wrote 0-8 and maybe 9, the secondary the rest at going live)
  const bytes = readFileSync(file)
  const missing: number[] = []
  for (let c = 0; c < 64; c++) {
    const lba = FIRST + c * CHUNK
    const at = lba * 512
    for (let i = 0; i < (CHUNK * 512) / 4; i++) {
      if (bytes.readUInt32LE(at + i * 4) !== ((Math.imul(lba, 2654435761) ^ Math.imul(i, 40503) ^ 0xa5a5a5a5) >>> 0)) {
        missing.push(c)
        break
      }
    }
  }
  t.same(missing, [], 'every chunk is on the disk')
})

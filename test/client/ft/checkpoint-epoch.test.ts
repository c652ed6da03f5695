import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { setImmediate as turn } from 'node:timers/promises'
import { Machine, guestPath, logicalUnitPath } from '../../../src/client/vm/index.js'
import { LogicalUnit } from '../../../src/server/scsi/index.js'
import { RawFile } from '../../../src/disk-formats/index.js'
import { EpochApplier, EpochCapture } from '../../../src/client/ft/checkpoint/epoch.js'
import { RecordWriter, decodeRecords } from '../../../src/client/ft/checkpoint/epoch-codec.js'
import { DiffCandidates, STREAK_EPOCHS, applyDiff, decodeFeedback, diffPage } from '../../../src/client/ft/checkpoint/diff.js'
import { EpochWriteBuffer } from '../../../src/client/ft/checkpoint/write-buffer.js'
import { shmTmp } from '../../helpers/peers.js'
import { codeOf } from '../../helpers/ft-errors.js'
import { timersWithoutTime } from '../../helpers/timers.js'


t.test('epochs taken while memsweep runs, streamed while it runs on, rebuild on the other side exactly the state at each stop', async (t) => {
  const image = readFileSync(guestPath('memsweep'))
  const memory = 16 << 20
  // the guest's clock from its instruction count (10 per µs): its 3 s outlast the test on a busy machine
  let instret = () => 0
  const clock = { now: () => BigInt(instret()) * 100n, wall: () => 0n }
  // the run keeps its shortest slices (SLICE_MIN), a few each epoch, as the figures below assume
  const m: Machine = new Machine({ image, memory, maxInstructions: 12_000_000, clock, timers: timersWithoutTime })
  instret = () => m.hart.instret
  const capture = new EpochCapture(m.mem)
  const applier = new EpochApplier(new Machine({ image, memory }).mem.bytes)
  const running = m.run()
  const sum = { stopped: 0, running: 0, cow: 0, diffs: 0, bytes: 0, whole: 0 }
  for (let e = 1; e <= 14; e++) {
    for (let k = 0; k < 3; k++) await turn()
    // the first epoch past the guest's start (clearing its 2 MiB of .bss)
    await m.requestPause(e === 1 ? 3_000_000 : undefined)
    // inside the stop: what the backup must end up with
    const atStop = m.stateHash()
    const taken = capture.take(m)
    m.resume()
    for await (const b of taken.stream(() => turn())) applier.accept(b)
    const done = applier.end(taken.instret, taken.hash)
    t.equal(done.epoch, e)
    if (applier.candidates.changed) capture.feedback(decodeFeedback(applier.candidates.take(), capture.pages) as number[])
    const rebuilt = Machine.fromState({ ...done.state, memory: applier.image }, { image, memory }, { loadImage: false })
    t.equal(rebuilt.stateHash(), atStop, `epoch ${e}: state and memory as at the stop`)
    const f = taken.figures
    sum.stopped += f.stopped
    sum.running += f.running
    sum.cow += f.cowCopies
    sum.diffs += f.diffs
    sum.bytes += f.bytes
    sum.whole += f.wholeBytes
  }
  await running
  t.ok(sum.stopped > 0 && sum.running > 0, `pages copied in the stop (hot) ${sum.stopped}, sent while running (cold) ${sum.running}`)
  t.ok(sum.cow > 0, `${sum.cow} cold pages written by the guest before they were sent (copied first)`)
  t.ok(sum.diffs > 0, `${sum.diffs} pages sent as diffs`)
  t.ok(sum.bytes * 2 < sum.whole, `${sum.bytes} bytes sent for ${sum.whole} bytes of dirty pages`)
})

t.test('an epoch is applied whole or not at all; bad records are BadPayload', async (t) => {
  const image = new Uint8Array(16 * 4096)
  const a = new EpochApplier(image)
  const w = new RecordWriter()
  w.epoch(1, 0)
  w.page(3, Buffer.alloc(4096, 7))
  const [p] = w.take(true)
  a.accept(p)
  t.equal(codeOf(() => a.end(0, Buffer.alloc(32))), 'BadPayload', 'STATE_END whose hash does not match')
  t.equal(image[3 * 4096], 0, 'nothing of the epoch was applied')
  t.equal(a.epoch, 0)
  const w2 = new RecordWriter()
  w2.epoch(2, 0)
  t.equal(codeOf(() => a.accept(w2.take(true)[0])), 'BadPayload', 'an epoch out of order')
  t.equal(codeOf(() => decodeRecords(Buffer.from([9, 0, 0]), 16)), 'BadPayload', 'unknown kind')
  const far = new RecordWriter()
  far.page(16, Buffer.alloc(4096))
  t.equal(codeOf(() => decodeRecords(far.take(true)[0], 16)), 'BadPayload', 'a page beyond memory')
  t.equal(codeOf(() => decodeRecords(p.subarray(0, p.length - 1), 16)), 'BadPayload', 'a record cut short')
  t.equal(codeOf(() => a.accept(p.subarray(24))), 'BadPayload', 'a page before its epoch record')
})

t.test('diffs: segments of 64 bytes; the backup names a page after 3 small changes in a row, drops it after a large one', async (t) => {
  const a = Buffer.alloc(4096, 1)
  const b = Buffer.from(a)
  b[100] = 9
  b[4095] = 9
  const d = diffPage(a, b)!
  t.equal(d.mask, (1n << 1n) | (1n << 63n))
  t.equal(d.segments.length, 128)
  const c = Buffer.from(a)
  applyDiff(c, d.mask, d.segments)
  t.same(c, b)
  t.equal(diffPage(a, Buffer.alloc(4096, 2)), null, 'every segment changed: whole page')
  const dc = new DiffCandidates(8)
  for (let i = 0; i < STREAK_EPOCHS - 1; i++) dc.observe(5, 1)
  t.equal(dc.size, 0)
  dc.observe(5, 1)
  t.same(decodeFeedback(dc.take(), 8), [5])
  dc.observe(5, 40)
  t.ok(dc.changed)
  t.same(decodeFeedback(dc.take(), 8), [])
  t.match(decodeFeedback(Buffer.from([1, 0, 0, 0, 9, 0, 0, 0]), 8), /page 9/)
})

t.test('the write buffer: writes complete at once, are read back, reach the disk only once their epoch is acknowledged, in order', async (t) => {
  const dir = shmTmp(t, 'tandem-ckpt-wb-')
  const dev = await RawFile.create(join(dir, 'd.raw'), 1 << 20)
  t.teardown(() => dev.close())
  const path = logicalUnitPath(new LogicalUnit(dev, { serial: 'vm' }), 'iqn.2026-11.local.tandem:vm,i,0x000000000001')
  const wb = new EpochWriteBuffer(path)
  const rw = (op: number, lba: number, blocks: number) => {
    const c = Buffer.alloc(10)
    c[0] = op
    c.writeUInt32BE(lba, 2)
    c.writeUInt16BE(blocks, 7)
    return c
  }
  const onDisk = async (lba: number) => (await path.execute(rw(0x28, lba, 1), null, 512)).dataIn![0]
  t.equal((await wb.execute(rw(0x2a, 4, 2), Buffer.alloc(1024, 0xaa), 0)).status, 0)
  t.equal((await wb.execute(rw(0x2a, 5, 1), Buffer.alloc(512, 0xbb), 0)).status, 0)
  const back = (await wb.execute(rw(0x28, 3, 4), null, 2048)).dataIn!
  t.same([back[0], back[512], back[1024], back[1536]], [0, 0xaa, 0xbb, 0], 'the guest reads its writes, the latest per block')
  t.equal(await onDisk(4), 0, 'not on the disk before the acknowledgement')
  t.equal(wb.cut(1).length, 2)
  await wb.execute(rw(0x2a, 6, 1), Buffer.alloc(512, 0xcc), 0)
  t.equal(wb.cut(2).length, 1)
  await wb.acked(1)
  t.same([await onDisk(4), await onDisk(5), await onDisk(6)], [0xaa, 0xbb, 0], 'epoch 1 written through, epoch 2 not')
  t.equal(wb.writtenThrough, 1)
  await wb.execute(rw(0x2a, 6, 1), Buffer.alloc(512, 0xdd), 0)
  await wb.direct()
  t.equal(await onDisk(6), 0xdd, 'alone: every buffered write in order, the newest last')
  await wb.execute(rw(0x2a, 7, 1), Buffer.alloc(512, 0xee), 0)
  t.equal(await onDisk(7), 0xee, 'then writes go straight to the disk')
  const unmap = Buffer.alloc(10)
  unmap[0] = 0x42
  const wb2 = new EpochWriteBuffer(path)
  const r = await wb2.execute(unmap, Buffer.alloc(24), 0)
  t.equal(r.status, 2, 'a command that cannot be buffered: CHECK CONDITION')
  t.equal(r.sense![2] & 0xf, 5, 'ILLEGAL REQUEST')
})


t.test('the write buffer as a colo secondary\'s disk: nothing reaches the shared disk while paired; a resync drops the writes (reads see the disk again); going live writes what is held, in order, to the disk opened for writing', async (t) => {
  const dir = shmTmp(t, 'tandem-colo-wb-')
  const lu = async (name: string) => {
    const dev = await RawFile.create(join(dir, name), 1 << 20)
    t.teardown(() => dev.close())
    return logicalUnitPath(new LogicalUnit(dev, { serial: 'vm' }), 'iqn.2026-11.local.tandem:vm,i,0x000000000002')
  }
  const [shared, live] = [await lu('shared.raw'), await lu('live.raw')]
  const cdb = (op: number, lba: number) => {
    const c = Buffer.alloc(10)
    c[0] = op
    c.writeUInt32BE(lba, 2)
    c.writeUInt16BE(1, 7)
    return c
  }
  const block = async (p: typeof shared, lba: number) => (await p.execute(cdb(0x28, lba), null, 512)).dataIn![0]
  await shared.execute(cdb(0x2a, 2), Buffer.alloc(512, 0x11), 0)
  const wb = new EpochWriteBuffer(shared)
  await wb.execute(cdb(0x2a, 2), Buffer.alloc(512, 0x22), 0)
  t.equal(await block(wb, 2), 0x22, 'the secondary reads its own write')
  t.equal(await block(shared, 2), 0x11, 'the shared disk keeps the primary\'s')
  wb.drop()
  t.equal(wb.held, 0)
  t.equal(await block(wb, 2), 0x11, 'after a resync: the disk as the primary wrote it')
  await wb.execute(cdb(0x2a, 3), Buffer.alloc(512, 0x33), 0)
  await wb.execute(cdb(0x2a, 3), Buffer.alloc(512, 0x44), 0)
  await wb.direct(live)
  t.same([await block(live, 3), await block(shared, 3)], [0x44, 0], 'live: the held writes on the disk opened for writing, the newest last')
  await wb.execute(cdb(0x2a, 4), Buffer.alloc(512, 0x55), 0)
  t.equal(await block(live, 4), 0x55, 'then commands go straight to it')
})

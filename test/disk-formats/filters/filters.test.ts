import t from 'tap'
import { join } from 'node:path'
import { tmp, pattern, rng } from '../../helpers/peers.js'
import { RawFile, capabilitiesOf, isStorageError, type BlockDevice, type ComparesAndWrites } from '../../../src/disk-formats/index.js'
import { checked, counting, delay, dropWrites, error, readOnly, swappable } from '../../../src/disk-formats/filters/index.js'

const M = 1 << 20

async function raw(t: Parameters<typeof tmp>[0] & { teardown(fn: () => unknown): void }, size = M): Promise<RawFile> {
  const f = join(tmp(t), 'd.raw')
  await (await RawFile.create(f, size)).close()
  const dev = await RawFile.open(f)
  t.teardown(() => dev.close().catch(() => undefined))
  return dev
}

const code = (p: Promise<unknown>) => p.then(() => 'ok', (e) => (isStorageError(e) ? e.code : `untyped: ${String(e)}`))

/** Fake timers: `fire()` runs every timer set so far, in order. */
function fakeTimers() {
  const due: { fn: () => void; ms: number }[] = []
  return {
    due,
    setTimeout: (fn: () => void, ms: number) => due.push({ fn, ms }),
    fire: () => {
      for (const d of due.splice(0)) d.fn()
    },
  }
}

const settle = async () => {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r))
}

t.test('round trip through an export stack: checked(swappable(counting(raw)))', async (t) => {
  const inner = counting(await raw(t))
  const live = swappable(inner)
  const dev = checked(live)
  const data = pattern(8192, 1)
  await dev.write(4096, data, { fua: true })
  t.ok((await dev.read(4096, 8192)).equals(data), 'the bytes written read back')
  await dev.writeZeroes(4096, 4096)
  t.ok((await dev.read(4096, 4096)).equals(Buffer.alloc(4096)), 'zeroes read back')
  await dev.flush()
  t.same([inner.counts.write, inner.counts.writeZeroes, inner.counts.read, inner.counts.flush], [1, 1, 2, 1], 'each request reached the device once')
  t.equal(dev.size, M)
  t.equal(dev.readOnly, false)

  // swapped underneath: the stack answers from the new device
  const other = await raw(t)
  await other.write(0, pattern(512, 2))
  await live.pause()
  live.resume(other)
  t.ok((await dev.read(0, 512)).equals(pattern(512, 2)), 'after the swap, reads come from the new device')
  await dev.close()
  t.equal(await code(dev.read(0, 512)), 'IoError', 'closed')
})

t.test('checked: read-only, then range, then alignment, each a typed error that never reaches the device', async (t) => {
  const inner = counting(await raw(t))
  const dev = checked(inner, { alignment: 512 })
  t.equal(await code(dev.read(M - 512, 1024)), 'OutOfRange', 'read past the end')
  t.equal(await code(dev.write(M, Buffer.alloc(512))), 'OutOfRange', 'write past the end')
  t.equal(await code(dev.writeZeroes(-512, 512)), 'InvalidArgument', 'negative offset')
  t.equal(await code(dev.discard(2 ** 53, 512)), 'InvalidArgument', 'offset beyond 2^53')
  t.equal(await code(dev.blockStatus(0, M + 512)), 'OutOfRange', 'block status past the end')
  t.equal(await code(dev.read(100, 512)), 'InvalidArgument', 'unaligned offset')
  t.equal(await code(dev.write(0, Buffer.alloc(100))), 'InvalidArgument', 'unaligned length')
  t.equal(await code(dev.read(M - 512, 512)), 'ok', 'the last block')
  t.same(inner.counts, { read: 1, write: 0, writeZeroes: 0, discard: 0, flush: 0, blockStatus: 0, compareAndWrite: 0 }, 'only the valid request reached the device')

  const ro = checked(readOnly(inner))
  t.equal(ro.readOnly, true)
  t.equal(await code(ro.write(M, Buffer.alloc(512))), 'ReadOnly', 'a write to a read-only device: ReadOnly even past the end')
  t.equal(await code(ro.discard(0, 512)), 'ReadOnly')
  t.equal(await code(ro.flush()), 'ok', 'flush of a read-only device is fine')
  t.equal(inner.counts.write + inner.counts.discard, 0)
  t.throws(() => checked(inner, { alignment: 0 }), { code: 'InvalidArgument' })
})

t.test('dropWrites: reads pass; writes, zeroes, discards and flushes complete without reaching the device', async (t) => {
  const base = await raw(t)
  await base.write(0, pattern(4096, 3))
  const inner = counting(readOnly(base)) // a write that got through would fail, too
  const dev = dropWrites(inner)
  t.equal(dev.readOnly, false, 'writable to its user')
  await dev.write(0, pattern(4096, 4), { fua: true })
  await dev.writeZeroes(0, 4096, { mayUnmap: true })
  await dev.discard(0, 4096)
  await dev.flush()
  t.ok((await dev.read(0, 4096)).equals(pattern(4096, 3)), 'the device keeps its bytes')
  t.same(inner.counts, { read: 1, write: 0, writeZeroes: 0, discard: 0, flush: 0, blockStatus: 0, compareAndWrite: 0 }, 'nothing but the read was issued')
  t.same(capabilitiesOf(dev), { discard: false, compareAndWrite: false })
})

t.test('error: by op, offset range and probability, with an injected random source', async (t) => {
  const inner = counting(await raw(t))
  const dev = error(inner, { ops: ['write', 'flush'], range: { offset: 65536, length: 4096 }, code: 'NoSpace' })
  t.equal(await code(dev.write(65536 + 4095, Buffer.alloc(1))), 'NoSpace', 'a write overlapping the range fails')
  t.equal(await code(dev.write(65536 - 512, Buffer.alloc(512))), 'ok', 'a write ending where the range starts passes')
  t.equal(await code(dev.write(65536 + 4096, Buffer.alloc(512))), 'ok', 'a write starting where it ends passes')
  t.equal(await code(dev.read(65536, 4096)), 'ok', 'reads are not hit')
  t.equal(await code(dev.flush()), 'NoSpace', 'flush is hit whatever the range')
  t.equal(inner.counts.write, 2, 'the failed write never reached the device')

  const draws = [0.1, 0.9, 0.49, 0.5]
  const some = error(inner, { probability: 0.5, random: () => draws.shift()! })
  const got = []
  for (let i = 0; i < 4; i++) got.push(await code(some.read(0, 512)))
  t.same(got, ['IoError', 'ok', 'IoError', 'ok'], 'hit exactly when the draw is below the probability')

  const r = rng(7)
  const seeded = error(inner, { probability: 0.25, random: () => (r() % 1000) / 1000 })
  let failed = 0
  for (let i = 0; i < 400; i++) if ((await code(seeded.read(0, 512))) === 'IoError') failed++
  t.ok(failed > 50 && failed < 150, `about a quarter of 400 reads fail: ${failed}`)
})

t.test('delay: hit requests wait on the injected timers; the others go at once', async (t) => {
  const inner = counting(await raw(t))
  const timers = fakeTimers()
  const dev = delay(inner, { ms: (op) => (op === 'write' ? 30 : 5), ops: ['write', 'read'], range: { offset: 0, length: 4096 }, timers })
  let landed = false
  const w = dev.write(0, pattern(512, 5)).then(() => (landed = true))
  await settle()
  t.same(timers.due.map((d) => d.ms), [30], 'the write waits 30 ms')
  t.equal(inner.counts.write, 0, 'and has not reached the device')
  await dev.write(8192, pattern(512, 6))
  t.equal(inner.counts.write, 1, 'a write outside the range goes at once')
  t.notOk(landed)
  timers.fire()
  await w
  t.equal(inner.counts.write, 2, 'the delayed write lands when its timer fires')
  const r = dev.read(0, 512)
  await settle()
  t.same(timers.due.map((d) => d.ms), [5])
  timers.fire()
  t.ok((await r).equals(pattern(512, 5)))
})

t.test('capabilities pass through the stack; compare-and-write is offered only where the device has it', async (t) => {
  const disk = await raw(t)
  t.same(capabilitiesOf(checked(swappable(disk))), { discard: false, compareAndWrite: false }, 'a raw file frees nothing on discard')
  t.notOk('compareAndWrite' in checked(disk), 'no compareAndWrite over a device without one')

  const cas: BlockDevice & ComparesAndWrites = Object.assign(Object.create(disk) as RawFile, {
    capabilities: () => ({ discard: true, compareAndWrite: true }),
    compareAndWrite: async (o: number, e: Buffer, d: Buffer) => {
      if (!(await disk.read(o, e.length)).equals(e)) return false
      await disk.write(o, d)
      return true
    },
  })
  const stack = checked(error(cas, { ops: ['read'] })) as BlockDevice & Partial<ComparesAndWrites>
  t.same(capabilitiesOf(stack), { discard: true, compareAndWrite: true })
  t.equal(typeof stack.compareAndWrite, 'function')
  t.equal(await stack.compareAndWrite!(0, Buffer.alloc(512), pattern(512, 8)), true, 'through the stack')
  t.equal(await stack.compareAndWrite!(0, Buffer.alloc(512), pattern(512, 9)), false, 'miscompare')
  t.equal(await code(stack.compareAndWrite!(M, Buffer.alloc(512), Buffer.alloc(512))), 'OutOfRange', 'checked at the edge')
  t.same(capabilitiesOf(readOnly(cas)).discard, false, 'a read-only view discards nothing')
  t.notOk('compareAndWrite' in dropWrites(cas), 'dropWrites offers no compare-and-write')
})

t.test('swappable, writes held across a switch: reads go on; writes wait and land on the device current at release; flushes and FUA writes wait for the second release', async (t) => {
  const [a, b] = [counting(await raw(t)), counting(await raw(t))]
  const live = swappable(a)
  await live.pause()
  live.holdWrites()
  live.resume(b)
  const done: string[] = []
  const w = live.write(0, pattern(512, 1)).then(() => done.push('write'))
  const fua = live.write(512, pattern(512, 2), { fua: true }).then(() => done.push('fua'))
  const f = live.flush().then(() => done.push('flush'))
  const z = live.writeZeroes(1024, 512).then(() => done.push('zeroes'))
  t.same(await live.read(0, 512), Buffer.alloc(512), 'a read is served at once')
  await settle()
  t.same(done, [], 'nothing that changes the disk has run')
  t.same([b.counts.write, b.counts.writeZeroes, b.counts.flush], [0, 0, 0])
  live.releaseWrites({ flushes: 'held' })
  await Promise.all([w, z])
  await settle()
  t.same(done.sort(), ['write', 'zeroes'], 'plain writes go on at the first release')
  t.equal(b.counts.flush, 0, 'the flush still waits')
  live.releaseWrites()
  await Promise.all([fua, f])
  t.same([a.counts.write, a.counts.writeZeroes, a.counts.flush], [0, 0, 0], 'nothing reached the device switched away from')
  t.same([b.counts.write, b.counts.writeZeroes], [2, 1], 'every held request went to the device current at release')
  t.same(await live.read(0, 1024), Buffer.concat([pattern(512, 1), pattern(512, 2)]))
})

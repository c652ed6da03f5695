import t from 'tap'
import { randomBytes, randomFillSync } from 'node:crypto'
import { readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import {
  CheckpointError,
  CHUNK_HEAD_BYTES,
  HEADER_BYTES,
  TRAILER_BYTES,
  readCheckpoint,
  writeCheckpoint,
  type CheckpointErrorCode,
  type CheckpointSource,
} from '../../../src/client/vm/checkpoint-file.js'
import { rng, tmp } from '../../helpers/peers.js'

const PAGE = 4096
const MiB = 1 << 20
const sha = Buffer.alloc(32, 0xab)

const ZERO = Buffer.alloc(PAGE)
const isZero = (p: Uint8Array) => Buffer.from(p.buffer, p.byteOffset, p.length).equals(ZERO)

/** Guest memory of `pages` pages: a share `zeros` of them zero (seeded choice), the rest random. */
function guestMemory(pages: number, seed: number, zeros = 0.25): Uint8Array {
  const mem = randomFillSync(new Uint8Array(pages * PAGE))
  const r = rng(seed)
  for (let p = 0; p < pages; p++) {
    const page = mem.subarray(p * PAGE, (p + 1) * PAGE)
    if (r() / 2 ** 32 < zeros) page.fill(0)
    // some pages hold a single non-zero byte at a random place (they must not be taken for zero)
    else if (r() % 8 === 0) page.fill(0)[r() % PAGE] = 1 + (r() % 255)
  }
  return mem
}

/** A source over `mem`: zero pages are handed out as null or as zero bytes, alternately. */
function sourceOf(mem: Uint8Array, state: Buffer, name = 'vm-a'): CheckpointSource {
  const pages = mem.length / PAGE
  return {
    memoryBytes: mem.length,
    imageSha256: sha,
    instret: 123456789012,
    name,
    state,
    pages,
    page: (i) => {
      const p = mem.subarray(i * PAGE, (i + 1) * PAGE)
      return i % 2 === 0 && isZero(p) ? null : p
    },
  }
}

const zeroPagesOf = (mem: Uint8Array) => {
  let n = 0
  for (let o = 0; o < mem.length; o += PAGE) if (isZero(mem.subarray(o, o + PAGE))) n++
  return n
}

t.test('round trip: 64 MiB of random and zero pages, a random state, read straight into RAM', async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'vm.ckpt')
  const mem = guestMemory((64 * MiB) / PAGE, 7)
  const state = randomBytes(5000)
  const res = await writeCheckpoint(file, sourceOf(mem, state))
  const zeros = zeroPagesOf(mem)
  t.equal(res.zeroPages, zeros, 'zero pages (null or all-zero bytes) are not stored')
  t.equal(res.pagesWritten, mem.length / PAGE - zeros)
  t.equal(res.bytes, readFileSync(file).length, 'bytes is the file size')
  t.equal(res.bytes, HEADER_BYTES + state.length + 64 * (CHUNK_HEAD_BYTES + 4) + res.pagesWritten * PAGE + TRAILER_BYTES, 'the file is header, state, chunks of stored pages, trailer')
  t.same(readdirSync(dir), ['vm.ckpt'], 'no temporary file left')

  const ck = await readCheckpoint(file, { memoryBytes: 64 * MiB, imageSha: sha })
  t.match(ck.header, { version: 1, memoryBytes: 64 * MiB, pageBytes: PAGE, instret: 123456789012, name: 'vm-a', stateBytes: 5000, chunkCount: 64, fileBytes: res.bytes, nonZeroPages: res.pagesWritten })
  t.ok(ck.header.imageSha256.equals(sha))
  t.ok(ck.state.equals(state), 'the state blob reads back')
  const ram = new Uint8Array(64 * MiB).fill(0xaa) // zero pages must be zeroed, not left as they were
  await ck.loadMemory(ram)
  t.ok(Buffer.from(ram.buffer).equals(Buffer.from(mem.buffer)), 'guest memory reads back byte for byte')
})

t.test('memory that is not a whole number of chunks; an empty state; no name', async (t) => {
  const file = join(tmp(t), 'odd.ckpt')
  const mem = guestMemory(300, 3)
  await writeCheckpoint(file, { ...sourceOf(mem, Buffer.alloc(0)), name: undefined })
  const ck = await readCheckpoint(file)
  t.equal(ck.header.chunkCount, 2)
  t.equal(ck.header.name, '')
  t.equal(ck.state.length, 0)
  const ram = new Uint8Array(300 * PAGE)
  await ck.loadMemory(ram)
  t.ok(Buffer.from(ram).equals(Buffer.from(mem)))
})

t.test('golden layout: header, state, a chunk and the trailer at the offsets SPEC.md gives', async (t) => {
  const file = join(tmp(t), 'g.ckpt')
  const mem = new Uint8Array(2 * PAGE)
  mem.fill(0x5a, PAGE)
  await writeCheckpoint(file, { memoryBytes: 2 * PAGE, imageSha256: sha, instret: 1.5, name: 'vm1', state: Buffer.from('st'), pages: 2, page: (i) => (i ? mem.subarray(PAGE) : null) })
  const f = readFileSync(file)
  const u32 = (o: number) => f.readUInt32LE(o)
  t.equal(f.toString('latin1', 0, 8), 'TNDMCKPT')
  t.same([u32(8), u32(12), u32(16), u32(20)], [1, 0, 168, 4096], 'version, flags, header bytes, page bytes')
  t.equal(f.readBigUInt64LE(24), 8192n, 'memory bytes')
  t.equal(f.readDoubleLE(32), 1.5, 'instruction count')
  t.ok(f.subarray(40, 72).equals(sha), 'image SHA-256')
  t.same([u32(72), u32(76), u32(80), u32(84)], [2, crc32c(Buffer.from('st')), 256, 1], 'state bytes and CRC, chunk pages, chunk count')
  t.equal(f.readBigUInt64LE(88), 170n, 'memory offset')
  t.equal(u32(96), 3)
  t.equal(f.toString('utf8', 100, 103), 'vm1')
  t.equal(u32(164), crc32c(f.subarray(0, 164)), 'header CRC')
  t.equal(f.toString('latin1', 168, 170), 'st')
  const c = 170
  t.same([u32(c), u32(c + 4), f.readUInt16LE(c + 8), f.readUInt16LE(c + 10), f[c + 12], f[c + 13]], [0, 0, 2, 1, 0b10, 0], 'chunk 0: index, first page, 2 pages, 1 stored, bitmap')
  t.equal(CHUNK_HEAD_BYTES, 44)
  t.ok(f.subarray(c + 44, c + 44 + PAGE).equals(Buffer.alloc(PAGE, 0x5a)), 'the stored page')
  const crcAt = c + 44 + PAGE
  t.equal(u32(crcAt), crc32c(f.subarray(c, crcAt)), 'chunk CRC over head and pages')
  const tr = crcAt + 4
  t.equal(f.length, tr + 32)
  t.equal(f.toString('latin1', tr, tr + 8), 'TNDMCEND')
  t.equal(f.readBigUInt64LE(tr + 8), BigInt(f.length), 'file bytes')
  t.same([u32(tr + 16), u32(tr + 20), u32(tr + 24), u32(tr + 28)], [1, crc32c(f.subarray(crcAt, crcAt + 4)), u32(164), crc32c(f.subarray(tr, tr + 28))], 'stored pages, CRC of chunk CRCs, header CRC, trailer CRC')
})

t.test('the writer runs in the background: the VM gets turns, pages are copied when taken', async (t) => {
  const file = join(tmp(t), 'bg.ckpt')
  const pages = (16 * MiB) / PAGE
  const ram = guestMemory(pages, 11)
  const atCheckpoint = Uint8Array.from(ram)
  let taken = 0
  const src = { ...sourceOf(ram, Buffer.from('s')), page: (i: number) => ((taken = i + 1), ram.subarray(i * PAGE, (i + 1) * PAGE)) }
  // the "guest" scribbles over every page the writer has already taken, whenever it gets a turn
  let turns = 0
  let running = true
  const guest = () => {
    if (!running) return
    turns++
    ram.fill(turns & 0xff, 0, taken * PAGE)
    setImmediate(guest)
  }
  setImmediate(guest)
  const progress: number[] = []
  let lastBytes = 0
  const res = await writeCheckpoint(file, src, { yieldEvery: 256, onProgress: (p) => (progress.push(p.pagesDone), (lastBytes = p.bytes)) })
  t.equal(lastBytes, res.bytes - TRAILER_BYTES, 'progress counts the bytes encoded')
  running = false
  t.ok(turns >= pages / 256 - 1, `the event loop turned between chunks (${turns} turns, ${pages / 256} chunks)`)
  t.same(progress, Array.from({ length: pages / 256 }, (_, i) => (i + 1) * 256), 'progress after each chunk')
  const ck = await readCheckpoint(file)
  const back = new Uint8Array(pages * PAGE)
  await ck.loadMemory(back)
  t.ok(Buffer.from(back).equals(Buffer.from(atCheckpoint)), 'the file holds each page as it was when taken, not the later writes')
})

t.test("the VM's thread does not checksum guest memory: chunk CRCs come from the worker", async (t) => {
  let mainBytes = 0
  const counted = (buf: Uint8Array, crc?: number) => ((mainBytes += buf.length), crc32c(buf, crc))
  const file = join(tmp(t), 'w.ckpt')
  const mem = guestMemory((16 * MiB) / PAGE, 12, 0)
  const res = await writeCheckpoint(file, sourceOf(mem, Buffer.alloc(1000, 1)), { checksum: counted })
  t.ok(mainBytes < 4096, `this thread checksummed ${mainBytes} bytes (header, state, chunk CRCs, trailer) of a ${res.bytes}-byte file`)
  const ck = await readCheckpoint(file)
  const back = new Uint8Array(mem.length)
  await ck.loadMemory(back)
  t.ok(Buffer.from(back).equals(Buffer.from(mem)), 'the chunks pass their CRCs and read back')
})

t.test('a cancelled write removes its temporary file and leaves the previous checkpoint', async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'c.ckpt')
  const mem = guestMemory(2048, 5)
  await writeCheckpoint(file, sourceOf(mem, Buffer.from('old')))
  const before = readFileSync(file)
  const ac = new AbortController()
  const other = guestMemory(2048, 6)
  await t.rejects(
    writeCheckpoint(file, sourceOf(other, Buffer.from('new')), { signal: ac.signal, onProgress: (p) => p.pagesDone === 512 && ac.abort() }),
    { name: 'CheckpointError', code: 'aborted', message: `writing the checkpoint '${file}' was cancelled` },
  )
  t.same(readdirSync(dir), ['c.ckpt'], 'the temporary file is gone')
  t.ok(readFileSync(file).equals(before), 'the previous checkpoint is untouched')
  ac.abort()
  await t.rejects(writeCheckpoint(file, sourceOf(other, Buffer.from('new')), { signal: ac.signal }), { code: 'aborted' }, 'an aborted signal writes nothing')
  t.same(readdirSync(dir), ['c.ckpt'])
})

t.test("a killed writer's temporary files are ignored by readers and removed by the next writer", async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'k.ckpt')
  writeFileSync(`${file}.tmp-0123456789ab`, 'TNDMCKPT torn')
  writeFileSync(join(dir, 'other.ckpt.tmp-0123456789ab'), 'not ours')
  writeFileSync(`${file}.tmp-notours`, 'not a temp name')
  await t.rejects(readCheckpoint(file), { code: 'io' }, 'no checkpoint yet: a temporary file is not one')
  await writeCheckpoint(file, sourceOf(guestMemory(256, 1), Buffer.from('s')))
  t.same(readdirSync(dir).sort(), ['k.ckpt', 'k.ckpt.tmp-notours', 'other.ckpt.tmp-0123456789ab'])
})

t.test('writer arguments out of bounds are refused before any file is made', async (t) => {
  const dir = tmp(t)
  const file = join(dir, 'x.ckpt')
  const ok = sourceOf(new Uint8Array(PAGE), Buffer.alloc(0))
  await t.rejects(writeCheckpoint(file, { ...ok, pages: 2 }), RangeError)
  await t.rejects(writeCheckpoint(file, { ...ok, name: 'é'.repeat(33) }), { message: /66 bytes of UTF-8, a checkpoint holds at most 64/ })
  await t.rejects(writeCheckpoint(file, { ...ok, imageSha256: Buffer.alloc(20) }), RangeError)
  await t.rejects(writeCheckpoint(file, { ...ok, page: () => new Uint8Array(100) }), { message: /page 0 is 100 bytes/ })
  t.same(readdirSync(dir), [])
  await t.rejects(writeCheckpoint(join(dir, 'no', 'such', 'dir.ckpt'), ok), { name: 'CheckpointError', code: 'io', message: /^cannot write the checkpoint '.*dir\.ckpt': ENOENT/ })
})

t.test('bad checkpoint files end in their typed error', async (t) => {
  const dir = tmp(t)
  const good = join(dir, 'good.ckpt')
  const mem = guestMemory(600, 9, 0.8) // 3 chunks, mostly zero pages (so that changes land in heads too)
  const state = randomBytes(300)
  await writeCheckpoint(good, sourceOf(mem, state))
  const bytes = readFileSync(good)
  const stateAt = HEADER_BYTES
  const chunk0 = HEADER_BYTES + state.length
  const trailerAt = bytes.length - TRAILER_BYTES
  let n = 0
  const variant = (f: (b: Buffer) => Buffer) => {
    const p = join(dir, `bad-${n++}.ckpt`)
    writeFileSync(p, f(Buffer.from(bytes)))
    return p
  }
  const flip = (at: number) => (b: Buffer) => ((b[at] ^= 0x10), b)
  /** opens and loads: a file is accepted only when both succeed */
  const load = async (p: string, opts = {}) => {
    const ck = await readCheckpoint(p, opts)
    await ck.loadMemory(new Uint8Array(mem.length))
  }
  const refused = async (p: string, code: CheckpointErrorCode, message?: string | RegExp, opts = {}) => {
    const e = await load(p, opts).then(
      () => null,
      (e: unknown) => e,
    )
    t.type(e, CheckpointError, `${code}: a CheckpointError`)
    t.match(e, { code, file: p, ...(message === undefined ? {} : { message }) }, `${code}: ${(e as Error)?.message}`)
  }

  await refused(variant(() => Buffer.alloc(0)), 'magic')
  let p = variant(flip(0))
  await refused(p, 'magic', `'${p}' is not a Tandem checkpoint (no TNDMCKPT header)`)
  await refused(variant(() => Buffer.from('hello world, this is not a checkpoint at all')), 'magic')
  p = variant((b) => (b.writeUInt32LE(2, 8), b))
  await refused(p, 'version', `'${p}': checkpoint version 2, this Tandem reads 1`)
  p = variant(flip(33)) // instret
  await refused(p, 'crc', `'${p}': the header fails its CRC`)
  p = variant((b) => (b.writeUInt32LE(1, 12), b.writeUInt32LE(crc32c(b.subarray(0, 164)), 164), b))
  await refused(p, 'version', /flags 0x1, this Tandem knows none/)
  p = variant((b) => (b.writeUInt32LE(8192, 20), b.writeUInt32LE(crc32c(b.subarray(0, 164)), 164), b))
  await refused(p, 'corrupt', /page size is 8192/)
  p = variant(flip(stateAt + 7))
  await refused(p, 'crc', `'${p}': the VM state fails its CRC`)
  p = variant(flip(chunk0 + CHUNK_HEAD_BYTES + 2 * PAGE + 5))
  await refused(p, 'crc', `'${p}': memory chunk 0 fails its CRC`)
  p = variant(flip(chunk0 + 12)) // chunk 0's bitmap
  await refused(p, 'crc', `'${p}': memory chunk 0 fails its CRC`)
  p = variant(flip(trailerAt - 6)) // the last page of chunk 2
  await refused(p, 'crc', `'${p}': memory chunk 2 fails its CRC`)
  p = variant(flip(trailerAt + 17))
  await refused(p, 'crc', `'${p}': the commit record fails its CRC`)
  p = variant((b) => Buffer.concat([b, Buffer.alloc(10)]))
  await refused(p, 'truncated', /no TNDMCEND commit record at its end/)

  // cut anywhere: never accepted
  const r = rng(17)
  const cuts = [1, 4, 8, 11, 12, 100, HEADER_BYTES - 1, HEADER_BYTES, chunk0, chunk0 + 1, trailerAt, bytes.length - 1, ...Array.from({ length: 40 }, () => 1 + (r() % (bytes.length - 1)))]
  for (const cut of cuts) {
    p = variant((b) => b.subarray(0, cut))
    await refused(p, 'truncated', new RegExp(`^'${p.replace(/[.]/g, '\\.')}' is truncated at byte ${cut} \\(`))
  }

  // any one byte changed anywhere: never accepted
  for (let i = 0; i < 300; i++) {
    const at = i < 200 ? r() % bytes.length : chunk0 - 10 + (r() % (CHUNK_HEAD_BYTES + 20))
    const e = await load(variant((b) => ((b[at] ^= 1 + (r() % 255)), b))).then(
      () => null,
      (e: unknown) => e,
    )
    if (!(e instanceof CheckpointError)) t.fail(`a change at byte ${at} was accepted (${String(e)})`)
  }
  t.pass('300 single-byte changes all refused with a CheckpointError')

  await refused(good, 'memory-size', `'${good}' holds 2457600 bytes of guest memory, this VM has 64 MiB`, { memoryBytes: 64 * MiB })
  const other = Buffer.alloc(32, 0xcd)
  await refused(good, 'image', /was taken of guest image abababababababab…, this VM runs cdcdcdcdcdcdcdcd…/, { imageSha: other })
  const ck = await readCheckpoint(good)
  await t.rejects(ck.loadMemory(new Uint8Array(PAGE)), { code: 'memory-size', message: `'${good}' holds 2457600 bytes of guest memory, this VM has 4096 bytes` })
  await refused(join(dir, 'missing.ckpt'), 'io', /^cannot read the checkpoint '.*missing\.ckpt': ENOENT/)
  t.notOk(existsSync(join(dir, 'missing.ckpt')))
})

t.test('memory sizes: a 256 MiB checkpoint is refused by a 64 MiB VM; 1 GiB of mostly zero memory is cheap', async (t) => {
  const dir = tmp(t)
  const big = join(dir, '256.ckpt')
  const none = (pages: number) => ({ memoryBytes: pages * PAGE, imageSha256: sha, instret: 0, state: Buffer.alloc(8), pages, page: () => null })
  await writeCheckpoint(big, none((256 * MiB) / PAGE))
  await t.rejects(readCheckpoint(big, { memoryBytes: 64 * MiB }), { name: 'CheckpointError', code: 'memory-size', message: `'${big}' holds 256 MiB of guest memory, this VM has 64 MiB` })

  const gib = join(dir, '1g.ckpt')
  const pages = (1024 * MiB) / PAGE
  const fill = (i: number) => Buffer.alloc(PAGE, (i % 251) + 1)
  const res = await writeCheckpoint(gib, { ...none(pages), page: (i) => (i % 1000 === 0 ? fill(i) : null) })
  t.equal(res.pagesWritten, Math.ceil(pages / 1000))
  t.ok(res.bytes < 2 * MiB, `1 GiB with ${res.pagesWritten} non-zero pages takes ${res.bytes} bytes`)
  const ck = await readCheckpoint(gib, { memoryBytes: 1024 * MiB })
  const ram = new Uint8Array(1024 * MiB)
  await ck.loadMemory(ram, { zeroed: true }) // a new VM's RAM: zero pages are left untouched
  let wrong = 0
  for (let i = 0; i < pages; i += 37) {
    const p = ram.subarray(i * PAGE, (i + 1) * PAGE)
    if (!(i % 1000 === 0 ? Buffer.from(p).equals(fill(i)) : isZero(p))) wrong++
  }
  t.equal(wrong, 0, 'sampled pages of the 1 GiB image read back')
})

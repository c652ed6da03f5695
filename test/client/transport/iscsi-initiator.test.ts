import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'
import { join } from 'node:path'
import { IscsiInitiator, parseIscsiUri } from '../../../src/client/transport/iscsi/index.js'
import { CLI, needs, pattern, sh, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { needsTgtd, startTgtd } from '../../helpers/tgtd.js'

const IQN = 'iqn.2026-11.local.tandem:'
const run = promisify(execFile)


t.test('URIs as libiscsi writes them', async (t) => {
  t.same(parseIscsiUri('iscsi://127.0.0.1:3261/iqn.x:d/0'), { host: '127.0.0.1', port: 3261, target: 'iqn.x:d', lun: 0 })
  t.same(parseIscsiUri('iscsi://u%p@h/iqn.x:d/1'), { host: 'h', port: 3260, target: 'iqn.x:d', lun: 1, user: 'u', password: 'p' })
  t.throws(() => parseIscsiUri('iscsi://h/iqn'), { code: 'InvalidArgument' })
  t.throws(() => parseIscsiUri('iscsi://h/iqn/300'), { code: 'InvalidArgument' })
})

t.test('against Tandem\'s target: reads, writes, zeroes, COMPARE AND WRITE, digests, bytes seen by qemu-img', needs('qemu-img'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('d', 16 << 20)
  for (const digests of [false, true]) {
    const uri = `iscsi://127.0.0.1:${s.iscsiPort}/${IQN}d/0`
    const c = await IscsiInitiator.connect(uri, { headerDigest: digests, dataDigest: digests })
    t.equal(c.size, 16 << 20, 'READ CAPACITY(16)')
    const a = pattern(3 << 20, digests ? 11 : 10) // larger than one burst: immediate data, then R2T/Data-Out
    const b = pattern(4096, 2)
    await Promise.all([c.write(0, a), c.write(8 << 20, b, { fua: true })])
    const [ra, rb] = await Promise.all([c.read(0, 3 << 20), c.read(8 << 20, 4096)])
    t.ok(ra.equals(a) && rb.equals(b), `read back (digests ${digests})`)
    await c.writeZeroes(0, 1 << 20)
    t.ok((await c.read(0, 1 << 20)).equals(Buffer.alloc(1 << 20)), 'WRITE SAME zeroes')
    const cur = await c.read(8 << 20, 512)
    t.equal(await c.compareAndWrite(8 << 20, Buffer.alloc(512, 0xee), Buffer.alloc(512, 1)), false, 'miscompare: not written')
    t.ok((await c.read(8 << 20, 512)).equals(cur))
    t.equal(await c.compareAndWrite(8 << 20, cur, Buffer.alloc(512, 1)), true, 'compare matched: written')
    t.ok((await c.read(8 << 20, 512)).equals(Buffer.alloc(512, 1)))
    await c.flush()
    await t.rejects(c.read(c.size - 512, 1024), { code: 'OutOfRange' })
    await t.rejects(c.read(1, 512), { code: 'InvalidArgument' })
    await c.close()
  }
  const out = join(tmp(t, 'tandem-ini-'), 'copy.raw')
  // asynchronously: the target runs in this process
  await run('qemu-img', ['convert', '-O', 'raw', `iscsi://127.0.0.1:${s.iscsiPort}/${IQN}d/0`, out])
  const got = readFileSync(out)
  t.ok(got.subarray(1 << 20, 3 << 20).equals(pattern(3 << 20, 11).subarray(1 << 20)), 'qemu-img reads what the initiator wrote')
  t.ok(got.subarray(8 << 20, (8 << 20) + 512).equals(Buffer.alloc(512, 1)))
  await t.rejects(IscsiInitiator.connect(`iscsi://127.0.0.1:${s.iscsiPort}/${IQN}nope/0`), { code: 'NotFound' }, 'unknown target')
  // tandem disk info|convert with iscsi:// source and destination (the CLI is another process)
  const lu = `iscsi://127.0.0.1:${s.iscsiPort}/${IQN}d/0`
  const info = JSON.parse((await run(process.execPath, [CLI, 'disk', 'info', '--json', lu])).stdout)
  t.same(info, { 'virtual-size': 16 << 20, filename: lu, format: 'raw' }, 'disk info --json of an iscsi:// LU')
  const back = join(tmp(t, 'tandem-ini-'), 'back.raw')
  await run(process.execPath, [CLI, 'disk', 'convert', '-O', 'raw', lu, back])
  t.ok(readFileSync(back).equals(got), 'disk convert from iscsi:// equals qemu-img convert\'s copy')
  const src = join(tmp(t, 'tandem-ini-'), 'src.raw')
  const content = Buffer.alloc(16 << 20)
  pattern(1 << 20, 99).copy(content, 5 << 20)
  writeFileSync(src, content)
  await run(process.execPath, [CLI, 'disk', 'convert', src, lu])
  const c = await IscsiInitiator.connect(lu)
  t.ok((await c.read(0, 16 << 20)).equals(content), 'disk convert into iscsi:// overwrites the LU: data copied, the rest zeroed')
  await c.close()
})

t.test('against tgtd: the same bytes through libiscsi\'s qemu-img; COMPARE AND WRITE refused as tgt lacks it', { ...needs('qemu-img'), ...needsTgtd() }, async (t) => {
  const d = tmp(t, 'tandem-tgt-')
  const file = join(d, 'lun.raw')
  sh('truncate', ['-s', '8M', file])
  const uri = await startTgtd(t, file)
  const c = await IscsiInitiator.connect(uri)
  t.equal(c.size, 8 << 20)
  const data = pattern(2 << 20, 5)
  await c.write(1 << 20, data)
  await c.flush()
  t.ok((await c.read(1 << 20, 2 << 20)).equals(data), 'read back from tgtd')
  await t.rejects(c.compareAndWrite(0, Buffer.alloc(512), Buffer.alloc(512, 1)), { code: 'Unsupported' }, 'tgtd has no COMPARE AND WRITE: a clear refusal')
  await c.close()
  t.ok(readFileSync(file).subarray(1 << 20, 3 << 20).equals(data), 'tgtd\'s backing file holds the bytes')
})

/**
 * 32 commands in flight, reads and writes of 4 KiB to 1 MiB at random places (Data-In of many
 * commands interleaved, large segments received in place, several PDUs per write), digests on and
 * off: every read returns what a model of the LU holds; then the LU's bytes through qemu-img.
 */
async function mixedLoad(t: Test, uri: string, size: number, digests: boolean, seed: number): Promise<Buffer> {
  const c = await IscsiInitiator.connect(uri, { headerDigest: digests, dataDigest: digests, queueDepth: 32 })
  const model = Buffer.alloc(size)
  await c.write(0, model)
  let x = seed
  const rnd = (n: number) => ((x = (x * 1103515245 + 12345) >>> 0) >>> 8) % n
  // 64 KiB units in use: a write takes units no command uses, a read units no write uses
  const writing = new Set<number>()
  const reading = new Map<number, number>()
  let bad = 0
  let checked = 0
  const op = async (i: number) => {
    const len = [4096, 8192, 65536, 262144, 1 << 20][rnd(5)]
    const off = rnd((size - len) / 4096) * 4096
    const units = Array.from({ length: Math.ceil((off + len) / 65536) - Math.floor(off / 65536) }, (_, k) => Math.floor(off / 65536) + k)
    if (units.some((u) => writing.has(u))) return
    if (i % 3 === 0) {
      if (units.some((u) => reading.has(u))) return
      const data = pattern(len, seed + i)
      units.forEach((u) => writing.add(u))
      await c.write(off, data)
      data.copy(model, off)
      units.forEach((u) => writing.delete(u))
    } else {
      units.forEach((u) => reading.set(u, (reading.get(u) ?? 0) + 1))
      const want = Buffer.from(model.subarray(off, off + len))
      const got = i % 2 ? await c.read(off, len) : Buffer.alloc(len + 512)
      if (!(i % 2)) await c.readInto(off, len, got, 512)
      if (!(i % 2 ? got : got.subarray(512)).equals(want)) bad++
      checked++
      units.forEach((u) => (reading.get(u) === 1 ? reading.delete(u) : reading.set(u, reading.get(u)! - 1)))
    }
  }
  let next = 0
  await Promise.all(Array.from({ length: 32 }, async () => {
    while (next < 240) await op(next++)
  }))
  t.ok(checked > 60, `digests ${digests}: ${checked} reads checked`)
  t.equal(bad, 0, `digests ${digests}: every read returned what the model holds`)
  t.ok((await c.read(0, size)).equals(model), `digests ${digests}: the whole LU as written`)
  await c.close()
  return model
}

t.test('QD32 mixed reads and writes, digests on and off: Tandem\'s target', needs('qemu-img'), async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('m', 16 << 20)
  const uri = `iscsi://127.0.0.1:${s.iscsiPort}/${IQN}m/0`
  await mixedLoad(t, uri, 16 << 20, false, 1)
  const model = await mixedLoad(t, uri, 16 << 20, true, 2)
  const out = join(tmp(t, 'tandem-ini-'), 'm.raw')
  await run('qemu-img', ['convert', '-O', 'raw', uri, out])
  t.ok(readFileSync(out).equals(model), 'qemu-img (libiscsi) reads the same bytes')
})

t.test('QD32 mixed reads and writes, digests on and off: tgtd', { ...needs('qemu-img'), ...needsTgtd() }, async (t) => {
  const file = join(tmp(t, 'tandem-tgt-'), 'lun.raw')
  sh('truncate', ['-s', '16M', file])
  const uri = await startTgtd(t, file)
  await mixedLoad(t, uri, 16 << 20, false, 3)
  const model = await mixedLoad(t, uri, 16 << 20, true, 4)
  t.ok(readFileSync(file).equals(model), 'tgtd\'s backing file holds the model')
})

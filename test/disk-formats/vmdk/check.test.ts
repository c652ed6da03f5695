import t from 'tap'
import { openSync, writeSync, closeSync, readFileSync, truncateSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { needs, shStatus, tandem, tmp, pattern } from '../../helpers/peers.js'
import { openVmdk, createVmdk, checkImage, VmdkImage, SparseHeaderStruct } from '../../../src/disk-formats/index.js'

/** A 64 MiB sparse disk (GD/rGD with 2 tables each) with grains 0..3 and grain 600 written. */
async function makeDisk(dir: string): Promise<{ path: string; data: Buffer }> {
  const path = join(dir, 'd.vmdk')
  await createVmdk(path, { size: 64 << 20 })
  const img = await openVmdk(path)
  const a = pattern(4 * 65536, 1)
  const b = pattern(65536, 2)
  await img.write(0, a)
  await img.write(600 * 65536, b)
  await img.close()
  const data = Buffer.alloc(64 << 20)
  a.copy(data, 0)
  b.copy(data, 600 * 65536)
  return { path, data }
}

function header(path: string) {
  return SparseHeaderStruct.decode(readFileSync(path).subarray(0, 512))
}

function poke(path: string, offset: number, value: number, bytes = 4) {
  const fd = openSync(path, 'r+')
  const b = Buffer.alloc(bytes)
  if (bytes === 4) b.writeUInt32LE(value >>> 0)
  else b.writeUInt8(value)
  writeSync(fd, b, 0, bytes, offset)
  closeSync(fd)
}

function check(path: string, ...flags: string[]) {
  const r = tandem(['disk', 'check', ...flags, path])
  return { ...r, json: flags.includes('--json') ? JSON.parse(r.stdout) : undefined }
}

async function content(path: string): Promise<Buffer> {
  const img = await openVmdk(path, { readOnly: true })
  try {
    return await img.read(0, img.size)
  } finally {
    await img.close()
  }
}

t.test('a clean disk checks clean', async (t) => {
  const { path } = await makeDisk(tmp(t))
  const r = check(path, '--json')
  t.equal(r.status, 0)
  t.equal(r.json.corruptions, 0)
  t.equal(r.json.leaks, 0)
  t.equal(r.json['allocated-clusters'], 5)
})

t.test('GD entry 0: corruption; repair rebuilds it from the redundant GD', async (t) => {
  const { path, data } = await makeDisk(tmp(t))
  const h = header(path)
  poke(path, h.gdOffset * 512 + 0, 0)
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /grain directory entry 0 is 0 \(no grain table\); the redundant copy is intact/)
  // qemu-img misses it (it reads the range as zeros) — Tandem refuses to read silently wrong data
  await t.rejects(content(path), { code: 'Corrupt', message: /grain directory entry 0 is 0 but the redundant directory has a table/ }, 'reads fail loudly, not zeros')
  const fixed = check(path, '--repair', '--json')
  t.equal(fixed.status, 0, fixed.stdout)
  t.equal(fixed.json['corruptions-fixed'], 1)
  t.ok((await content(path)).equals(data), 'data back after repair')
})

t.test('GD entry past EOF: corruption, reads fail instead of returning zeros, repair fixes', async (t) => {
  const { path, data } = await makeDisk(tmp(t))
  const h = header(path)
  poke(path, h.gdOffset * 512 + 4, 0xdeadbeef)
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /grain directory entry 1 points past the end of the file \(sector 3735928559/)
  await t.rejects(content(path), { code: 'Corrupt', message: /grain directory entry 1 points past the end of the file/ })
  if (!needs('qemu-img').skip) {
    t.equal(shStatus('qemu-img', ['check', path]).status, 0, 'qemu-img check misses it (reference §3)')
  }
  t.equal(check(path, '--repair').status, 0)
  t.ok((await content(path)).equals(data))
})

t.test('redundant GD damaged: corruption; repair rebuilds from the primary', async (t) => {
  const { path } = await makeDisk(tmp(t))
  const h = header(path)
  poke(path, h.rgdOffset * 512, 0xffffff)
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /redundant grain directory entry 0 points past the end of the file.*the primary copy is intact/)
  t.equal(check(path, '--repair').status, 0)
  t.equal(check(path).status, 0)
})

t.test('GT and redundant GT disagree: corruption; repair takes the valid side', async (t) => {
  const { path, data } = await makeDisk(tmp(t))
  const h = header(path)
  const rgt = readFileSync(path).readUInt32LE(h.rgdOffset * 512)
  poke(path, rgt * 512 + 4, 0x7fffff) // redundant GTE of grain 1: garbage
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /grain table 0 entry 1 \(grain 1\) differs: primary \d+, redundant 8388607/)
  t.equal(check(path, '--repair').status, 0)
  t.ok((await content(path)).equals(data))
})

t.test('GTE past EOF: corruption (qemu-img also sees it), reads fail', async (t) => {
  const { path } = await makeDisk(tmp(t))
  const h = header(path)
  const buf = readFileSync(path)
  for (const dir of [h.gdOffset, h.rgdOffset]) poke(path, buf.readUInt32LE(dir * 512) * 512 + 8, 0x100000)
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /cluster offset for sector 256 points after EOF/)
  await t.rejects(content(path), { code: 'Corrupt', message: /points after EOF/ })
  if (!needs('qemu-img').skip) t.not(shStatus('qemu-img', ['check', path]).status, 0, 'qemu-img check agrees')
})

t.test('a grain used twice: corruption', async (t) => {
  const { path } = await makeDisk(tmp(t))
  const h = header(path)
  const buf = readFileSync(path)
  for (const dir of [h.gdOffset, h.rgdOffset]) {
    const gt = buf.readUInt32LE(dir * 512) * 512
    poke(path, gt + 12, buf.readUInt32LE(gt + 8)) // grain 3 -> grain 2's sector
  }
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /grain at sector \d+ is used twice: by grain 2 and grain 3/)
})

t.test('GTE into the metadata: corruption', async (t) => {
  const { path } = await makeDisk(tmp(t))
  const h = header(path)
  const buf = readFileSync(path)
  for (const dir of [h.gdOffset, h.rgdOffset]) poke(path, buf.readUInt32LE(dir * 512) * 512, 1) // 1 without zeroed-grain flag = descriptor
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /grain 0 \(sector 1\) points into the metadata/)
})

t.test('leaked grains: exit 3; repair moves tail grains into holes and truncates', async (t) => {
  const { path, data } = await makeDisk(tmp(t))
  const h = header(path)
  const buf = readFileSync(path)
  for (const dir of [h.gdOffset, h.rgdOffset]) poke(path, buf.readUInt32LE(dir * 512) * 512 + 4, 0) // drop grain 1 (a hole mid-file)
  data.fill(0, 65536, 131072)
  const size = statSync(path).size
  const r = check(path, '--json')
  t.equal(r.status, 3, 'leaks only')
  t.equal(r.json.leaks, 1)
  t.equal(r.json.corruptions, 0)
  const fixed = check(path, '--repair', '--json')
  t.equal(fixed.status, 0)
  t.equal(fixed.json['leaks-fixed'], 1)
  t.equal(statSync(path).size, size - 65536, 'the file shrank by one grain')
  t.ok((await content(path)).equals(data), 'content unchanged by the repair')
  if (!needs('qemu-img').skip) t.equal(shStatus('qemu-img', ['check', path]).status, 0)
})

t.test('truncation: exit 2 with a message', async (t) => {
  const { path } = await makeDisk(tmp(t))
  truncateSync(path, statSync(path).size - 32768)
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /grain 600 at sector \d+ is truncated/)
  truncateSync(path, 1000)
  const r2 = check(path)
  t.equal(r2.status, 2)
  t.match(r2.stdout, /truncated/)
})

t.test('a bad descriptor: exit 2 with the line', async (t) => {
  const { path } = await makeDisk(tmp(t))
  const buf = readFileSync(path)
  const text = buf.subarray(512, 512 * 21).toString('latin1')
  const broken = text.replace(/CID=[0-9a-f]+/, 'CID=zz')
  const fd = openSync(path, 'r+')
  writeSync(fd, Buffer.from(broken, 'latin1'), 0, broken.length, 512)
  closeSync(fd)
  const r = check(path)
  t.equal(r.status, 2)
  t.match(r.stdout, /invalid descriptor, line 3: CID 'zz' is not a 32-bit hex number/)
})

t.test('check on files that are not VMDK, or missing', async (t) => {
  const d = tmp(t)
  const r = tandem(['disk', 'check', join(d, 'nope.vmdk')])
  t.equal(r.status, 1)
  t.match(r.stdout + r.stderr, /No such file or directory/)
  const raw = join(d, 'x.raw')
  const fd = openSync(raw, 'w')
  writeSync(fd, Buffer.alloc(4096, 7))
  closeSync(fd)
  const r2 = tandem(['disk', 'check', raw])
  t.equal(r2.status, 2)
  t.match(r2.stdout, /not a VMDK image/)
})

t.test('uncleanShutdown is set while open for write and cleared on close', async (t) => {
  const { path } = await makeDisk(tmp(t))
  t.equal(header(path).uncleanShutdown, 0)
  const img = await VmdkImage.open(path)
  await img.write(0, Buffer.alloc(512, 1))
  t.equal(header(path).uncleanShutdown, 1)
  await img.close()
  t.equal(header(path).uncleanShutdown, 0)
  const r = await checkImage(path)
  t.equal(r.corruptions, 0)
})

t.test('a redundant entry not yet written (killed between the two entry writes): leak-class, repaired', async (t) => {
  const { path, data } = await makeDisk(tmp(t))
  const h = header(path)
  const rgt = readFileSync(path).readUInt32LE(h.rgdOffset * 512)
  poke(path, rgt * 512 + 600 % 512 * 4 + 0, 0) // grain 600 is in table 1; use grain 2 of table 0 instead
  poke(path, rgt * 512 + 2 * 4, 0)
  const r = check(path, '--json')
  t.equal(r.status, 3, 'harmless: exit 3')
  t.equal(r.json.corruptions, 0)
  t.match(r.json.messages.join('\n'), /entry 2 \(grain 2\): the redundant entry was not yet updated/)
  t.ok((await content(path)).equals(data), 'reads are unaffected')
  t.equal(check(path, '--repair').status, 0)
  t.equal(check(path).status, 0)
})

import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, sh, shStatus, tandem, tmp, pattern } from '../../helpers/peers.js'
import { openImage, openVmdk, VmdkImage } from '../../../src/disk-formats/index.js'

const qemu = needs('qemu-img', 'qemu-io')

/** Reads a whole device. */
async function readAll(path: string): Promise<Buffer> {
  const dev = await openImage(path, { readOnly: true })
  try {
    return await dev.read(0, dev.size)
  } finally {
    await dev.close()
  }
}

function qemuRaw(path: string, dir: string): Buffer {
  const out = join(dir, 'q-' + Math.random().toString(36).slice(2) + '.raw')
  sh('qemu-img', ['convert', '-O', 'raw', path, out])
  return readFileSync(out)
}

function io(file: string, ...cmds: string[]) {
  sh('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), file])
}

t.test('a chain of three made by qemu-img reads identically', qemu, async (t) => {
  const d = tmp(t)
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', join(d, 'base.vmdk'), '16M'])
  io(join(d, 'base.vmdk'), 'write -P 0x11 0 3M', 'write -P 0x12 8M 100k')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', join(d, 'mid.vmdk')])
  io(join(d, 'mid.vmdk'), 'write -P 0x21 1M 4k', 'write -P 0x22 9M 1M', 'write -z 2M 64k')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'mid.vmdk', '-F', 'vmdk', join(d, 'top.vmdk')])
  io(join(d, 'top.vmdk'), 'write -P 0x31 1M 512', 'write -P 0x32 15M 1M', 'write -P 0x33 3000k 7k')
  const ours = await readAll(join(d, 'top.vmdk'))
  t.ok(ours.equals(qemuRaw(join(d, 'top.vmdk'), d)), 'content equals qemu-img convert')
  const tm = tandem(['disk', 'map', '--json', join(d, 'top.vmdk')])
  const qm = sh('qemu-img', ['map', '--output=json', join(d, 'top.vmdk')])
  t.equal(tm.stdout, qm, 'map --json is byte-identical to qemu-img map --output=json')
  const ti = JSON.parse(tandem(['disk', 'info', '--json', join(d, 'top.vmdk')]).stdout)
  const qi = JSON.parse(sh('qemu-img', ['info', '--output=json', join(d, 'top.vmdk')]))
  for (const k of ['virtual-size', 'format', 'cluster-size', 'backing-filename', 'format-specific']) t.same(ti[k], qi[k], `info ${k}`)
})

t.test('split, flat and stream files made by qemu-img read identically', qemu, async (t) => {
  const d = tmp(t)
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(5 << 20)
  pattern(1 << 20, 7).copy(data, 0)
  pattern(300 << 10, 8).copy(data, 3 << 20)
  writeFileSync(src, data)
  for (const sub of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
    const f = join(d, `${sub}.vmdk`)
    sh('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, src, f])
    t.ok((await readAll(f)).equals(data), `${sub}: content equals the source`)
  }
  // A split disk larger than 2 GiB: three extents; data on both sides of an extent boundary.
  const big = join(d, 'big.vmdk')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', big, '5G'])
  io(big, 'write -P 0x5a 2047M 2M', 'write -P 0x5b 4G 64k')
  const img = await openVmdk(big, { readOnly: true })
  const across = await img.read(2047 * 2 ** 20, 2 << 20)
  const tail = await img.read(4 * 2 ** 30, 65536)
  await img.close()
  t.ok(across.every((b) => b === 0x5a), 'data across the 2 GiB extent boundary')
  t.ok(tail.every((b) => b === 0x5b), 'data in the third extent')
  // zeroed grains: GTE 1 reads zero and does not fall through to the parent
  const zb = join(d, 'zb.vmdk')
  const zc = join(d, 'zc.vmdk')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', zb, '4M'])
  io(zb, 'write -P 0x77 0 4M')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', '-b', 'zb.vmdk', '-F', 'vmdk', zc])
  io(zc, 'write -z 64k 128k')
  t.ok((await readAll(zc)).equals(qemuRaw(zc, d)), 'zeroed grains read like qemu')
})

t.test('disks and deltas written by Tandem pass qemu-img check and compare', qemu, async (t) => {
  const d = tmp(t)
  const src = join(d, 'src.raw')
  const data = Buffer.alloc(6 << 20)
  pattern(2 << 20, 1).copy(data, 512 << 10)
  pattern(64 << 10, 2).copy(data, 5 << 20)
  writeFileSync(src, data)
  for (const type of ['sparse', 'flat', 'split-sparse', 'split-flat', 'stream']) {
    const f = join(d, `${type}.vmdk`)
    const r = tandem(['disk', 'convert', '-f', 'raw', '--type', type, src, f])
    t.equal(r.status, 0, `convert --type ${type}: ${r.stderr}`)
    t.equal(shStatus('qemu-img', ['check', f]).status, 0, `${type}: qemu-img check clean`)
    const cmp = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', src, f])
    t.equal(cmp.status, 0, `${type}: qemu-img compare identical (${cmp.stdout.trim()})`)
  }
  // Tandem delta on a Tandem base, written by Tandem with partial grains (COW).
  const base = join(d, 'sparse.vmdk')
  const child = join(d, 'child.vmdk')
  t.equal(tandem(['disk', 'create', child, '-b', base]).status, 0)
  const img = await openVmdk(child)
  await img.write(1000 * 512, Buffer.alloc(3000, 0xee))
  await img.write(5 * 2 ** 20 + 4096, Buffer.alloc(512, 0xdd))
  await img.close()
  data.fill(0xee, 1000 * 512, 1000 * 512 + 3000)
  data.fill(0xdd, 5 * 2 ** 20 + 4096, 5 * 2 ** 20 + 4608)
  t.equal(shStatus('qemu-img', ['check', child]).status, 0, 'delta: qemu-img check clean')
  const cmp = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', src.replace('src', 'src'), child])
  t.not(cmp.status, 0, 'delta differs from the old source')
  writeFileSync(join(d, 'expect.raw'), data)
  const cmp2 = shStatus('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', join(d, 'expect.raw'), child])
  t.equal(cmp2.status, 0, `delta read by qemu equals the expected content (${cmp2.stdout.trim()})`)
  t.equal(tandem(['disk', 'check', child]).status, 0, 'tandem check clean')
})

t.test('a Tandem delta written by qemu-io and committed by Tandem', qemu, async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  const child = join(d, 'child.vmdk')
  const grand = join(d, 'grand.vmdk')
  t.equal(tandem(['disk', 'create', base, '--size', '8M']).status, 0)
  io(base, 'write -P 0x01 0 8M')
  t.equal(tandem(['disk', 'create', child, '-b', base]).status, 0)
  io(child, 'write -P 0x02 1M 64k', 'write -P 0x03 3M 1000', 'write -z 6M 128k')
  t.equal(tandem(['disk', 'create', grand, '-b', child]).status, 0)
  io(grand, 'write -P 0x04 7M 4k')
  const before = qemuRaw(grand, d)
  const childBefore = qemuRaw(child, d)
  const r = tandem(['disk', 'commit', child])
  t.equal(r.status, 0, `commit: ${r.stderr}`)
  t.ok(qemuRaw(base, d).equals(childBefore), 'the parent now holds the committed chain content')
  t.ok(qemuRaw(child, d).equals(childBefore), 'the child reads the same content through qemu (parentCID updated, not stale)')
  t.ok(qemuRaw(grand, d).equals(before), 'the grandchild is unchanged')
  t.ok((await readAll(grand)).equals(before), 'Tandem reads the grandchild unchanged')
  for (const f of [base, child, grand]) {
    t.equal(shStatus('qemu-img', ['check', f]).status, 0, `qemu-img check ${f}`)
    t.equal(tandem(['disk', 'check', f]).status, 0, `tandem check ${f}`)
  }
  const ci = JSON.parse(tandem(['disk', 'info', '--json', child]).stdout)
  const bi = JSON.parse(tandem(['disk', 'info', '--json', base]).stdout)
  t.equal(ci['parent-cid'], bi.cid, "the child's parentCID is the parent's new CID")
  t.ok(ci['actual-size'] <= 128 << 10, `the committed child was emptied (${ci['actual-size']} bytes)`)
})

t.test('commit into a parent half allocated: runs over allocated and new grains give what qemu-img commit gives', qemu, async (t) => {
  const d = tmp(t)
  const sides = ['tandem', 'qemu'].map((side) => {
    const base = join(d, `${side}-base.vmdk`)
    const child = join(d, `${side}-child.vmdk`)
    t.equal(tandem(['disk', 'create', base, '--size', '8M']).status, 0)
    io(base, 'write -P 0x01 0 4M')
    t.equal(tandem(['disk', 'create', child, '-b', base]).status, 0)
    // a run across the end of the parent's data (two grains allocated there, two new), one in its data, one past it
    io(child, 'write -P 0x05 3968k 256k', 'write -P 0x06 1M 64k', 'write -P 0x07 7M 192k')
    return { side, base, child }
  })
  const want = qemuRaw(sides[0].child, d)
  t.equal(tandem(['disk', 'commit', sides[0].child]).status, 0, 'tandem disk commit')
  t.equal(shStatus('qemu-img', ['commit', sides[1].child]).status, 0, 'qemu-img commit')
  t.ok(qemuRaw(sides[0].base, d).equals(want), "the parent holds the child's content")
  t.equal(shStatus('qemu-img', ['compare', sides[0].base, sides[1].base]).status, 0, "qemu-img compare: Tandem's parent equals qemu-img's")
  t.equal(shStatus('qemu-img', ['check', sides[0].base]).status, 0, 'qemu-img check: clean')
  t.equal(tandem(['disk', 'check', sides[0].base]).status, 0, 'tandem check: clean')
})

t.test('a chain whose parentCID does not match refuses to open', qemu, async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  const child = join(d, 'child.vmdk')
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', base, '1M'])
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', child])
  io(base, 'write -P 1 0 512') // changes the base's CID
  await t.rejects(openVmdk(child), { code: 'ChainMismatch', message: /child\.vmdk.*expects parent CID [0-9a-f]{8}.*base\.vmdk.*has CID [0-9a-f]{8}/ })
  const r = tandem(['disk', 'map', child])
  t.equal(r.status, 1)
  t.match(r.stderr, /^tandem: '.*child\.vmdk' expects parent CID/)
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line, no stack trace')
  t.equal(tandem(['disk', 'check', child]).status, 2, 'check reports the broken link as corruption')
})

t.test('rebase keeps content, and qemu reads the rebased chain', qemu, async (t) => {
  const d = tmp(t)
  const a = join(d, 'a.vmdk')
  const b = join(d, 'b.vmdk')
  const c = join(d, 'c.vmdk')
  for (const [f, p] of [[a, 0xa1], [b, 0xb1]] as const) {
    t.equal(tandem(['disk', 'create', f, '--size', '4M']).status, 0)
    io(f, `write -P ${p} 0 2M`)
  }
  io(b, 'write -P 0xa1 0 1M') // b shares its first MiB with a
  t.equal(tandem(['disk', 'create', c, '-b', a]).status, 0)
  io(c, 'write -P 0xc1 3M 64k')
  const before = qemuRaw(c, d)
  const r = tandem(['disk', 'rebase', c, '-b', b])
  t.equal(r.status, 0, r.stderr)
  t.ok(qemuRaw(c, d).equals(before), 'content unchanged after rebase (qemu reads it)')
  const map = await (async () => {
    const img = await VmdkImage.open(c, { readOnly: true })
    const runs = await img.layerStatus(0, img.size)
    await img.close()
    return runs
  })()
  const copied = map.filter((x) => x.kind === 'data').reduce((n, x) => n + x.length, 0)
  t.equal(copied, (1 << 20) + 65536, 'only the differing MiB was copied (plus the existing grain)')
  t.equal(tandem(['disk', 'rebase', c, '-b', '']).status, 0, 'rebase onto no parent')
  t.ok(qemuRaw(c, d).equals(before), 'content unchanged, now standalone')
  t.equal(shStatus('qemu-img', ['check', c]).status, 0)
})

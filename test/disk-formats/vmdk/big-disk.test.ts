import t from 'tap'
import { closeSync, openSync, readSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { needs, sh, shStatus, tandem, tmp, pattern } from '../../helpers/peers.js'
import { checkImage, createVmdk, openVmdk, SparseHeaderStruct } from '../../../src/disk-formats/index.js'
import { geometry } from '../../../src/disk-formats/vmdk/sparse-header.js'

const qemu = needs('qemu-img', 'qemu-io')
const TiB = 2 ** 40

function bytesAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r')
  try {
    const b = Buffer.alloc(length)
    readSync(fd, b, 0, length, offset)
    return b
  } finally {
    closeSync(fd)
  }
}

const onDisk = (path: string) => statSync(path).blocks * 512

t.test('a 2 TiB sparse disk is what qemu-img creates: same header, same directories, GTs left as a hole', qemu, async (t) => {
  const d = tmp(t)
  const ours = join(d, 'ours.vmdk')
  const theirs = join(d, 'theirs.vmdk')
  await createVmdk(ours, { size: 2 * TiB })
  sh('qemu-img', ['create', '-q', '-f', 'vmdk', theirs, '2T'])
  t.ok(onDisk(ours) < 2 << 20, `${onDisk(ours)} bytes on disk (qemu-img: ${onDisk(theirs)})`)
  t.equal(statSync(ours).size, statSync(theirs).size, 'same file length (overHead)')
  const head = bytesAt(ours, 0, 512)
  t.ok(head.equals(bytesAt(theirs, 0, 512)), 'same header')
  const h = SparseHeaderStruct.decode(head)
  const geo = geometry(h)
  for (const [what, at] of [['redundant GD', h.rgdOffset], ['GD', h.gdOffset]] as const) {
    t.ok(bytesAt(ours, at * 512, geo.gdSectors * 512).equals(bytesAt(theirs, at * 512, geo.gdSectors * 512)), `same ${what}`)
  }
  t.equal(shStatus('qemu-img', ['check', ours]).status, 0, 'qemu-img check: clean')
  // qemu writes into the lazily-backed tables; Tandem reads it, writes its own, qemu reads that.
  sh('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x61 1900G 64k', ours])
  const img = await openVmdk(ours)
  t.ok((await img.read(1900 * 2 ** 30, 65536)).equals(Buffer.alloc(65536, 0x61)), 'Tandem reads what qemu wrote')
  await img.write(2 * TiB - 4096, Buffer.alloc(4096, 0x77))
  await img.write(12345 * 512, pattern(512, 8))
  await img.close()
  const q = shStatus('qemu-io', ['-f', 'vmdk', '-c', 'read -P 0x61 1900G 64k', '-c', `read -P 0x77 ${2 * TiB - 4096} 4096`, '-c', `read -P 0 ${2 * TiB - 8192} 4096`, ours])
  t.notMatch(q.stdout + q.stderr, /Pattern verification failed|error/i, 'qemu reads what Tandem wrote')
  const r = await checkImage(ours)
  t.equal(r.corruptions + r.leaks + r['check-errors'], 0, `tandem check: clean (${r.messages.join('; ')})`)
  t.equal(r['allocated-clusters'], 3)
  t.equal(shStatus('qemu-img', ['check', ours]).status, 0, 'qemu-img check: clean after writes')
  const back = await openVmdk(ours, { readOnly: true })
  t.ok((await back.read(2 * TiB - 4096, 4096)).equals(Buffer.alloc(4096, 0x77)))
  t.ok((await back.read(12345 * 512, 512)).equals(pattern(512, 8)))
  await back.close()
})

t.test('100 TiB works as with qemu-img (25 MiB of directories); past 2^32 grains the size is refused, naming the limit', async (t) => {
  const d = tmp(t)
  const f = join(d, 'big.vmdk')
  await createVmdk(f, { size: 100 * TiB })
  t.ok(onDisk(f) < 32 << 20, `${onDisk(f)} bytes on disk`)
  const img = await openVmdk(f)
  t.equal(img.size, 100 * TiB)
  await img.write(99 * TiB, pattern(65536, 9))
  await img.close()
  const back = await openVmdk(f, { readOnly: true })
  t.ok((await back.read(99 * TiB, 65536)).equals(pattern(65536, 9)))
  await back.close()

  const stream = join(d, 'stream.vmdk')
  await createVmdk(stream, { size: 100 * TiB, subformat: 'streamOptimized' })
  const s = await openVmdk(stream, { readOnly: true })
  t.equal(s.size, 100 * TiB, 'an empty 100 TiB stream file')
  await s.close()

  for (const sub of ['monolithicSparse', 'streamOptimized'] as const) {
    await t.rejects(createVmdk(join(d, `too-big-${sub}.vmdk`), { size: 256 * TiB, subformat: sub }), {
      code: 'InvalidArgument',
      message: new RegExp(`a ${sub} disk holds at most 281474976645120 bytes \\(2\\^32 - 1 grains of 65536 bytes\\)`),
    })
  }
  const cli = tandem(['disk', 'create', join(d, 'cli.vmdk'), '--size', '300T'])
  t.equal(cli.status, 1)
  t.match(cli.stderr, /^tandem: invalid size 329853488332800: a monolithicSparse disk holds at most 281474976645120 bytes/)
})

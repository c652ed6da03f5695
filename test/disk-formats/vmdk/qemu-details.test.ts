import t from 'tap'
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, sh, shStatus, tandem, tmp, pattern } from '../../helpers/peers.js'
import { checkImage, convert, createVmdk, VmdkImage, type BlockDevice, type Extent } from '../../../src/disk-formats/index.js'

const qemu = needs('qemu-img')

/** A memory device: `data` as a disk (every byte reported as data). */
function memory(data: Buffer): BlockDevice {
  return {
    size: data.length,
    readOnly: true,
    read: async (o, l) => Buffer.from(data.subarray(o, o + l)),
    blockStatus: async (offset, length): Promise<Extent[]> => [{ offset, length, data: true, zero: false, depth: 0, present: true }],
    write: async () => {},
    writeZeroes: async () => {},
    discard: async () => {},
    flush: async () => {},
    close: async () => {},
  }
}

const vmfs = (line: string) =>
  `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\n${line}\n\n# The Disk Data Base\n#DDB\nddb.adapterType = "lsilogic"\n`

t.test('a VMFS extent line with an offset is refused, as qemu refuses it (iotest 059)', async (t) => {
  const d = tmp(t)
  writeFileSync(join(d, 'x.raw'), Buffer.alloc(1 << 20))
  const bad = join(d, 'offset.vmdk')
  writeFileSync(bad, vmfs('RW 12582912 VMFS "x.raw" 1'))
  await t.rejects(VmdkImage.open(bad, { readOnly: true }), { code: 'Corrupt', message: /line 8: VMFS extent 'RW 12582912 VMFS "x.raw" 1' must not have an offset/ })
  if (!qemu.skip) t.match(shStatus('qemu-img', ['info', bad]).stderr, /Invalid extent line: RW 12582912 VMFS "x.raw" 1/, 'qemu refuses it too')
  const cli = tandem(['disk', 'info', bad])
  t.equal(cli.status, 1)
  t.match(cli.stderr, /^tandem: .*must not have an offset\n$/)
  // without the offset it opens, and reads past the end of the 1 MiB file are zeros (as qemu)
  const ok = join(d, 'ok.vmdk')
  writeFileSync(ok, vmfs('RW 12582912 VMFS "x.raw"'))
  const img = await VmdkImage.open(ok, { readOnly: true })
  t.equal(img.size, 12582912 * 512)
  t.ok((await img.read((1 << 20) - 512, 1024)).equals(Buffer.alloc(1024)))
  await img.close()
})

t.test('check of a streamOptimized image: image-end-offset is the file size, not grains counted whole', async (t) => {
  const d = tmp(t)
  const data = Buffer.alloc(4 << 20)
  Buffer.alloc(1 << 20, 0x11).copy(data, 0)
  pattern(65536, 3).copy(data, 2 << 20) // one incompressible grain: its marker and data exceed 64 KiB
  data.fill(0x22, (4 << 20) - 65536) // the last grain compresses to a few bytes
  const f = join(d, 's.vmdk')
  await convert(memory(data), f, { to: 'vmdk', subformat: 'streamOptimized' })
  const size = statSync(f).size
  const r = await checkImage(f)
  t.equal(r.corruptions + r.leaks + r['check-errors'], 0, r.messages.join('; '))
  t.equal(r['allocated-clusters'], 18)
  t.equal(r['image-end-offset'], size, `image-end-offset ${r['image-end-offset']}, file ${size} bytes`)
  if (!qemu.skip) {
    sh('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', f, join(d, 'q.vmdk')])
    const q = await checkImage(join(d, 'q.vmdk'))
    t.equal(q['image-end-offset'], statSync(join(d, 'q.vmdk')).size, "qemu's stream layout: the file size too")
    t.equal(q.corruptions, 0)
  }
})

t.test("disk info text has qemu-img's per-extent lines (compressed, cluster size, format)", qemu, async (t) => {
  const d = tmp(t)
  const raw = join(d, 'r.raw')
  writeFileSync(raw, Buffer.concat([Buffer.alloc(1 << 20, 0x11), Buffer.alloc(3 << 20)]))
  const files = {
    stream: join(d, 'st.vmdk'),
    sparse: join(d, 'ms.vmdk'),
    split: join(d, 'sp.vmdk'),
    flat: join(d, 'fl.vmdk'),
  }
  sh('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, files.stream])
  await createVmdk(files.sparse, { size: 64 << 20 })
  await createVmdk(files.split, { size: 3 * 2 ** 30, subformat: 'twoGbMaxExtentSparse' })
  await createVmdk(files.flat, { size: 3 * 2 ** 30, subformat: 'monolithicFlat' })
  for (const [kind, f] of Object.entries(files)) {
    const ours = tandem(['disk', 'info', f])
    t.equal(ours.status, 0, ours.stderr)
    t.equal(ours.stdout, sh('qemu-img', ['info', f]), `${kind}: same text as qemu-img info`)
  }
  t.match(tandem(['disk', 'info', files.stream]).stdout, /\[0\]:\n {12}compressed: true\n {12}virtual size: 4194304\n {12}filename: .*st\.vmdk\n {12}cluster size: 65536\n {12}format: \n/)
})

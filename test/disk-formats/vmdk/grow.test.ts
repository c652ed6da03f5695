import t, { type Test } from 'tap'
import { join } from 'node:path'
import { needs, sh, shStatus, tmp, pattern } from '../../helpers/peers.js'
import { checkImage, createVmdk, growVmdk, VmdkImage } from '../../../src/disk-formats/vmdk/index.js'
import { openVmdk } from '../../../src/disk-formats/chain/index.js'

const qemu = needs('qemu-img', 'qemu-io')
const MiB = 2 ** 20

function qio(file: string, ...cmds: string[]): string {
  return sh('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), file])
}

async function write(path: string, offset: number, data: Buffer): Promise<void> {
  const img = await VmdkImage.open(path)
  try {
    await img.write(offset, data)
  } finally {
    await img.close()
  }
}

/** Grows a written disk to `to` and checks it with qemu and Tandem: size, check, old bytes, zeros, and a qemu write at the new end. */
async function growAndCheck(t: Test, to: number, what: string): Promise<void> {
  const d = tmp(t)
  const f = join(d, 'g.vmdk')
  await createVmdk(f, { size: 3 * MiB })
  await write(f, 0, pattern(MiB, 5))
  await write(f, 3 * MiB - 4096, Buffer.alloc(4096, 0x77))
  const gdBefore = (await VmdkImage.open(f, { readOnly: true }).then(async (i) => [i.sparseExtents()[0].extent.header.gdOffset, await i.close()]))[0]
  t.same(await growVmdk(f, to), { from: 3 * MiB, to }, `${what}: grown`)
  const img = await VmdkImage.open(f, { readOnly: true })
  const h = img.sparseExtents()[0].extent.header
  t.equal(img.size, to, 'Tandem reads the new size')
  t.equal(img.descriptor.extents[0].sectors, to / 512, 'descriptor extent line follows')
  t.equal(h.uncleanShutdown, 0, 'closed clean')
  t.equal(h.gdOffset !== gdBefore, what === 'relocated', `${what}: the grain directory ${what === 'relocated' ? 'moved' : 'stayed'}`)
  t.ok((await img.read(0, MiB)).equals(pattern(MiB, 5)), 'old bytes read back (Tandem)')
  t.ok((await img.read(to - MiB, MiB)).equals(Buffer.alloc(MiB)), 'the new end reads zeros (Tandem)')
  await img.close()
  t.equal(JSON.parse(sh('qemu-img', ['info', '--output=json', f]))['virtual-size'], to, 'qemu-img info shows the new size')
  const qc = shStatus('qemu-img', ['check', f])
  t.equal(qc.status, 0, `qemu-img check clean: ${qc.stdout}${qc.stderr}`)
  const tc = await checkImage(f)
  t.same([tc.corruptions, tc.leaks], [0, 0], `Tandem check clean: ${tc.messages.join('; ')}`)
  t.match(qio(f, `read -P 0x77 ${3 * MiB - 4096} 4096`, `read -P 0 ${3 * MiB} ${MiB}`, `read -P 0 ${to - 65536} 65536`), /read 65536\/65536/, 'qemu-io reads old bytes and zeros')
  qio(f, `write -P 0x3c ${to - 8192} 8192`)
  t.match(qio(f, `read -P 0x3c ${to - 8192} 8192`), /read 8192\/8192/, 'qemu-io writes and reads the new end')
  t.equal(shStatus('qemu-img', ['check', f]).status, 0, 'qemu-img check clean after the write')
  const after = await checkImage(f)
  t.same([after.corruptions, after.leaks], [0, 0], `Tandem check clean after the write: ${after.messages.join('; ')}`)
}

t.test('grow with the grain directory in place (its sector has room)', qemu, (t) => growAndCheck(t, 64 * MiB, 'in place'))
t.test('grow with the grain directories moved to the end of the file', qemu, (t) => growAndCheck(t, 10 * 2 ** 30, 'relocated'))

t.test('a grown delta reads its smaller parent, then zeros', qemu, async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  await createVmdk(base, { size: 2 * MiB })
  await write(base, 2 * MiB - 4096, Buffer.alloc(4096, 0x42))
  const p = await VmdkImage.open(base, { readOnly: true })
  const cid = p.cid
  await p.close()
  const top = join(d, 'top.vmdk')
  await createVmdk(top, { size: 2 * MiB, parent: { path: base, cid } })
  await growVmdk(top, 6 * MiB)
  const chain = await openVmdk(top, { readOnly: true })
  t.equal(chain.size, 6 * MiB)
  t.ok((await chain.read(2 * MiB - 4096, 4096)).equals(Buffer.alloc(4096, 0x42)), 'the parent\'s bytes')
  t.ok((await chain.read(2 * MiB, 4 * MiB)).equals(Buffer.alloc(4 * MiB)), 'zeros past the parent\'s end')
  await chain.close()
  t.match(qio(top, `read -P 0x42 ${2 * MiB - 4096} 4096`, `read -P 0 ${2 * MiB} ${4 * MiB}`), /read 4194304\/4194304/, 'qemu-io agrees')
})

t.test('bad grows are refused with typed errors and change nothing', async (t) => {
  const d = tmp(t)
  const f = join(d, 'g.vmdk')
  await createVmdk(f, { size: 4 * MiB })
  await t.rejects(growVmdk(f, 2 * MiB), { code: 'InvalidArgument', message: /cannot shrink/ })
  await t.rejects(growVmdk(f, -1), { code: 'InvalidArgument' })
  await t.rejects(growVmdk(f, 2 ** 60), { code: 'InvalidArgument' })
  const flat = join(d, 'flat.vmdk')
  await createVmdk(flat, { size: MiB, subformat: 'monolithicFlat' })
  await t.rejects(growVmdk(flat, 2 * MiB), { code: 'Unsupported' })
  const img = await VmdkImage.open(f, { readOnly: true })
  t.equal(img.size, 4 * MiB, 'the size is unchanged')
  await img.close()
  t.same(await growVmdk(f, 4 * MiB), { from: 4 * MiB, to: 4 * MiB }, 'the same size is a no-op')
})

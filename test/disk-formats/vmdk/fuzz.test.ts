import t from 'tap'
import { copyFileSync, readFileSync, writeFileSync, truncateSync, statSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { tmp, rng, pattern } from '../../helpers/peers.js'
import { createVmdk, openImage, openVmdk, checkImage, StorageError, convert, parseDescriptor } from '../../../src/disk-formats/index.js'

const ITERATIONS = Number(process.env.TANDEM_FUZZ_ITERATIONS ?? 250)
const HANG_MS = 10_000

/** Every outcome must be success or a StorageError; a hang fails the test. */
async function exercise(path: string): Promise<string> {
  const work = async () => {
    try {
      const dev = await openImage(path, { readOnly: true })
      try {
        await dev.read(0, Math.min(dev.size, 4 << 20))
        await dev.blockStatus(0, Math.min(dev.size, 1 << 30))
      } finally {
        await dev.close()
      }
    } catch (e) {
      if (!(e instanceof StorageError)) throw e
    }
    const r = await checkImage(path)
    return r.corruptions > 0 ? 'corrupt' : r.leaks > 0 ? 'leaks' : r['check-errors'] > 0 ? 'error' : 'clean'
  }
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`hang on ${path}`)), HANG_MS)
  })
  try {
    return await Promise.race([work(), hang])
  } finally {
    clearTimeout(timer)
  }
}

async function seed(dir: string) {
  const sparse = join(dir, 'sparse.vmdk')
  await createVmdk(sparse, { size: 4 << 20 })
  const img = await openVmdk(sparse)
  await img.write(0, pattern(3 << 16, 3))
  await img.write(3 << 20, pattern(5000, 4))
  await img.close()
  const child = join(dir, 'child.vmdk')
  await createVmdk(child, { size: 4 << 20, parent: { path: sparse, cid: (await openVmdk(sparse, { readOnly: true }).then(async (i) => { const c = i.cid; await i.close(); return c })) } })
  const stream = join(dir, 'stream.vmdk')
  const src = await openVmdk(sparse, { readOnly: true })
  await convert(src, stream, { to: 'vmdk', subformat: 'streamOptimized' })
  await convert(src, join(dir, 'split.vmdk'), { to: 'vmdk', subformat: 'twoGbMaxExtentSparse' })
  await src.close()
  return { sparse, stream, split: join(dir, 'split.vmdk'), splitExtent: join(dir, 'split-s001.vmdk') }
}

t.test('random byte flips in headers, descriptors and tables give typed errors only', async (t) => {
  const dir = tmp(t)
  const files = await seed(dir)
  const r = rng(0xc0ffee)
  const outcomes: Record<string, number> = {}
  const targets = [files.sparse, files.stream, files.splitExtent, files.split]
  for (let i = 0; i < ITERATIONS; i++) {
    const victim = targets[i % targets.length]
    const save = readFileSync(victim)
    const buf = Buffer.from(save)
    // Flip 1–8 bytes: in the header (0–79), the descriptor (512–1536), or the metadata region.
    const flips = 1 + (r() % 8)
    for (let k = 0; k < flips; k++) {
      const zone = r() % 3
      const span = victim === files.split ? buf.length : zone === 0 ? 80 : zone === 1 ? 1024 : Math.min(buf.length, 128 * 512)
      const at = (zone === 1 && victim !== files.split ? 512 : 0) + (r() % span)
      if (at < buf.length) buf[at] ^= 1 << (r() % 8)
    }
    writeFileSync(victim, buf)
    const o = await exercise(victim === files.splitExtent ? files.split : victim)
    outcomes[o] = (outcomes[o] ?? 0) + 1
    writeFileSync(victim, save)
  }
  t.comment(`outcomes over ${ITERATIONS} flips: ${JSON.stringify(outcomes)}`)
  t.ok((outcomes.corrupt ?? 0) > 0, 'some flips were detected as corruption')
  t.pass('no crash and no hang: every failure was a StorageError')
})

t.test('truncations at random points give typed errors only', async (t) => {
  const dir = tmp(t)
  const files = await seed(dir)
  const r = rng(42)
  for (const victim of [files.sparse, files.stream, files.splitExtent]) {
    const save = readFileSync(victim)
    for (let i = 0; i < 40; i++) {
      truncateSync(victim, r() % statSync(victim).size)
      const o = await exercise(victim === files.splitExtent ? files.split : victim)
      t.not(o, 'clean', `${victim} truncated is not reported clean`)
      writeFileSync(victim, save)
    }
  }
  t.ok(readdirSync(dir).length > 0)
})

t.test('random buffers given to the descriptor parser and header decoder', async (t) => {
  const r = rng(7)
  let typed = 0
  for (let i = 0; i < 2000; i++) {
    const len = r() % 600
    const b = Buffer.alloc(len)
    for (let k = 0; k < len; k++) b[k] = r() % 4 === 0 ? 0x0a : 32 + (r() % 95)
    const text = (i % 2 ? 'version=1\nCID=1\ncreateType="x"\n' : '') + b.toString('latin1')
    try {
      parseDescriptor(text, 'fuzz')
    } catch (e) {
      if (!(e instanceof StorageError)) throw e
      typed++
    }
  }
  t.ok(typed > 0)
  const dir = tmp(t)
  const f = join(dir, 'rand.vmdk')
  for (let i = 0; i < 200; i++) {
    const b = pattern(512 + (r() % 4096), r())
    b.write('KDMV', 0, 'latin1')
    writeFileSync(f, b)
    await exercise(f)
  }
  copyFileSync(f, f + '.bak')
  t.pass('random headers: typed errors only')
})

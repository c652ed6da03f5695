import t, { type Test } from 'tap'
import { writeFileSync, existsSync, readFileSync, renameSync } from 'node:fs'
import { join } from 'node:path'
import { tandem, tmp } from '../../helpers/peers.js'

/** Every bad input: one line on stderr starting `tandem:` or commander's `error:`, non-zero exit, no stack. */
function bad(t: Test, args: string[], message: RegExp, cwd?: string) {
  const r = tandem(args, { cwd })
  t.not(r.status, 0, `${args.join(' ')} exits non-zero`)
  t.match(r.stderr, message, `${args.join(' ')}: ${r.stderr.trim()}`)
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace')
}

t.test('bad input gets one clear line and a non-zero exit', async (t) => {
  const d = tmp(t)
  const notVmdk = join(d, 'text.txt')
  writeFileSync(notVmdk, 'hello world\n')
  bad(t, ['disk', 'info', join(d, 'missing.vmdk')], /^tandem: Could not open '.*missing\.vmdk': No such file or directory\n$/)
  bad(t, ['disk', 'map', '-f', 'vmdk', notVmdk], /not a VMDK image/)
  bad(t, ['disk', 'create', join(d, 'x.vmdk'), '--size', 'lots'], /invalid size 'lots'/)
  bad(t, ['disk', 'create', join(d, 'x.vmdk'), '--size', '0'], /invalid size '0'/)
  bad(t, ['disk', 'create', join(d, 'x.vmdk'), '--size', '1M', '--type', 'weird'], /unknown subformat 'weird'/)
  bad(t, ['disk', 'create', join(d, 'x.vmdk')], /the size must be given/)
  bad(t, ['disk', 'create', join(d, 'y.vmdk'), '-b', join(d, 'missing.vmdk')], /No such file or directory/)
  bad(t, ['disk', 'create', join(d, 'y.vmdk'), '--size', '1M', '--type', 'flat', '--zeroed-grain'], /flat images cannot use zeroed grains/)
  bad(t, ['disk', 'convert', join(d, 'missing.vmdk'), join(d, 'out.raw')], /No such file or directory/)
  bad(t, ['disk', 'commit', notVmdk], /not a VMDK image/)
  bad(t, ['disk', 'rebase', notVmdk], /rebase needs -b PARENT/)
  bad(t, ['disk', 'frobnicate'], /unknown command 'frobnicate'/)
  bad(t, ['disk', 'info', '--bogus', notVmdk], /unknown option '--bogus'/)
  t.equal(tandem(['disk', 'create', join(d, 'ok.vmdk'), '--size', '1M']).status, 0)
  bad(t, ['disk', 'create', join(d, 'ok.vmdk'), '--size', '1M'], /File exists/)
  bad(t, ['disk', 'commit', join(d, 'ok.vmdk')], /has no backing file to commit into/)
  // a half-made file is not left behind
  bad(t, ['disk', 'create', join(d, 'nodir', 'z.vmdk'), '--size', '1M'], /No such file or directory/)
  t.notOk(existsSync(join(d, 'nodir')))
})

t.test('sizes like qemu-img: 64M, 1G, 512, 1.5k rounds up to a sector', async (t) => {
  const d = tmp(t)
  for (const [size, bytes] of [['64M', 64 << 20], ['1G', 1 << 30], ['512', 512], ['1.5k', 1536], ['1000', 1024]] as const) {
    const f = join(d, `s${size}.vmdk`)
    t.equal(tandem(['disk', 'create', f, '--size', size]).status, 0)
    t.equal(JSON.parse(tandem(['disk', 'info', '--json', f]).stdout)['virtual-size'], bytes, size)
  }
})

t.test('commit refuses a parent with other children unless --force', async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  t.equal(tandem(['disk', 'create', base, '--size', '1M']).status, 0)
  t.equal(tandem(['disk', 'create', join(d, 'a.vmdk'), '-b', base]).status, 0)
  t.equal(tandem(['disk', 'create', join(d, 'b.vmdk'), '-b', base]).status, 0)
  const { openVmdk } = await import('../../../src/disk-formats/index.js')
  const a = await openVmdk(join(d, 'a.vmdk'))
  await a.write(0, Buffer.alloc(4096, 9))
  await a.close()
  bad(t, ['disk', 'commit', join(d, 'a.vmdk')], /has other children \(.*b\.vmdk\).*--force/)
  const r = tandem(['disk', 'commit', '--force', join(d, 'a.vmdk')])
  t.equal(r.status, 0)
  t.match(r.stderr, /now stale: .*b\.vmdk/)
  bad(t, ['disk', 'map', join(d, 'b.vmdk')], /expects parent CID/)
})

t.test('commit refuses a broken chain and a missing parent, and changes no byte of either file', async (t) => {
  const d = tmp(t)
  const base = join(d, 'base.vmdk')
  const child = join(d, 'child.vmdk')
  t.equal(tandem(['disk', 'create', base, '--size', '1M']).status, 0)
  t.equal(tandem(['disk', 'create', child, '-b', base]).status, 0)
  const { openVmdk } = await import('../../../src/disk-formats/index.js')
  const c = await openVmdk(child)
  await c.write(0, Buffer.alloc(65536, 7))
  await c.close()
  // the parent changes after the child was made: its CID no longer matches
  const p = await openVmdk(base)
  await p.write(65536, Buffer.alloc(512, 1))
  await p.close()
  const before = [readFileSync(base), readFileSync(child)]
  bad(t, ['disk', 'commit', child], /child\.vmdk' expects parent CID [0-9a-f]{8} but its parent '.*base\.vmdk' has CID [0-9a-f]{8}/)
  t.ok(readFileSync(base).equals(before[0]), 'the parent is untouched')
  t.ok(readFileSync(child).equals(before[1]), 'the child is untouched')
  renameSync(base, join(d, 'moved.vmdk'))
  bad(t, ['disk', 'commit', child], /child\.vmdk': could not open backing file '.*base\.vmdk': No such file or directory/)
  t.ok(readFileSync(child).equals(before[1]), 'the child is untouched')
})

t.test('help is man-page quality for each disk command', async (t) => {
  for (const c of ['create', 'info', 'map', 'check', 'commit', 'rebase', 'convert']) {
    const r = tandem(['disk', c, '--help'])
    t.equal(r.status, 0)
    t.match(r.stdout, new RegExp(`Usage: tandem disk ${c}`))
  }
})

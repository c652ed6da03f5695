import t from 'tap'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { isStorageError } from '../../src/disk-formats/errors.js'
import { imageLocking, lockImage, probeImageLocks } from '../../src/disk-formats/image-lock.js'
import { createVmdk, VmdkImage } from '../../src/disk-formats/vmdk/index.js'
import { RawFile } from '../../src/disk-formats/raw/index.js'
import { needs, shStatus, tandem, tmp } from '../helpers/peers.js'

async function image(t: Parameters<typeof tmp>[0], name = 'd.vmdk'): Promise<string> {
  const p = join(tmp(t, 'tandem-lock-'), name)
  await createVmdk(p, { size: 1 << 20 })
  return p
}

/** qemu-io holding `path` open (read-write unless `readOnly`) until `stop()`; resolves once it has it. */
async function qemuIoHolding(path: string, readOnly = false): Promise<{ stop(): Promise<void> }> {
  const child = spawn('qemu-io', [...(readOnly ? ['-r'] : []), '-f', 'vmdk', path], { stdio: ['pipe', 'pipe', 'pipe'] })
  const exited = new Promise<void>((r) => child.on('exit', () => r()))
  const lines = createInterface({ input: child.stdout! })
  let err = ''
  child.stderr!.on('data', (d) => (err += d))
  // qemu-io reads commands from stdin; an answered read means the image is open and locked
  child.stdin!.write('read 0 512\n')
  await new Promise<void>((resolve, reject) => {
    lines.on('line', (l) => l.includes('read 512/512 bytes') && resolve())
    void exited.then(() => reject(new Error(`qemu-io exited: ${err}`)))
  })
  return {
    async stop() {
      child.stdin!.end('quit\n')
      await exited
    },
  }
}

t.test('the lock bytes are qemu\'s: 100+perm used, 200+perm not shared', async (t) => {
  const p = await image(t)
  const w = lockImage(p, 'write')
  t.same(probeImageLocks(p), { used: ['consistent read', 'write', 'write unchanged', 'resize'], unshared: ['write', 'resize'] })
  w.release()
  t.same(probeImageLocks(p), { used: [], unshared: [] }, 'released: nothing held')
  const r = lockImage(p, 'read')
  t.same(probeImageLocks(p), { used: ['consistent read'], unshared: ['write', 'resize'] })
  r.release()
})

t.test('in one process openers share one lock: a reader and a writer coexist, the union is held', async (t) => {
  const p = await image(t)
  const a = await VmdkImage.open(p, { readOnly: true })
  const b = await VmdkImage.open(p)
  t.same(probeImageLocks(p).used, ['consistent read', 'write', 'write unchanged', 'resize'])
  await b.close()
  t.same(probeImageLocks(p).used, ['consistent read'], 'the writer left: the reader\'s locks remain')
  await a.close()
  t.same(probeImageLocks(p).used, [])
})

t.test('qemu-io cannot write an image Tandem has open for writing; qemu-img info -U still reads it', needs('qemu-io', 'qemu-img'), async (t) => {
  const p = await image(t)
  const img = await VmdkImage.open(p)
  t.teardown(() => img.close())
  const w = shStatus('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 0 512', p])
  t.not(w.status, 0, 'qemu-io refused')
  t.match(w.stderr, /Failed to get "write" lock/)
  const info = shStatus('qemu-img', ['info', p])
  t.not(info.status, 0, 'qemu-img info without -U is refused too (Tandem uses "write")')
  t.match(info.stderr, /Failed to get shared "write" lock/)
  t.equal(shStatus('qemu-img', ['info', '-U', p]).status, 0, 'qemu-img info -U works')
})

t.test('qemu-io cannot write an image Tandem reads (a backing file); qemu-img info can', needs('qemu-io', 'qemu-img'), async (t) => {
  const p = await image(t)
  const img = await VmdkImage.open(p, { readOnly: true })
  t.teardown(() => img.close())
  const w = shStatus('qemu-io', ['-f', 'vmdk', '-c', 'write 0 512', p])
  t.not(w.status, 0)
  t.match(w.stderr, /Failed to get "write" lock/)
  t.equal(shStatus('qemu-img', ['info', p]).status, 0, 'readers share')
})

t.test('Tandem refuses an image qemu-io has open for writing, naming the file; -U reads it', needs('qemu-io'), async (t) => {
  const p = await image(t)
  const q = await qemuIoHolding(p)
  t.teardown(() => q.stop())
  for (const ro of [false, true]) {
    const e = await VmdkImage.open(p, { readOnly: ro }).then(
      () => null,
      (e) => e,
    )
    t.ok(isStorageError(e, 'Busy'), `open ${ro ? 'read-only' : 'read-write'} refused`)
    t.match(e?.message, new RegExp(`Failed to get .*lock on '${p}'`))
  }
  await t.rejects(RawFile.open(p), { code: 'Busy' }, 'a raw open too')
  const cli = tandem(['disk', 'check', '-r', p])
  t.equal(cli.status, 1, 'tandem disk check -r exits 1')
  t.match(cli.stderr, /^tandem: Failed to get (shared )?"write" lock on/)
  t.equal(tandem(['disk', 'info', p]).status, 1, 'disk info without -U is refused (qemu-io does not share write)')
  const info = tandem(['disk', 'info', '-U', '--json', p])
  t.equal(info.status, 0, 'disk info -U reads it')
  t.equal(JSON.parse(info.stdout)['virtual-size'], 1 << 20)
  t.match(tandem(['disk', 'check', '-U', '-r', p]).stderr, /--force-share can only be used to read/)
  await q.stop()
  const img = await VmdkImage.open(p)
  await img.close()
  t.pass('after qemu-io quits Tandem opens it')
})

t.test('Tandem reads an image qemu-io has open read-only, and refuses to write it', needs('qemu-io'), async (t) => {
  const p = await image(t)
  const q = await qemuIoHolding(p, true)
  t.teardown(() => q.stop())
  const r = await VmdkImage.open(p, { readOnly: true })
  await r.close()
  await t.rejects(VmdkImage.open(p), { code: 'Busy' })
})

t.test('force-share takes no locks', async (t) => {
  const p = await image(t)
  imageLocking.forceShare = true
  t.teardown(() => void (imageLocking.forceShare = false))
  const img = await VmdkImage.open(p, { readOnly: true })
  t.same(probeImageLocks(p), { used: [], unshared: [] })
  await img.close()
})

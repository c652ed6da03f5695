import t, { type Test } from 'tap'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, pattern, rng, run, shmTmp } from '../../helpers/peers.js'
import { bearer, startServer } from '../../helpers/server.js'
import { createVmdk } from '../../../src/disk-formats/index.js'
import { NbdClient } from '../../../src/client/transport/nbd/index.js'
import { openSwitchableDisk } from '../../../src/client/checkpoint/local-switch.js'
import { serverDiskSwitch } from '../../../src/client/checkpoint/server-switch.js'
import type { BlockDevice } from '../../../src/disk-formats/block-device.js'

const SIZE = 1 << 20
const K = 1024

/**
 * A QD1 writer of 4 KiB at random slots, keeping `model` (what the disk holds after every write
 * it saw acknowledged). `stop()` parks it between writes (a stopped VM) and returns a copy of
 * the model; `go()` lets it on.
 */
function writer(dev: BlockDevice, seed: number) {
  const model = Buffer.alloc(SIZE)
  const r = rng(seed)
  let gate: Promise<void> | null = null
  let open = () => {}
  let parked = () => {}
  let end = false
  let n = 0
  const loop = (async () => {
    for (;;) {
      if (gate) {
        parked()
        await gate
        continue
      }
      if (end) return
      const off = (r() % (SIZE / (4 * K))) * 4 * K
      const data = pattern(4 * K, ++n + seed * 1e6)
      await dev.write(off, data)
      data.copy(model, off)
      await new Promise((res) => setImmediate(res))
    }
  })()
  const w = {
    get count() {
      return n
    },
    async stop(): Promise<Buffer> {
      const p = new Promise<void>((res) => (parked = res))
      gate = new Promise((res) => (open = res))
      await Promise.race([p, loop.then(() => Promise.reject(new Error('the writer ended')))])
      return Buffer.from(model)
    },
    go() {
      gate = null
      open()
    },
    async writes(k: number) {
      const n0 = n
      let failed: unknown
      loop.catch((e) => (failed = e))
      while (n < n0 + k) {
        if (failed) throw failed
        await new Promise((res) => setTimeout(res, 1))
      }
    },
    async end(): Promise<Buffer> {
      end = true
      w.go()
      await loop
      return Buffer.from(model)
    },
  }
  return w
}

async function compare(t: Test, image: string, content: Buffer, what: string, dir: string, shared = false) {
  const raw = join(dir, `expect-${Math.random().toString(36).slice(2)}.raw`)
  writeFileSync(raw, content)
  const r = await run('qemu-img', ['compare', ...(shared ? ['-U'] : []), '-f', 'vmdk', '-F', 'raw', image, raw])
  t.equal(r.status, 0, `qemu-img compare: ${what} (${r.stdout.trim()}${r.stderr.trim()})`)
}

t.test('a server disk: prepared while an NBD writer writes, switched with the writer stopped, then copy-and-commit', needs('qemu-img'), async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  const dir = shmTmp(t, 'tandem-switch-')
  const created = await fetch(`${url}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(s.apiToken) }, body: JSON.stringify({ name: 'vm', size: SIZE }) })
  t.equal(created.status, 201)
  const nbd = await NbdClient.connect(s.uri('vm'))
  t.teardown(() => nbd.close().catch(() => undefined))
  const w = writer(nbd, 1)
  await w.writes(20)
  const sw = serverDiskSwitch(url, 'vm')
  const prepared = await sw.prepare('cp1')
  await w.writes(20) // the writer goes on after the prepare
  const atCheckpoint = await w.stop()
  const switched = await prepared.commit()
  w.go()
  t.equal(switched.layer, 'vm@cp1')
  await w.writes(40)
  let now = await w.stop()
  t.same(await nbd.read(0, SIZE), now, 'the disk reads every acknowledged write')
  const snap = await NbdClient.connect(s.uri('vm@cp1'), { readOnly: true })
  t.same(await snap.read(0, SIZE), atCheckpoint, 'the frozen layer is the disk at the switch')
  await snap.close()
  const info = (await (await fetch(`${url}/api/v1/disks/vm`)).json()) as { chain: string[]; prepared: string | null }
  t.equal(info.chain.length, 2)
  t.equal(info.prepared, null)
  const chain = await run('qemu-img', ['info', '-U', '--backing-chain', '-f', 'vmdk', join(s.dir, 'vm', info.chain[0])])
  t.equal((chain.stdout.match(/^image: /gm) ?? []).length, 2, `qemu-img info --backing-chain: ${chain.stderr}`)
  const check = await run('qemu-img', ['check', '-f', 'vmdk', join(s.dir, 'vm', info.chain[1])])
  t.equal(check.status, 0, `the frozen layer checks clean without -U: ${check.stdout}${check.stderr}`)

  w.go() // copy-and-commit while the writer writes
  const copyTo = join(dir, 'cp1.vmdk')
  t.same(await switched.afterwards('copy-and-commit', { copyTo }), { disk: copyTo })
  now = await w.end()
  await compare(t, copyTo, atCheckpoint, 'the standalone copy is the disk at the switch', dir)
  t.equal((await run('qemu-img', ['check', '-f', 'vmdk', copyTo])).status, 0, 'and checks clean')
  t.same(await nbd.read(0, SIZE), now, 'the live disk is what was written')
  const after = (await (await fetch(`${url}/api/v1/disks/vm`)).json()) as { chain: string[]; snapshots: unknown[] }
  t.same(after.snapshots, [], 'the snapshot is gone')
  t.equal(after.chain.length, 1, 'its layer consolidated: one layer again')
})

t.test('a server disk switched while an NBD writer keeps writing: every acknowledged write reads back, the chain checks clean', needs('qemu-img'), async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  await fetch(`${url}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(s.apiToken) }, body: JSON.stringify({ name: 'vm', size: SIZE }) })
  const nbd = await NbdClient.connect(s.uri('vm'))
  t.teardown(() => nbd.close().catch(() => undefined))
  const w = writer(nbd, 3)
  const before = await w.stop()
  w.go()
  const sw = serverDiskSwitch(url, 'vm')
  for (const name of ['a', 'b', 'c']) {
    const p = await sw.prepare(name)
    await w.writes(10)
    await p.commit()
    await w.writes(10)
  }
  const now = await w.end()
  t.not(now.compare(before), 0)
  t.same(await nbd.read(0, SIZE), now, 'the disk reads every acknowledged write')
  const info = (await (await fetch(`${url}/api/v1/disks/vm`)).json()) as { chain: string[] }
  t.equal(info.chain.length, 4)
  const chain = await run('qemu-img', ['info', '-U', '--backing-chain', '-f', 'vmdk', join(s.dir, 'vm', info.chain[0])])
  t.equal((chain.stdout.match(/^image: /gm) ?? []).length, 4, chain.stderr)
  for (const layer of info.chain.slice(1)) {
    const c = await run('qemu-img', ['check', '-f', 'vmdk', join(s.dir, 'vm', layer)])
    t.equal(c.status, 0, `frozen ${layer} checks clean: ${c.stdout}${c.stderr}`)
  }
})

t.test('a server disk: abort, and the REST errors of prepare and commit', async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  const call = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`${url}/api/v1${path}`, { method, headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...bearer(s.apiToken) }, body: body ? JSON.stringify(body) : undefined })
    const text = await r.text()
    return { status: r.status, body: text ? JSON.parse(text) : null }
  }
  await call('POST', '/disks', { name: 'vm', size: SIZE })
  const p = await call('POST', '/disks/vm/snapshots', { name: 'a', prepare: true })
  t.equal(p.status, 201)
  t.match(p.body, { name: 'a', state: 'prepared', isCurrent: false })
  t.match(await call('POST', '/disks/vm/snapshots', { name: 'b', prepare: true }), { status: 409, body: { error: { code: 'Busy' } } }, 'a second prepare')
  t.match(await call('POST', '/disks/vm/snapshots', { name: 'b' }), { status: 409, body: { error: { code: 'Busy' } } }, 'a create meanwhile')
  t.match(await call('POST', '/disks/vm/snapshots', { name: 'b', prepare: 'yes' }), { status: 400, body: { error: { code: 'InvalidArgument' } } })
  t.match(await call('POST', '/disks/vm/snapshots/zz/commit'), { status: 404, body: { error: { code: 'NotFound' } } })
  t.match(await call('POST', '/disks/nope/snapshots/a/commit'), { status: 404, body: { error: { code: 'NotFound' } } })
  t.match(await call('GET', '/disks/vm'), { status: 200, body: { prepared: 'a', snapshots: [] } })
  const sw = serverDiskSwitch(url, 'vm')
  await t.rejects(sw.prepare('a'), { code: 'Exists' }, 'the name of the pending one')
  t.equal((await call('DELETE', '/disks/vm/snapshots/a')).status, 204, 'DELETE aborts')
  t.match(await call('GET', '/disks/vm'), { status: 200, body: { prepared: null, snapshots: [], chain: ['l-0000.vmdk'] } })
  const again = await sw.prepare('a')
  await again.abort()
  const c = await sw.prepare('c')
  await c.commit()
  t.match(await call('POST', '/disks/vm/snapshots/c/commit'), { status: 409, body: { error: { code: 'Busy' } } }, 'commit of a committed one')
  t.match(await call('POST', '/disks/vm/snapshots', { name: 'c', prepare: true }), { status: 409, body: { error: { code: 'Exists' } } }, 'a name clash')
})

for (const mode of ['keep', 'copy-and-commit'] as const) {
  t.test(`a local VMDK: the delta beside the file, the in-process device switched onto it, then ${mode}`, needs('qemu-img'), async (t) => {
    const dir = shmTmp(t, 'tandem-local-switch-')
    const file = join(dir, 'disk.vmdk')
    await createVmdk(file, { size: SIZE })
    const { device, switch: sw } = await openSwitchableDisk(file)
    t.teardown(() => device.close().catch(() => undefined))
    const w = writer(device, 2)
    await w.writes(20)
    const prepared = await sw.prepare('cp1')
    const delta = join(dir, 'disk-cp1.vmdk')
    t.ok(existsSync(delta), 'the delta is made beside the file')
    await w.writes(20)
    const atCheckpoint = await w.stop()
    const switched = await prepared.commit()
    w.go()
    t.equal(switched.layer, file, 'the frozen layer is the file')
    await w.writes(40)
    let now = await w.stop()
    t.same(await device.read(0, SIZE), now, 'the device reads every acknowledged write')
    await compare(t, file, atCheckpoint, 'the frozen file is the disk at the switch (read without -U)', dir)
    const chain = await run('qemu-img', ['info', '-U', '--backing-chain', '-f', 'vmdk', delta])
    t.equal((chain.stdout.match(/^image: /gm) ?? []).length, 2, `the delta's backing chain: ${chain.stderr}`)
    if (mode === 'keep') {
      t.same(await switched.afterwards('keep'), { disk: file })
      now = await w.end()
      await device.close()
      await compare(t, delta, now, 'the delta over the file is what was written', dir)
      t.equal((await run('qemu-img', ['check', '-f', 'vmdk', delta])).status, 0)
      return
    }
    w.go() // the writer's requests wait while the delta is committed back
    const copyTo = join(dir, 'cp1-copy.vmdk')
    t.same(await switched.afterwards('copy-and-commit', { copyTo }), { disk: copyTo })
    await w.writes(20)
    now = await w.end()
    t.same(await device.read(0, SIZE), now, 'the device reads every acknowledged write')
    await device.close()
    t.notOk(existsSync(delta), 'the delta is gone')
    await compare(t, copyTo, atCheckpoint, 'the standalone copy is the disk at the switch', dir)
    await compare(t, file, now, 'the file is what was written', dir)
    for (const f of [file, copyTo]) t.equal((await run('qemu-img', ['check', '-f', 'vmdk', f])).status, 0, `${f} checks clean`)
    const info = await run('qemu-img', ['info', '-f', 'vmdk', copyTo])
    t.notMatch(info.stdout, /backing file/, 'the copy stands alone')
  })
}

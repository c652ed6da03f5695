import t from 'tap'
import { join } from 'node:path'
import { CLI, needs, run, sh, shStatus, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { Datastore } from '../../../src/server/datastore/index.js'
import { createVmdk, growVmdk, VmdkImage } from '../../../src/disk-formats/vmdk/index.js'

const MiB = 2 ** 20
const disk = (...args: string[]) => run(process.execPath, [CLI, 'disk', ...args], { timeout: 60_000 })

/** qemu-io on an export of the server in this process (asynchronously: the server must answer meanwhile); a snapshot's read-only. */
async function qio(uri: string, ...cmds: string[]): Promise<string> {
  const r = await run('qemu-io', [...(uri.includes('@') ? ['-r'] : []), '-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), uri], { timeout: 60_000 })
  return r.stdout + r.stderr
}

t.test('tandem disk grow --server: size, qemu check, old bytes, a writable zero end, snapshots as they were, bad input', needs('qemu-img', 'qemu-io'), async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  const nbd = (e: string) => `nbd://127.0.0.1:${s.nbdPort}/${e}`
  await s.ds.createDisk('d', 4 * MiB)
  const w = await s.ds.openExport('d')
  await w.device.write(0, Buffer.alloc(4096, 0x61))
  await w.release()
  await s.ds.createSnapshot('d', 's1')

  const g = await disk('grow', 'd', '64M', '--server', url, '--json')
  t.equal(g.status, 0, g.stderr)
  t.equal(JSON.parse(g.stdout).size, 64 * MiB, 'the answer is the grown disk')
  const r = await s.ds.readRecord('d')
  t.equal(r.size, 64 * MiB, 'the record names the new size')
  const top = join(s.ds.dir, 'd', r.top)
  t.equal(JSON.parse(sh('qemu-img', ['info', '--output=json', top]))['virtual-size'], 64 * MiB, 'qemu-img info: the top layer has the new size')
  const qc = shStatus('qemu-img', ['check', top])
  t.equal(qc.status, 0, `qemu-img check clean ${qc.stdout}${qc.stderr}`)

  t.match(await qio(nbd('d'), 'read -P 0x61 0 4096', `read -P 0 ${4 * MiB} ${60 * MiB}`), new RegExp(`read ${60 * MiB}/${60 * MiB}`), 'old bytes, then zeros past the old end (qemu-io over NBD)')
  await qio(nbd('d'), `write -P 0x5a ${64 * MiB - 65536} 65536`)
  t.match(await qio(nbd('d'), `read -P 0x5a ${64 * MiB - 65536} 65536`), /read 65536\/65536/, 'the new end is writable through NBD')
  t.equal(JSON.parse((await run('qemu-img', ['info', '--output=json', nbd('d@s1')])).stdout)['virtual-size'], 4 * MiB, 'the snapshot keeps its size')
  t.match(await qio(nbd('d@s1'), 'read -P 0x61 0 4096', `read -P 0 4096 ${4 * MiB - 4096}`), /read 4190208\/4190208/, 'and its content')

  const shrink = await disk('grow', 'd', '1M', '--server', url)
  t.match([shrink.status, shrink.stderr], [1, /^tandem: cannot shrink disk 'd' from 67108864 to 1048576 bytes/], 'shrinking is refused')
  const nan = await disk('grow', 'd', 'huge', '--server', url)
  t.match([nan.status, nan.stderr], [1, /^tandem: invalid size 'huge'/])
  const missing = await disk('grow', 'nope', '8M', '--server', url)
  t.match([missing.status, missing.stderr], [1, /^tandem: no disk named 'nope'/])

  const c = await TestNbdClient.open(s.nbdPort, 'd')
  t.teardown(() => c.destroy())
  const busy = await disk('grow', 'd', '128M', '--server', url)
  t.equal(busy.status, 1)
  t.match(busy.stderr, new RegExp(`cannot grow 'd' while it is exported read-write: 1 client\\(s\\) of 'd' \\(nbd 127\\.0\\.0\\.1:${c.sock.localPort}\\)`), 'refused under a connected client, naming it')
  t.equal((await s.ds.readRecord('d')).size, 64 * MiB, 'unchanged')
})

t.test('tandem disk grow FILE: a local VMDK (what qemu-img resize cannot do)', needs('qemu-img'), async (t) => {
  const f = join(tmp(t), 'x.vmdk')
  await createVmdk(f, { size: MiB })
  const g = await disk('grow', f, '3G')
  t.equal(g.status, 0, g.stderr)
  t.equal(g.stdout, `Image resized: '${f}' 1048576 → 3221225472 bytes\n`)
  t.equal(JSON.parse(sh('qemu-img', ['info', '--output=json', f]))['virtual-size'], 3 * 2 ** 30)
  t.equal(shStatus('qemu-img', ['check', f]).status, 0)
  t.not(shStatus('qemu-img', ['resize', '-f', 'vmdk', f, '4G']).status, 0, 'qemu-img resize refuses VMDK (README says so)')
})

t.test('a grow stopped after the layer grew: reopening the datastore makes the record follow', async (t) => {
  const dir = tmp(t)
  const ds = await Datastore.open(dir)
  await ds.createDisk('d', MiB)
  const top = join(dir, 'd', (await ds.readRecord('d')).top)
  await ds.close()
  await growVmdk(top, 8 * MiB) // the record is not written: as a stop between the two steps leaves it
  const again = await Datastore.open(dir)
  t.teardown(() => again.close())
  t.match(again.repairs, [{ disk: 'd', done: [/size is now 8388608 bytes/] }])
  t.equal((await again.describe('d')).size, 8 * MiB)
  const img = await VmdkImage.open(top, { readOnly: true })
  t.equal(img.size, 8 * MiB)
  await img.close()
})

t.test('after a grow, clones of an older snapshot have its size; a revert keeps the grown size', async (t) => {
  const dir = tmp(t)
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  await ds.createDisk('d', MiB)
  const w = await ds.openExport('d')
  await w.device.write(MiB - 4096, Buffer.alloc(4096, 0x71))
  await w.release()
  await ds.createSnapshot('d', 'small')
  await ds.growDisk('d', 4 * MiB)
  const sizes = async (name: string) => {
    const h = await ds.openExport(name)
    const size = h.device.size
    const tail = await h.device.read(MiB - 4096, 4096)
    await h.release()
    return { record: (await ds.describe(name)).size, export: size, tail: tail.equals(Buffer.alloc(4096, 0x71)) }
  }
  await ds.cloneDisk('d', 'full', { snapshot: 'small', linked: false })
  await ds.cloneDisk('d', 'linked', { snapshot: 'small', linked: true })
  t.same(await sizes('full'), { record: MiB, export: MiB, tail: true }, 'full clone: the snapshot\'s size and content')
  t.same(await sizes('linked'), { record: MiB, export: MiB, tail: true }, 'linked clone: the same')
  await ds.revertSnapshot('d', 'small')
  t.same(await sizes('d'), { record: 4 * MiB, export: 4 * MiB, tail: true }, 'revert: the snapshot\'s content, the disk\'s grown size')
  await ds.growDisk('linked', 2 * MiB)
  t.same(await sizes('linked'), { record: 2 * MiB, export: 2 * MiB, tail: true }, 'a linked clone grows over its base')
})

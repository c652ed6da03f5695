import t from 'tap'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { needs, rng, run, tmp } from '../../helpers/peers.js'
import { bearer, startServe } from '../../helpers/server.js'
import { DISKIO, diskioPattern } from '../../helpers/diskio.js'
import { startSwitch } from '../../helpers/switch-process.js'
import { initLockspace, killMatrix, kv, startPair, waitFor } from '../../helpers/ft-cli.js'

const VM_MAC = '02:00:00:00:00:43'
const acknowledged = (file: string) => (existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter(Boolean).length : 0)
const COLO = ['--ft-mode', 'colo']

t.test('colo: SIGKILL of the primary while kv load runs: the secondary goes live and every acknowledged key is there', async (t) => {
  await killMatrix(t, 2718, 1, { vmMac: VM_MAC, args: COLO })
})

t.test('colo: SIGKILL of the secondary: the primary claims the VM and runs on alone, answering every request (paired, it resyncs every 50 ms: --ft-colo-checkpoint-ms)', async (t) => {
  const dir = tmp(t, 'tandem-colo-kill-b-')
  const ls = initLockspace(dir)
  const sw = await startSwitch(t)
  const { backup, primary } = await startPair(t, { args: ['--guest', 'kvstore', '--switch', sw.url, '--mac', VM_MAC, ...COLO], lockspace: ls, primaryArgs: ['--ft-colo-checkpoint-ms', '50'] })
  await waitFor(primary, /kvstore/)
  const acked = join(dir, 'acked.jsonl')
  const load = kv(['load', '--switch', sw.url, '--vm-mac', VM_MAC, '--keys', '40', '--rate', '300', '--duration', '2', '--log', acked, '--timeout', '10', '--json'])
  // killed once the pair has answered (outputs released on a match)
  for (const t0 = Date.now(); acknowledged(acked) < 20 && Date.now() - t0 < 10_000; ) await new Promise((res) => setTimeout(res, 50))
  process.kill(-backup.child.pid!, 'SIGKILL')
  await waitFor(primary, /running alone/, 10_000)
  const l = await load.done
  t.equal(l.code, 0, `kv load finished: ${l.err.slice(-300)}`)
  const c = await kv(['check', '--switch', sw.url, '--vm-mac', VM_MAC, '--log', acked, '--timeout', '10']).done
  t.equal(c.code, 0, `kv check on the primary, alone: ${c.out}${c.err}`)
  t.equal(primary.child.exitCode, null, 'the primary still runs')
  primary.child.kill('SIGTERM')
  await primary.exited
  const ft = JSON.parse(primary.stdout()).ft
  t.match(ft, { role: 'primary', outcome: 'alone' }, JSON.stringify(ft))
  // the kill came after 20 acknowledged replies: released on a match, or by a (periodic) resync
  const colo = ft.colo
  t.ok(colo.releasedMatched >= 1 && colo.releasedMatched + colo.releasedByResync >= 20, `${colo.outputs} outputs, ${colo.releasedMatched} released on a match and ${colo.releasedByResync} by a resync`)
  t.ok(colo.resyncs.periodic >= 1, `periodic resyncs while paired: ${JSON.stringify(colo.resyncs)}`)
})

t.test('colo: a bad --ft-mode, --ft-colo-timeout-ms or --ft-colo-checkpoint-ms is a usage error', async (t) => {
  const { tandem } = await import('../../helpers/peers.js')
  const ls = initLockspace(tmp(t, 'tandem-colo-usage-'))
  const base = ['vm', 'run', '--guest', 'kvstore', '--name', 'v', '--ft-lockspace', ls, '--ft-backup', '127.0.0.1:0']
  const mode = tandem([...base, '--ft-mode', 'lockstep'])
  t.equal(mode.status, 1)
  t.match(mode.stderr, /invalid --ft-mode 'lockstep' \(replay, checkpoint or colo\)/)
  const timeout = tandem([...base, '--ft-mode', 'colo', '--ft-colo-timeout-ms', '0'])
  t.equal(timeout.status, 1)
  t.match(timeout.stderr, /invalid --ft-colo-timeout-ms '0'/)
  const period = tandem([...base, '--ft-mode', 'colo', '--ft-colo-checkpoint-ms', '4000000'])
  t.equal(period.status, 1)
  t.match(period.stderr, /invalid --ft-colo-checkpoint-ms '4000000' \(5 to 3600000\)/)
})

t.test('colo with a disk (diskio): the primary SIGKILLed at seeded moments, on a raw file and on a served VMDK over iSCSI; the secondary goes live, writes what its guest saw complete, diskio verifies every byte, the shared disk holds every chunk and checks clean', needs('qemu-img'), async (t) => {
  const r = rng(1818)
  for (let i = 0; i < Number(process.env.FT_DISK_RUNS ?? 1); i++) {
    const dir = tmp(t, 'tandem-colo-disk-')
    // even runs: a datastore VMDK both reach over iSCSI; odd: a local raw file (the secondary follows it read-only, opens it for writing going live)
    const served = i % 2 === 0 ? await servedDisk(t, dir) : null
    const raw = join(dir, 'disk.raw')
    if (!served) {
      writeFileSync(raw, '')
      truncateSync(raw, 8 << 20)
    }
    const { backup, primary } = await startPair(t, { args: ['--guest', 'diskio', '--disk', served?.uri ?? raw, '--ft-mode', 'colo'], lockspace: initLockspace(dir) })
    await waitFor(primary, /diskio: capacity/)
    const killAt = 10 + Math.floor((r() / 2 ** 32) * 150)
    await new Promise((res) => setTimeout(res, killAt))
    process.kill(-primary.child.pid!, 'SIGKILL')
    const b = await backup.exited
    const what = `run ${i} (${served ? 'iSCSI' : 'raw file'}, kill at ${killAt} ms)`
    t.equal(b.code, 0, `${what}: diskio verified its disk on the live secondary: ${backup.stderr().slice(-400)}`)
    t.match(backup.stderr(), /won vm\/vm1: going live/, `${what}: the secondary went live`)
    if (served) {
      served.serve.child.kill('SIGTERM')
      await served.serve.exited
      const check = await run('qemu-img', ['check', served.layer])
      t.equal(check.status, 0, `${what}: qemu-img check: ${check.stdout}${check.stderr}`)
      t.equal((await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', served.layer, raw])).status, 0)
    }
    const fd = openSync(raw, 'r')
    const bad: number[] = []
    try {
      for (let c = 0; c < DISKIO.chunks; c++) {
        const lba = DISKIO.firstLba + c * DISKIO.chunkBlocks
        const got = Buffer.alloc(DISKIO.chunkBlocks * 512)
        readSync(fd, got, 0, got.length, lba * 512)
        if (!got.equals(diskioPattern(lba, DISKIO.chunkBlocks))) bad.push(c)
      }
    } finally {
      closeSync(fd)
    }
    t.same(bad, [], `${what}: every chunk diskio wrote is on the shared disk`)
  }
})

/** A `tandem serve` with one 8 MiB datastore disk: its iSCSI URI and its VMDK (whole while the server is stopped). */
async function servedDisk(t: Parameters<typeof startServe>[0], dir: string) {
  const ds = join(dir, 'ds')
  mkdirSync(ds)
  const serve = await startServe(t, ds)
  const r = await fetch(`http://127.0.0.1:${serve.httpPort}/api/v1/disks`, { method: 'POST', headers: { 'content-type': 'application/json', ...bearer(serve.token) }, body: JSON.stringify({ name: 'd1', size: '8M' }) })
  if (r.status !== 201) throw new Error(`creating the disk: ${await r.text()}`)
  return { serve, uri: `iscsi://127.0.0.1:${serve.iscsiPort}/iqn.2026-11.local.tandem:d1/0`, layer: join(ds, 'd1', 'l-0000.vmdk') }
}

import t from 'tap'
import { spawn } from 'node:child_process'
import type { Readable } from 'node:stream'
import { writeFileSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { CLI, needs, pattern, run, sh, tmp } from '../../helpers/peers.js'
import { startServer } from '../../helpers/server.js'
import { peerServer } from '../../helpers/nbd-peer.js'
import { createVmdk, VmdkImage } from '../../../src/disk-formats/vmdk/index.js'
import { IQN_PREFIX } from '../../../src/server/datastore/index.js'

const MiB = 2 ** 20
const peers = needs('qemu-img', 'qemu-io', 'qemu-nbd', 'nbdkit', 'nbdinfo')

/** `qemu-img compare` of two images, asynchronously (the server answering NBD runs in this process). */
async function same(a: string[], b: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return run('qemu-img', ['compare', '-f', a[0], '-F', b[0], a[1], b[1]], { timeout: 60_000 })
}

/**
 * Runs `tandem disk import … --json` and calls `during(pid)` once it prints its first progress
 * line; resolves to the exit status and output.
 */
function importWith(args: string[], during: (pid: number, stdout: Readable) => void): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, 'disk', 'import', ...args, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  let fired = false
  child.stdout.on('data', (b: Buffer) => {
    stdout += b
    if (!fired && stdout.includes('"event":"progress"')) {
      fired = true
      during(child.pid!, child.stdout)
    }
  })
  child.stderr.on('data', (b: Buffer) => (stderr += b))
  return new Promise((resolve) => child.on('exit', (status) => resolve({ status, stdout, stderr })))
}

t.test('tandem disk import from a file, qemu-nbd (qcow2), nbdkit and iscsi://: the bytes read back equal', peers, async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  const nbd = (e: string) => `nbd://127.0.0.1:${s.nbdPort}/${e}`
  const d = tmp(t)
  const imp = (name: string, source: string, ...more: string[]) => run(process.execPath, [CLI, 'disk', 'import', name, source, '--server', url, ...more], { timeout: 60_000 })

  // a raw file with data around a hole; --size larger than it
  const raw = join(d, 'a.raw')
  writeFileSync(raw, pattern(MiB, 1))
  truncateSync(raw, 6 * MiB)
  writeFileSync(raw, pattern(65536, 2), { flag: 'a' })
  const r1 = await imp('fromraw', raw, '--size', '8M')
  t.equal(r1.status, 0, r1.stderr)
  t.match(r1.stdout, /^disk 'fromraw' \(8 MiB\) imported from /)
  t.equal((await same(['raw', raw], ['raw', nbd('fromraw')])).status, 0, 'raw file: qemu-img compare says identical (the extra 1 MiB reads zeros)')
  t.ok((await s.ds.describe('fromraw')).actualSize < 4 * MiB, 'the hole was not written')

  // a VMDK file
  const vmdk = join(d, 'b.vmdk')
  await createVmdk(vmdk, { size: 4 * MiB })
  const img = await VmdkImage.open(vmdk)
  await img.write(3 * MiB, pattern(65536, 3))
  await img.close()
  const r2 = await imp('fromvmdk', vmdk)
  t.equal(r2.status, 0, r2.stderr)
  t.equal((await same(['vmdk', vmdk], ['raw', nbd('fromvmdk')])).status, 0, 'VMDK file: identical')

  // qcow2 through qemu-nbd; a qcow2 file given directly is refused, naming the way round
  const q = join(d, 'c.qcow2')
  sh('qemu-img', ['create', '-q', '-f', 'qcow2', q, '8M'])
  sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x33 1M 2M', '-c', 'write -P 0x44 7M 64k', q])
  const direct = await imp('fromq', q)
  t.match([direct.status, direct.stderr], [1, /is qcow2, which Tandem does not read: export it with `qemu-nbd/])
  const qport = await peerServer(t, 'qemu-nbd', (p) => ['-r', '-f', 'qcow2', '-x', 'd', '-b', '127.0.0.1', '-p', String(p), '--persistent', '--shared=4', q])
  const r3 = await imp('fromq', `nbd://127.0.0.1:${qport}/d`)
  t.equal(r3.status, 0, r3.stderr)
  t.equal((await same(['qcow2', q], ['raw', nbd('fromq')])).status, 0, 'qemu-nbd export of a qcow2: identical')

  // nbdkit's pattern plugin (every byte data)
  const kport = await peerServer(t, 'nbdkit', (p) => ['-f', '-i', '127.0.0.1', '-p', String(p), '-e', 'd', 'pattern', '5M'])
  const r4 = await imp('fromkit', `nbd://127.0.0.1:${kport}/d`)
  t.equal(r4.status, 0, r4.stderr)
  t.equal((await same(['raw', `nbd://127.0.0.1:${kport}/d`], ['raw', nbd('fromkit')])).status, 0, 'nbdkit pattern: identical')

  // iscsi://: the server's own iSCSI export of another disk
  const r5 = await imp('fromiscsi', `iscsi://127.0.0.1:${s.iscsiPort}/${IQN_PREFIX}fromq/0`)
  t.equal(r5.status, 0, r5.stderr)
  t.equal((await same(['qcow2', q], ['raw', nbd('fromiscsi')])).status, 0, 'iscsi:// source: identical')

  // bad input: nothing is created
  const bad = await imp('x', 'ftp://host/file')
  t.match([bad.status, bad.stderr], [1, /^tandem: 'ftp:\/\/host\/file': not a source Tandem reads/])
  const refused = await imp('x', 'nbd://127.0.0.1:1/d')
  t.match([refused.status, refused.stderr], [1, /^tandem: 127\.0\.0\.1:1: ECONNREFUSED/])
  const small = await imp('x', raw, '--size', '1M')
  t.match([small.status, small.stderr], [1, /--size 1048576 is smaller than the source/])
  const taken = await imp('fromraw', raw)
  t.match([taken.status, taken.stderr], [1, /already exists/])
  t.same((await s.ds.listDisks()).sort(), ['fromiscsi', 'fromkit', 'fromq', 'fromraw', 'fromvmdk'], 'bad imports left no disk (and the taken name its disk)')
})

t.test('SIGINT mid-way cancels (exit 130, no disk); a source failing mid-way fails the import (no disk)', peers, async (t) => {
  const s = await startServer(t)
  const url = `http://127.0.0.1:${s.httpPort}`
  const kport = await peerServer(t, 'nbdkit', (p) => ['-f', '-i', '127.0.0.1', '-p', String(p), '-e', 'd', 'pattern', '4G'])
  const c = await importWith(['big', `nbd://127.0.0.1:${kport}/d`, '--server', url], (pid) => process.kill(pid, 'SIGINT'))
  t.equal(c.status, 130, c.stderr)
  t.match(c.stderr, /import of 'big' cancelled; the partial disk was deleted/)
  t.same(await s.ds.listDisks(), [], 'no disk left')

  const trigger = join(tmp(t), 'fail-now')
  const eport = await peerServer(t, 'nbdkit', (p) => ['-f', '-i', '127.0.0.1', '-p', String(p), '-e', 'd', '--filter=error', 'pattern', '4G', 'error-pread=EIO', 'error-pread-rate=1', `error-file=${trigger}`])
  const f = await importWith(['broken', `nbd://127.0.0.1:${eport}/d`, '--server', url], () => writeFileSync(trigger, ''))
  t.equal(f.status, 1, f.stderr)
  t.match(f.stderr, new RegExp(`^tandem: import of 'broken' from nbd://127\\.0\\.0\\.1:${eport}/d stopped: NBD read at \\d+\\+\\d+: errno 5; the partial disk is deleted\\n$`), 'the source\'s error, in one line')
  t.notMatch(f.stderr, /\n\s+at /, 'no stack trace')
  t.same(await s.ds.listDisks(), [], 'the partial disk was deleted')

  // the reader of --json going away (`| head -1`) does not stop the import
  const file = join(tmp(t), 'p.raw')
  writeFileSync(file, pattern(8 * MiB, 4))
  const h = await importWith(['piped', file, '--server', url], (_pid, out) => out.destroy())
  t.equal(h.status, 0, h.stderr)
  t.equal((await same(['raw', file], ['raw', `nbd://127.0.0.1:${s.nbdPort}/piped`])).status, 0, 'imported whole')
})

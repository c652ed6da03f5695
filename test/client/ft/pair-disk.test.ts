import t from 'tap'
import { closeSync, openSync, readSync, truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { rng, tmp } from '../../helpers/peers.js'
import { initLockspace, startPair, waitFor } from '../../helpers/ft-cli.js'

const FIRST_LBA = 2048
const BLOCK = 512
const MAGIC = 0x474f4c44

/** disklog's record n (guests/src/disklog.c): "DLOG", n, then a pattern of n. */
function isRecord(b: Buffer, n: number): boolean {
  if (b.readUInt32LE(0) !== MAGIC || b.readUInt32LE(4) !== n) return false
  for (let i = 2; i < BLOCK / 4; i++) if (b.readUInt32LE(i * 4) !== (Math.imul(n, 2654435761) ^ Math.imul(i, 40503) ^ 0x5a5a5a5a) >>> 0) return false
  return true
}

/** The records on the disk from the first: how many there are before the first that is not record n. */
function recordsOnDisk(file: string, capacity: number): number {
  const fd = openSync(file, 'r')
  const b = Buffer.alloc(BLOCK)
  let n = 0
  try {
    while (FIRST_LBA + n < capacity) {
      readSync(fd, b, 0, BLOCK, (FIRST_LBA + n) * BLOCK)
      if (!isRecord(b, n + 1)) break
      n++
    }
  } finally {
    closeSync(fd)
  }
  return n
}

const syncedIn = (text: string) => Math.max(0, ...[...text.matchAll(/disklog: synced (\d+)/g)].map((m) => Number(m[1])))

t.test('disklog: SIGKILL of the primary at seeded moments; the live backup fills the disk with every record, none missing', async (t) => {
  const r = rng(4242)
  const runs = Number(process.env.FT_DISK_RUNS ?? 4)
  for (let i = 0; i < runs; i++) {
    const reads = i % 2 ? 'log' : 'disk'
    const dir = tmp(t, 'tandem-ft-disk-')
    const ls = initLockspace(dir)
    const disk = join(dir, 'disk.raw')
    const capacity = FIRST_LBA + 2048
    writeFileSync(disk, '')
    truncateSync(disk, capacity * BLOCK)
    const { backup, primary } = await startPair(t, { args: ['--guest', 'disklog', '--disk', disk, '--backup-reads', reads], lockspace: ls })
    await waitFor(primary, /disklog: resumed after 0/)
    const killAt = 50 + Math.floor((r() / 2 ** 32) * 700)
    await new Promise((res) => setTimeout(res, killAt))
    process.kill(-primary.child.pid!, 'SIGKILL')
    await primary.exited
    // what the primary released: its console says which records were on stable storage
    const acked = syncedIn(primary.stderr())
    const b = await backup.exited
    t.equal(b.code, 0, `run ${i} (${reads}, kill at ${killAt} ms, ${acked} records acknowledged): the backup ran disklog to a full disk: ${backup.stderr().slice(-300)}`)
    const summary = JSON.parse(backup.stdout())
    t.equal(summary.ft.outcome, 'live', `run ${i}: the backup went live`)
    t.match(backup.stderr(), /disklog: disk full/, `run ${i}: the guest saw its disk full`)
    t.equal(recordsOnDisk(disk, capacity), capacity - FIRST_LBA, `run ${i}: every record 1..${capacity - FIRST_LBA} is on the disk, so all ${acked} acknowledged ones`)
  }
})

t.test('diskio: SIGKILL of the primary at seeded moments; the live backup reads back every byte diskio wrote', async (t) => {
  const r = rng(99)
  for (let i = 0; i < 2; i++) {
    const dir = tmp(t, 'tandem-ft-diskio-')
    const ls = initLockspace(dir)
    const disk = join(dir, 'disk.raw')
    writeFileSync(disk, '')
    truncateSync(disk, 8 << 20)
    const { backup, primary } = await startPair(t, { args: ['--guest', 'diskio', '--disk', disk], lockspace: ls })
    await waitFor(primary, /diskio: capacity/)
    await new Promise((res) => setTimeout(res, 20 + Math.floor((r() / 2 ** 32) * 200)))
    process.kill(-primary.child.pid!, 'SIGKILL')
    const b = await backup.exited
    t.equal(b.code, 0, `run ${i}: diskio verified its disk on the live backup: ${backup.stderr().slice(-300)}`)
  }
})

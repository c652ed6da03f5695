import t from 'tap'
import { truncateSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { rng, tmp } from '../../helpers/peers.js'
import { initLockspace, startPair, waitFor } from '../../helpers/ft-cli.js'
import { DISKLOG, recordsOnDisk, syncedIn } from '../../helpers/disklog.js'

const FIRST_LBA = DISKLOG.firstLba
const BLOCK = DISKLOG.block

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

/**
 * Atomicity-test host: for DURATION_MS, reads the lock record at INDEX and compare-and-writes it
 * with its generation + 1, as every lock change does. Prints `{"wins":W,"tries":T}`: over all
 * racers, the final generation must equal the sum of wins (two winners of one round lose an
 * increment).
 * Usage: racer.js LOCKSPACE INDEX DURATION_MS   (LOCKSPACE: a file or iscsi://…)
 */
import { decodeHeader, decodeRecord, encodeRecord, recordOffset, SECTOR } from '../../src/disk-formats/lock-region/index.js'
import { openLockStorage } from '../../src/client/locks/index.js'

const [spec, indexText, durationText] = process.argv.slice(2)
const index = Number(indexText)
const s = await openLockStorage(spec)
const off = recordOffset(decodeHeader(await s.read(0, SECTOR), s.name), index)
let wins = 0
let tries = 0
const end = performance.now() + Number(durationText)
while (performance.now() < end) {
  const cur = await s.read(off, SECTOR)
  const rec = decodeRecord(cur, index, s.name)
  tries++
  if (await s.compareAndWrite(off, cur, encodeRecord({ ...rec, generation: rec.generation + 1 }))) wins++
}
await s.close()
process.stdout.write(JSON.stringify({ wins, tries }) + '\n')

import t from 'tap'
import { randomFillSync } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import { CrcWorker } from '../../../src/client/vm/crc-worker.js'
import { rng } from '../../helpers/peers.js'

/** nice values of this process's threads (Linux: field 19 of /proc/self/task/N/stat) */
function threadNices(): number[] {
  return readdirSync('/proc/self/task').map((tid) => {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])
  })
}

t.test('the worker answers the CRC-32C of ranges of its shared buffers, in the order asked', async (t) => {
  const shared = [new SharedArrayBuffer(1 << 20), new SharedArrayBuffer(64 << 10)]
  const views = shared.map((b) => randomFillSync(new Uint8Array(b)))
  const w = new CrcWorker(shared, 10)
  t.teardown(() => w.close())
  const r = rng(7)
  const asked: { bytes: Uint8Array; answer: Promise<number> }[] = []
  for (let i = 0; i < 200; i++) {
    const v = views[r() % 2]
    const start = r() % v.length
    const bytes = v.subarray(start, start + (r() % (v.length - start + 1)))
    asked.push({ bytes, answer: w.crc(bytes) })
  }
  const answers = await Promise.all(asked.map((a) => a.answer))
  t.same(answers, asked.map((a) => crc32c(a.bytes)), 'every answer is the CRC of its own range')
  t.throws(() => w.crc(new Uint8Array(new SharedArrayBuffer(16))), TypeError, 'a buffer the worker was not given')
  t.throws(() => w.crc(new Uint8Array(16)), TypeError)
})

t.test('the worker thread runs at the nice value asked (Linux)', { skip: !existsSync('/proc/thread-self') && 'no /proc/thread-self' }, async (t) => {
  const shared = [new SharedArrayBuffer(4096)]
  const before = threadNices().filter((n) => n === 13).length
  const w = new CrcWorker(shared, 13)
  await w.crc(new Uint8Array(shared[0])) // answered: the worker has set its priority
  t.equal(threadNices().filter((n) => n === 13).length, before + 1, 'one more thread at nice 13')
  await w.close()
  t.equal(threadNices().filter((n) => n === 13).length, before, 'gone when closed')
})

t.test('requests open when the worker is closed, and later ones, are refused', async (t) => {
  const shared = [new SharedArrayBuffer(8 << 20)]
  const w = new CrcWorker(shared, 0)
  const open = [w.crc(new Uint8Array(shared[0])), w.crc(new Uint8Array(shared[0]))]
  await w.close()
  for (const p of open) await t.rejects(p, { message: /the CRC-32C worker is closed/ })
  await t.rejects(w.crc(new Uint8Array(shared[0], 0, 10)), { message: /closed/ })
})

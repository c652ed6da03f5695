import t from 'tap'
import { ByteQueue } from '../../../src/server/net/byte-queue.js'
import { pattern, within } from '../../helpers/peers.js'

const KiB = 1024
const MiB = 1024 * KiB

/** A socket-like source: hands `data` to the queue in 64 KiB chunks while not paused; tracks the most buffered. */
function source(data: Buffer, limit: number) {
  let paused = false
  let at = 0
  let most = 0
  const q = new ByteQueue(
    () => (paused = true),
    () => {
      paused = false
      setImmediate(flow)
    },
    limit,
  )
  const flow = (): void => {
    while (!paused && at < data.length) {
      q.push(data.subarray(at, at + 64 * KiB))
      at += 64 * KiB
      most = Math.max(most, q.buffered)
    }
  }
  setImmediate(flow)
  return { q, most: () => most, paused: () => paused }
}

t.test('a read larger than the limit completes, holding no more than the limit and a chunk', async (t) => {
  const data = pattern(9 * MiB, 3)
  const s = source(data, 4 * MiB)
  const head = await s.q.read(28)
  const big = await within(s.q.read(5 * MiB + 512), 5000, null)
  if (!t.ok(big, 'the 5 MiB + 512 read completed (it used to wait for the paused source forever)')) return
  t.ok(Buffer.concat([head, big!]).equals(data.subarray(0, 28 + 5 * MiB + 512)), 'with the right bytes, in order')
  t.ok(s.most() <= 4 * MiB + 64 * KiB, `the queue never held more than its limit and a chunk (${s.most()} bytes)`)
  t.ok((await s.q.read(64)).equals(data.subarray(28 + 5 * MiB + 512, 28 + 5 * MiB + 576)), 'the next read goes on from there')
})

t.test('skip drops a payload as it arrives and the stream goes on after it', async (t) => {
  const data = pattern(12 * MiB, 4)
  const s = source(data, 4 * MiB)
  await s.q.skip(10 * MiB + 3)
  t.ok((await s.q.read(100)).equals(data.subarray(10 * MiB + 3, 10 * MiB + 103)))
  t.ok(s.most() <= 4 * MiB + 64 * KiB, 'nothing skipped was held past the limit')
})

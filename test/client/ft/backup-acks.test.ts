import t from 'tap'
import { EventSource, FT_MARK, encodeEvent, encodeHeader, recordBytes } from '../../../src/client/vm/events.js'
import type { Machine } from '../../../src/client/vm/index.js'
import { ACK_EVERY_MS, FtBackup } from '../../../src/client/ft/backup.js'
import { FtPrimary, PAIR_SLICE, type Ack } from '../../../src/client/ft/primary.js'
import { SLICE_MS } from '../../../src/client/vm/machine.js'
import { LOSS_MS } from '../../../src/client/ft/channel.js'
import { FakeTimers } from '../../helpers/timers.js'

const memory = 1 << 20
const sha = Buffer.alloc(32)

/** A progress mark at `instret` as a primary logs it: the log's horizon moves there. */
function progress(instret: number): Buffer {
  const extra = Buffer.alloc(16)
  const into = Buffer.alloc(recordBytes(extra.length))
  encodeEvent({ kind: FT_MARK.PROGRESS, arg: 0, instret, value: 0, extra }, into, 0)
  return into
}

/** A backup on a fake clock, its ACKs collected, attached to a machine that is only its count (100). */
function follower(ackEveryMs?: number) {
  const source = new EventSource('(primary)', { memoryBytes: memory, imageSha: sha })
  const clock = new FakeTimers()
  const acks: Ack[] = []
  const backup = new FtBackup({ source, ack: (a) => acks.push(a), timers: clock, ackEveryMs })
  // the machine as the backup sees it between slices: only its count
  const m = { hart: { instret: 100 } } as unknown as Machine
  backup.attach(m)
  return { clock, acks, backup, m, afterSlice: backup.machineOptions({}).afterSlice! }
}

t.test('a count executed right after an ACK is acknowledged within ackEveryMs, even if no slice or LOG follows (an idle guest)', async (t) => {
  const { clock, acks, backup, m, afterSlice } = follower(1)
  // a LOG arrives: acknowledged at once, at the count executed so far (the log goes on to 10 000)
  backup.received(Buffer.concat([encodeHeader(memory, sha), progress(10_000)]))
  t.same(acks.map((a) => a.executed), [100])
  // the replay runs on to 250 at once, then waits for more log (the primary's guest idles)
  m.hart.instret = 250
  await afterSlice(m)
  t.same(acks.map((a) => a.executed), [100], 'not twice within ackEveryMs')
  await clock.advance(1)
  t.same(acks.map((a) => a.executed), [100, 250], 'the count reaches the primary 1 ms later, with nothing more from the replay')
  // nothing new executed: nothing more sent
  await afterSlice(m)
  await clock.advance(5)
  t.same(acks.map((a) => a.executed), [100, 250])
  // past ackEveryMs since the last: at once, as before
  m.hart.instret = 300
  await afterSlice(m)
  t.same(acks.map((a) => a.executed), [100, 250, 300])
})

t.test('by default a backup acks its count at most every ACK_EVERY_MS (a LOG at once), and both sides of a pair run PAIR_SLICE slices', async (t) => {
  const { clock, acks, backup, m, afterSlice } = follower()
  backup.received(Buffer.concat([encodeHeader(memory, sha), progress(10_000)]))
  t.same(acks.map((a) => a.executed), [100], 'a LOG: at once')
  for (let ms = 1; ms < ACK_EVERY_MS; ms++) {
    await clock.advance(1)
    m.hart.instret += 100
    await afterSlice(m)
  }
  t.same(acks.map((a) => a.executed), [100], `nothing more for ${ACK_EVERY_MS - 1} ms of slices`)
  await clock.advance(1)
  t.same(acks.map((a) => a.executed), [100, 100 * ACK_EVERY_MS], `then the count, ${ACK_EVERY_MS} ms after the last`)
  t.ok(ACK_EVERY_MS >= 2 && ACK_EVERY_MS <= 10, `ACK_EVERY_MS ${ACK_EVERY_MS}`)
  const primary = new FtPrimary({ timers: clock, reads: 'disk' })
  t.same(primary.machineOptions({}).slice, PAIR_SLICE, 'the primary asks its machine for PAIR_SLICE')
  t.same(backup.machineOptions({}).slice, PAIR_SLICE, 'and so does the backup')
  t.ok(PAIR_SLICE.ms > SLICE_MS && PAIR_SLICE.maxInstructions / 50_000_000 <= LOSS_MS / 2 / 1000, `${PAIR_SLICE.ms} ms, at most ${PAIR_SLICE.maxInstructions} instructions (at 50 MIPS, within half the ${LOSS_MS}-ms loss timeout)`)
})

t.test('a replay that reaches the log\'s horizon (it waits for more) acknowledges its count at once, however recently it acked', async (t) => {
  const { clock, acks, backup, m, afterSlice } = follower()
  backup.received(Buffer.concat([encodeHeader(memory, sha), progress(1_000)]))
  t.same(acks.map((a) => a.executed), [100], 'a LOG: at once')
  m.hart.instret = 600
  await afterSlice(m)
  t.same(acks.map((a) => a.executed), [100], 'behind the horizon: not within ACK_EVERY_MS')
  m.hart.instret = 1_000
  await afterSlice(m)
  t.same(acks.map((a) => a.executed), [100, 1_000], 'at the horizon: at once (the primary measures its lag exactly)')
  await afterSlice(m)
  await clock.advance(ACK_EVERY_MS)
  t.same(acks.map((a) => a.executed), [100, 1_000], 'nothing new executed: nothing more, and the deferred ACK found nothing new either')
  t.equal(acks.length, 2)
})

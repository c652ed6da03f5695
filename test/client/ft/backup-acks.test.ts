import t from 'tap'
import { EventSource, encodeHeader } from '../../../src/client/vm/events.js'
import type { Machine } from '../../../src/client/vm/index.js'
import { FtBackup } from '../../../src/client/ft/backup.js'
import type { Ack } from '../../../src/client/ft/primary.js'
import { FakeTimers } from '../../helpers/timers.js'

t.test('a count executed right after an ACK is acknowledged within ackEveryMs, even if no slice or LOG follows (an idle guest)', async (t) => {
  const memory = 1 << 20
  const sha = Buffer.alloc(32)
  const source = new EventSource('(primary)', { memoryBytes: memory, imageSha: sha })
  const clock = new FakeTimers()
  const acks: Ack[] = []
  const backup = new FtBackup({ source, ack: (a) => acks.push(a), timers: clock, ackEveryMs: 1 })
  // the machine as the backup sees it between slices: only its count
  const m = { hart: { instret: 100 } } as unknown as Machine
  backup.attach(m)
  const afterSlice = backup.machineOptions({}).afterSlice!
  // a LOG arrives: acknowledged at once, at the count executed so far
  backup.received(encodeHeader(memory, sha))
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

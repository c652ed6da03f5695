import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { followWallOffset, readWallOffset, setWallOffset, wallOffsetMs } from '../../../src/client/host/wall-clock.js'
import { tmp } from '../../helpers/peers.js'

const HOUR = 3_600_000
const near = (a: number, b: number) => Math.abs(a - b) < 5_000

t.test('a shifted wall clock: every way of reading it moves, monotonic time does not, dates given stay as given', async (t) => {
  t.teardown(() => setWallOffset(0))
  const wall0 = Date.now()
  const mono0 = performance.now()
  setWallOffset(-HOUR)
  t.ok(near(Date.now(), wall0 - HOUR), 'Date.now()')
  t.ok(near(new Date().getTime(), wall0 - HOUR), 'new Date()')
  t.ok(near(Date.parse(Date()), wall0 - HOUR), 'Date() as a function')
  t.ok(performance.now() - mono0 < 5_000, 'performance.now() does not jump')
  t.equal(new Date(0).toISOString(), '1970-01-01T00:00:00.000Z', 'a date given is that date')
  t.equal(Date.UTC(2020, 0, 1), 1577836800000)
  t.ok(new Date() instanceof Date)
  class Sub extends Date {}
  t.ok(new Sub() instanceof Sub && near(new Sub().getTime(), wall0 - HOUR), 'subclasses too')
})

t.test('a process follows its host\'s offset file (TANDEM_WALL_OFFSET_FILE) as it changes; a bad file reads as no offset', async (t) => {
  t.teardown(() => setWallOffset(0))
  const file = join(tmp(t, 'tandem-wall-'), 'wall-offset')
  writeFileSync(file, '86400000\n')
  const stop = followWallOffset(file, 20)
  t.teardown(stop)
  t.equal(wallOffsetMs(), 86_400_000, 'read at start')
  writeFileSync(file, '-2000\n')
  for (const end = performance.now() + 5000; wallOffsetMs() !== -2000 && performance.now() < end; ) await new Promise((r) => setTimeout(r, 10))
  t.equal(wallOffsetMs(), -2000, 'a change is followed')
  for (const bad of ['', 'soon', '1.5', String(400 * 24 * HOUR)]) {
    writeFileSync(file, bad)
    t.equal(readWallOffset(file), 0, JSON.stringify(bad))
  }
  t.equal(readWallOffset(join(file, 'missing')), 0)
})

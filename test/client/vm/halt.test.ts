import t from 'tap'
import { readFileSync } from 'node:fs'
import { Machine } from '../../../src/client/vm/machine.js'
import { VirtualSwitch } from '../../../src/client/vm/net.js'
import { guestPath } from '../../../src/client/vm/guests.js'

/**
 * Machine.halt (a pair's side that lost the VM's claim) ends the run whatever the VM waits for. The
 * case partition.test.ts found: kvstore waiting in WFI for a frame that never comes (its MAC moved
 * to the backup on the switch) kept a halted primary running for ever.
 */
t.test('halt ends a run waiting in WFI for a frame that never comes', async (t) => {
  let out = ''
  const sw = new VirtualSwitch()
  const m = new Machine({ image: readFileSync(guestPath('kvstore')), memory: 16 << 20, net: sw.port(), onConsole: (b) => (out += String.fromCharCode(b)) })
  const run = m.run()
  for (let i = 0; i < 500 && !/listening/.test(out); i++) await new Promise((r) => setTimeout(r, 10))
  t.match(out, /kvstore: listening/)
  // well inside its wait: no frame, and the timer it may arm is far off
  await new Promise((r) => setTimeout(r, 50))
  m.halt('halted: the backup took vm/x')
  const ended = await Promise.race([run, new Promise<null>((r) => setTimeout(() => r(null), 3000))])
  t.ok(ended, 'the run ended within 3 s of the halt')
  t.match(ended, { end: 'stopped', message: 'halted: the backup took vm/x' })
})

import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tandem, tmp } from '../../helpers/peers.js'
import { elf, li, rv } from '../../helpers/rv.js'
import { HEADER_BYTES, RECORD_BYTES } from '../../../src/client/vm/events.js'

interface Summary {
  end: string
  exitCode: number | null
  instructions: number
  interrupts: number
  events: number
  stateHash: string
  consoleHash: string
  message?: string
}
function vm(args: string[]): { status: number; summary: Summary; console: string; stderr: string } {
  const r = tandem(['vm', 'run', '--json', ...args])
  let summary: Summary
  try {
    summary = JSON.parse(r.stdout) as Summary
  } catch {
    throw new Error(`no JSON summary (status ${r.status}): ${r.stderr}`)
  }
  return { status: r.status, summary, console: r.stderr, stderr: r.stderr }
}

t.test('ticker: plain runs differ; a recorded run and its replay end identical', async (t) => {
  const a = vm(['--guest', 'ticker'])
  const b = vm(['--guest', 'ticker'])
  t.equal(a.summary.exitCode, 0)
  t.not(a.summary.consoleHash, b.summary.consoleHash, 'two plain runs print different things (time, entropy, interrupts)')
  t.not(a.summary.stateHash, b.summary.stateHash, 'and end in different states')
  const d = tmp(t)
  const log = join(d, 'ticker.log')
  const rec = vm(['--guest', 'ticker', '--record', log])
  t.equal(rec.summary.end, 'exit')
  t.ok(rec.summary.instructions >= 1e8, `${rec.summary.instructions} instructions`)
  // one every 200 us of guest time: fewer the faster the engine runs 10^8 instructions
  t.ok(rec.summary.interrupts >= 100, `${rec.summary.interrupts} timer interrupts`)
  const rep = vm(['--guest', 'ticker', '--replay', log])
  t.equal(rep.status, 0)
  t.equal(rep.summary.end, 'exit')
  t.equal(rep.summary.instructions, rec.summary.instructions, 'same instruction count')
  t.equal(rep.summary.interrupts, rec.summary.interrupts, 'same interrupts')
  t.equal(rep.summary.stateHash, rec.summary.stateHash, 'same memory, registers and devices')
  t.equal(rep.summary.consoleHash, rec.summary.consoleHash, 'same console')
  t.equal(rep.console, rec.console)
  t.equal(rep.summary.events, rec.summary.events, 'every event of the log used')

  // a truncated log: the replay stops where the log runs out, naming the instruction
  const full = readFileSync(log)
  const records = (full.length - HEADER_BYTES) / RECORD_BYTES
  const cut = join(d, 'cut.log')
  writeFileSync(cut, full.subarray(0, HEADER_BYTES + Math.floor(records / 2) * RECORD_BYTES + 7))
  const tr = vm(['--guest', 'ticker', '--replay', cut])
  t.equal(tr.status, 127)
  t.equal(tr.summary.end, 'replay-error')
  t.match(tr.summary.message, /replay log ends .*instruction \d+/, String(tr.summary.message))
  t.ok(tr.summary.instructions < rec.summary.instructions, 'stopped before the end')

  // a corrupt record: found by its CRC when the replay reaches it
  const bad = Buffer.from(full)
  const at = HEADER_BYTES + Math.floor(records / 3) * RECORD_BYTES + 12
  bad[at] ^= 0x40
  const corrupt = join(d, 'corrupt.log')
  writeFileSync(corrupt, bad)
  const cr = vm(['--guest', 'ticker', '--replay', corrupt])
  t.equal(cr.status, 127)
  t.match(cr.summary.message, /record \d+ \(byte \d+\) is corrupt/)

  // a log of another guest, and not a log at all: refused before running
  const other = tandem(['vm', 'run', '--guest', 'cpu', '--replay', log])
  t.equal(other.status, 1)
  t.match(other.stderr, /recorded with a different guest image/)
  writeFileSync(join(d, 'junk.log'), 'hello')
  const junk = tandem(['vm', 'run', '--guest', 'ticker', '--replay', join(d, 'junk.log')])
  t.match(junk.stderr, /not a Tandem VM event log/)
  t.notMatch(junk.stderr, /\n\s+at /, 'no stack trace')
})

t.test('bad guests end in a trap or a clear stop', async (t) => {
  const d = tmp(t)
  const img = (name: string, words: number[]) => {
    const f = join(d, `${name}.elf`)
    writeFileSync(f, elf(words))
    return f
  }
  const cases: [string, number[], number, RegExp][] = [
    ['illegal', [0x0000000b], 125, /illegal instruction at pc 0x80000000/],
    // misaligned loads from RAM are performed (SPEC.md §Hart); from a device they trap
    ['misaligned', [...li(1, 0x10000001), rv.lw(2, 1, 0)], 125, /load address misaligned/],
    ['out-of-range', [...li(1, 0x90000000), rv.sw(2, 1, 0)], 125, /store access fault at pc 0x80000008 \(mtval 0x90000000\)/],
    ['wild-jump', [...li(1, 0x10), rv.jalr(0, 1, 0)], 125, /instruction access fault/],
    ['waits-forever', [rv.wfi(), rv.jal(0, -4)], 126, /waits for an interrupt \(WFI\) that cannot come/],
  ]
  for (const [name, words, status, msg] of cases) {
    const r = vm(['--guest', img(name, words)])
    t.equal(r.status, status, `${name}: exit status ${status}`)
    t.match(r.summary.message, msg, `${name}: ${r.summary.message}`)
  }
  const loop = vm(['--guest', img('runaway', [rv.jal(0, 0)]), '--max-instructions', '5000000'])
  t.equal(loop.status, 124, 'a runaway loop stops at --max-instructions')
  t.equal(loop.summary.instructions, 5000000)
  // images that are not guests
  writeFileSync(join(d, 'notelf'), 'not an elf')
  const ne = tandem(['vm', 'run', '--guest', join(d, 'notelf')])
  t.equal(ne.status, 1)
  t.match(ne.stderr, /not an ELF file/)
  writeFileSync(join(d, 'far.elf'), elf([rv.jal(0, 0)], [{ at: 0x80100000, bytes: Buffer.alloc(16) }]))
  const far = tandem(['vm', 'run', '--guest', join(d, 'far.elf'), '--memory', '1M'])
  t.match(far.stderr, /segment 1 \(0x80100000, 16 bytes\) lies outside the guest's 1048576 bytes of RAM/)
  // a guest whose stack lies beyond its RAM takes the store fault in its own trap handler
  const small = vm(['--guest', 'cpu', '--memory', '1M'])
  t.equal(small.status, 107, 'the guest runtime exits with 100 + mcause')
  t.match(small.console, /trap: mcause 00000007/)
  t.match(tandem(['vm', 'run', '--guest', 'nosuch']).stderr, /no guest named 'nosuch'/)
  t.match(tandem(['vm', 'run', '--guest', 'cpu', '--memory', '1000']).stderr, /multiple of 4 KiB/)
})

t.test('a replay matches its recording at every point observed, and writes the same disk', async (t) => {
  const { Machine, MemoryEventSink, EventReplayer, encodeHeader, guestPath, logicalUnitPath } = await import('../../../src/client/vm/index.js')
  const { LogicalUnit } = await import('../../../src/server/scsi/index.js')
  const { RawFile } = await import('../../../src/disk-formats/index.js')
  const { createHash } = await import('node:crypto')
  const d = tmp(t)
  for (const guest of ['ticker', 'diskio']) {
    const image = readFileSync(guestPath(guest))
    const sha = createHash('sha256').update(image).digest()
    const memory = 16 << 20
    const disks: string[] = []
    const run = async (mode: 'record' | 'replay', log?: Buffer) => {
      const file = join(d, `${guest}-${mode}.raw`)
      disks.push(file)
      const dev = await RawFile.create(file, 8 << 20)
      const seen: string[] = []
      const record = mode === 'record' ? new MemoryEventSink(encodeHeader(memory, sha)) : undefined
      let replay
      if (log) {
        writeFileSync(join(d, 'l.log'), log)
        replay = await EventReplayer.open(join(d, 'l.log'), memory, sha)
      }
      const m = new Machine({ image, memory, record, replay, disk: logicalUnitPath(new LogicalUnit(dev, { serial: 'vm' }), 'iqn.2026-11.local.tandem:vm,i,0x000000000001'), observe: { every: guest === 'ticker' ? 10_000_000 : 250_000, fn: (x) => seen.push(`${x.hart.instret}:${x.stateHash()}`) } })
      const s = await m.run()
      await dev.close()
      return { s, seen, log: record?.bytes() }
    }
    const rec = await run('record')
    const rep = await run('replay', rec.log)
    t.equal(rep.s.end, 'exit', `${guest}: replay ran to the end`)
    t.same(rep.seen, rec.seen, `${guest}: the same state at each of ${rec.seen.length} points`)
    t.equal(rep.s.stateHash, rec.s.stateHash, `${guest}: the same final state`)
    t.same(readFileSync(disks[1]), readFileSync(disks[0]), `${guest}: the same disk, byte for byte`)
  }
})

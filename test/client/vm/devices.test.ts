import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Machine, runVm, guestPath, PAGE_SIZE, RAM_BASE } from '../../../src/client/vm/index.js'
import { startServer } from '../../helpers/server.js'
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { diskioPattern as expected } from '../../helpers/diskio.js'
import { elf, li, rv } from '../../helpers/rv.js'


t.test('diskio on a datastore disk through the SCSI layer; its writes read back through NBD', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('vmdisk', 64 << 20)
  const h = await s.ds.openExport('vmdisk')
  let out = ''
  let summary
  try {
    summary = await runVm({ guest: 'diskio', memory: 32 << 20, disk: h.device, onConsole: (b) => (out += String.fromCharCode(b)) })
  } finally {
    await h.release()
  }
  t.equal(summary.end, 'exit')
  t.equal(summary.exitCode, 0, out)
  t.match(out, /diskio: wrote and verified 1024 blocks/)
  t.ok(summary.interrupts >= 129, `${summary.interrupts} completion interrupts (one per request)`)
  const nbd = await TestNbdClient.open(s.nbdPort, 'vmdisk')
  t.teardown(() => nbd.destroy())
  for (const chunk of [0, 1, 31, 63]) {
    const lba = 2048 + chunk * 16
    const r = await nbd.pread(lba * 512, 16 * 512)
    t.same(r.data, expected(lba, 16), `chunk ${chunk} (LBA ${lba}) through NBD is what the guest wrote`)
  }
  t.same((await nbd.pread(2047 * 512, 512)).data, Buffer.alloc(512), 'the block before is untouched')
})

t.test('dirty-page tracking is exact for memdirty: no page missed, none extra', async (t) => {
  // Oracle: step one instruction at a time; before each store, decode it here and compute the
  // page it writes. Compare with the bitmap every window of instructions.
  const m = new Machine({ image: readFileSync(guestPath('memdirty')), memory: 16 << 20 })
  const { hart, mem } = m
  mem.readAndClearDirty() // loading the image is not a guest store
  const WINDOW = 50_000
  let expectedPages = new Set<number>()
  let windows = 0
  let storesSeen = 0
  let missing = 0
  let extra = 0
  let total = 0
  const compare = () => {
    const got = mem.readAndClearDirty()
    const gotSet = new Set(got)
    for (const p of expectedPages) if (!gotSet.has(p)) missing++
    for (const p of got) if (!expectedPages.has(p)) extra++
    total += got.length
    expectedPages = new Set()
    windows++
  }
  while (m.hart.fault === null) {
    const pc = hart.pc
    const inst = mem.i32[((pc ^ 0x80000000) >>> 0) >>> 2]
    if ((inst & 0x7f) === 0x23) {
      const imm = ((inst >> 25) << 5) | ((inst >>> 7) & 31)
      const addr = (hart.x[(inst >>> 15) & 31] + imm) >>> 0
      const off = addr - RAM_BASE
      if (off >= 0 && off < mem.size) {
        expectedPages.add(Math.floor(off / PAGE_SIZE))
        storesSeen++
      }
    }
    const before = hart.instret
    const r = hart.run(before + 1)
    if (hart.instret % WINDOW === 0) compare()
    if (r === 'device') break // the finisher: memdirty is done
    if (r !== 'limit') break
  }
  compare()
  t.ok(storesSeen > 100_000, `${storesSeen} stores to RAM decoded by the oracle`)
  t.ok(total > 3000, `${total} dirty pages reported over ${windows} windows`)
  t.equal(missing, 0, 'no page missed')
  t.equal(extra, 0, 'no page extra')
  // and whole-memory: after reading and clearing, a DMA-like range write marks exactly its pages
  mem.touchRange(PAGE_SIZE * 10 + 100, PAGE_SIZE * 2)
  t.same(mem.readAndClearDirty(), [10, 11, 12])
  // the first-write hook fires once per page
  const hits: number[] = []
  mem.armFirstWrite((p) => hits.push(p))
  mem.touchRange(PAGE_SIZE * 3, 10)
  mem.touchRange(PAGE_SIZE * 3, 10)
  t.same(hits, [3])
  mem.disarmFirstWrite()
  mem.readAndClearDirty()
  mem.touchRange(PAGE_SIZE * 4, 10)
  t.same(hits, [3], 'disarmed: no more calls')
  t.same(mem.readAndClearDirty(), [4], 'but the page is still marked dirty')
})

t.test('the HBA doorbell ends the run slice right after the store (the request starts between slices)', async (t) => {
  // ring at 0x80001000, 4 slots; producer index 1 (a refused, empty request); then a long busy loop
  const HBA = 0x10002000
  const words = [...li(1, HBA), ...li(2, 0x80001000), rv.sw(2, 1, 0), rv.addi(3, 0, 4), rv.sw(3, 1, 4), rv.addi(3, 0, 1), rv.sw(3, 1, 8), ...li(5, 1_000_000), rv.addi(5, 5, -1), rv.bne(5, 0, -4), rv.jal(0, 0)]
  for (const engine of ['interp', 'jit'] as const) {
    const m = new Machine({ image: elf(words), memory: 1 << 16, engine })
    m.hart.run(2_000_000)
    // li x1 (2), li x2 (2), sw, addi, sw, addi, sw: the doorbell is the 9th instruction
    t.equal(m.hart.instret, 9, `${engine}: the slice ended after the doorbell store`)
    t.equal(m.hba.pending, 1, `${engine}: the request is in flight`)
  }
})

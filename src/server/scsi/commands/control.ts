import * as C from '../constants.js'
import { BLOCK } from '../limits.js'
import { MODE_PAGES, modeSense, standardInquiry, VPD_PAGES, vpdPage, type Described, type ModeSense } from '../pages.js'
import { invalidField, SenseError, senseData } from '../sense.js'
import { allocated, command, dataOutHolds, good, type Command, type Unit } from './command.js'

const nothing = () => ({})

/** the pages' view of the unit; VPD page 0x8F lists the table's third-party copy commands */
function described(u: Unit): Described {
  const copyCommands = new Map<number, number[]>()
  for (const c of u.commands) if (c.thirdPartyCopy) copyCommands.set(c.opcode, [...(copyCommands.get(c.opcode) ?? []), c.serviceAction ?? 0])
  return { identity: u.identity, blocks: u.blocks, readOnly: u.dev.readOnly, copies: u.copies, copyCommands: [...copyCommands] }
}

/** TEST UNIT READY, START STOP UNIT: always ready, nothing to start. */
const noOp = (name: string, opcode: number): Command =>
  command({ name, opcode, cdbLength: 6, access: 'other', metrics: 'other', fields: nothing, run: async () => good() })

/** REQUEST SENSE (SPC-4 6.39): the pending unit attention, taken, or NO SENSE. */
const requestSense = command<{ alloc: number }>({
  name: 'REQUEST SENSE', opcode: C.REQUEST_SENSE, cdbLength: 6, access: 'other', reservationExempt: true, passesUnitAttention: true, metrics: 'other',
  fields: (cdb) => ({ alloc: cdb[4] }),
  async run(u, { alloc }, _out, task) {
    const ua = u.takeAttention(task.nexus)
    const d = senseData(ua ? new SenseError(C.UNIT_ATTENTION, ua) : new SenseError(C.NO_SENSE, 'NO_ADDITIONAL_SENSE'))
    return good(allocated(d, alloc))
  },
})

/** INQUIRY (SPC-4 6.6): standard data, or a VPD page with EVPD. */
const inquiry = command<{ evpd: boolean; reserved: number; page: number; alloc: number }>({
  name: 'INQUIRY', opcode: C.INQUIRY, cdbLength: 6, access: 'other', reservationExempt: true, passesUnitAttention: true, metrics: 'other',
  fields: (cdb) => ({ evpd: (cdb[1] & 1) !== 0, reserved: cdb[1] & 0xfe, page: cdb[2], alloc: cdb.readUInt16BE(3) }),
  check(f) {
    if (f.reserved) throw invalidField(1)
    if (f.evpd ? !(VPD_PAGES as readonly number[]).includes(f.page) : f.page !== 0) throw invalidField(2)
  },
  run: async (u, f) => good(allocated(f.evpd ? vpdPage(described(u), f.page as (typeof VPD_PAGES)[number]) : standardInquiry(u.identity), f.alloc)),
})

/**
 * A device of no blocks has no last LBA to report (the lockspace LU while its file is missing):
 * NOT READY, MEDIUM NOT PRESENT, as a drive with no medium answers.
 */
function noMedium(blocks: number): void {
  if (blocks <= 0) throw new SenseError(C.NOT_READY, 'MEDIUM_NOT_PRESENT')
}

/** READ CAPACITY(10) (SBC-3 5.15): the last LBA (0xFFFFFFFF past 2 TiB) and the block length. */
const readCapacity10 = command<{ lba: number; pmi: boolean }>({
  name: 'READ CAPACITY(10)', opcode: C.READ_CAPACITY_10, cdbLength: 10, access: 'other', metrics: 'other',
  fields: (cdb) => ({ lba: cdb.readUInt32BE(2), pmi: (cdb[8] & 1) !== 0 }),
  check(f) {
    if (f.lba !== 0 && !f.pmi) throw invalidField(2)
  },
  async run(u) {
    noMedium(u.blocks)
    const d = Buffer.alloc(8)
    d.writeUInt32BE(Math.min(u.blocks - 1, 0xffffffff), 0)
    d.writeUInt32BE(BLOCK, 4)
    return good(d)
  },
})

/** READ CAPACITY(16) (SBC-3 5.16): with LBPME and LBPRZ (thin, unmapped blocks read zero). */
const readCapacity16 = command<{ alloc: number }>({
  name: 'READ CAPACITY(16)', opcode: C.SERVICE_ACTION_IN_16, serviceAction: C.SAI_READ_CAPACITY_16, cdbLength: 16, access: 'other', metrics: 'other',
  fields: (cdb) => ({ alloc: cdb.readUInt32BE(10) }),
  async run(u, { alloc }) {
    noMedium(u.blocks)
    const d = Buffer.alloc(32)
    d.writeBigUInt64BE(BigInt(u.blocks - 1), 0)
    d.writeUInt32BE(BLOCK, 8)
    d[14] = 0x80 | 0x40 // LBPME, LBPRZ
    return good(allocated(d, alloc))
  },
})

/** MODE SENSE(6/10) (SPC-4 6.11, 6.12): caching and control pages; no saved values. */
function modeSenseRow(name: string, opcode: number, six: boolean): Command {
  return command<ModeSense & { sub: number; rawPage: number; alloc: number }>({
    name, opcode, cdbLength: six ? 6 : 10, access: 'other', metrics: 'other',
    fields: (cdb) => {
      const rawPage = cdb[2] & 0x3f
      const page = rawPage as ModeSense['page']
      return { six, dbd: (cdb[1] & 0x08) !== 0, pc: cdb[2] >> 6, page, rawPage, sub: cdb[3], alloc: six ? cdb[4] : cdb.readUInt16BE(7) }
    },
    check(f) {
      if (f.pc === 3) throw new SenseError(C.ILLEGAL_REQUEST, 'SAVING_PARAMETERS_NOT_SUPPORTED')
      if (f.sub !== 0 && f.sub !== 0xff) throw invalidField(3)
      if (!(MODE_PAGES as readonly number[]).includes(f.rawPage)) throw invalidField(2)
    },
    run: async (u, f) => good(allocated(modeSense(described(u), f), f.alloc)),
  })
}

/** MODE SELECT(6/10) (SPC-4 6.9, 6.10): nothing is changeable; parameters that match are accepted. */
function modeSelect(name: string, opcode: number, six: boolean): Command {
  return command<{ sp: boolean; plen: number }>({
    name, opcode, cdbLength: six ? 6 : 10, access: 'write', metrics: 'other',
    fields: (cdb) => ({ sp: (cdb[1] & 0x01) !== 0, plen: six ? cdb[4] : cdb.readUInt16BE(7) }),
    check(f, m) {
      if (f.sp) throw invalidField(1, 0) // saving not supported
      dataOutHolds(m.dataOut, f.plen)
    },
    dataOut: (f) => f.plen,
    run: async () => good(),
  })
}

/** REPORT LUNS (SPC-4 6.33): LUN 0 only. */
const reportLuns = command<{ select: number; alloc: number }>({
  name: 'REPORT LUNS', opcode: C.REPORT_LUNS, cdbLength: 12, access: 'other', reservationExempt: true, passesUnitAttention: true, metrics: 'other',
  fields: (cdb) => ({ select: cdb[2], alloc: cdb.readUInt32BE(6) }),
  check(f) {
    if (f.select > 2) throw invalidField(2)
    if (f.alloc < 16) throw invalidField(6)
  },
  async run(_u, { alloc }) {
    const d = Buffer.alloc(16)
    d.writeUInt32BE(8, 0)
    return good(allocated(d, alloc))
  },
})

/** READ DEFECT DATA(10/12) (SBC-3 5.12, 5.13): no defects, a header in the format asked for. */
function readDefectData(name: string, opcode: number, ten: boolean): Command {
  return command<{ alloc: number; format: number }>({
    name, opcode, cdbLength: ten ? 10 : 12, access: 'read', metrics: 'other',
    fields: (cdb) => ({ alloc: ten ? cdb.readUInt16BE(7) : cdb.readUInt32BE(6), format: (ten ? cdb[2] : cdb[1]) & 0x1f }),
    async run(_u, { alloc, format }) {
      const d = Buffer.alloc(ten ? 4 : 8)
      d[1] = format
      return good(allocated(d, alloc))
    },
  })
}

export const CONTROL: readonly Command[] = [
  noOp('TEST UNIT READY', C.TEST_UNIT_READY),
  noOp('START STOP UNIT', C.START_STOP_UNIT),
  requestSense,
  inquiry,
  readCapacity10,
  modeSenseRow('MODE SENSE(6)', C.MODE_SENSE_6, true),
  modeSenseRow('MODE SENSE(10)', C.MODE_SENSE_10, false),
  modeSelect('MODE SELECT(6)', C.MODE_SELECT_6, true),
  modeSelect('MODE SELECT(10)', C.MODE_SELECT_10, false),
  reportLuns,
  readDefectData('READ DEFECT DATA(10)', C.READ_DEFECT_DATA_10, true),
  readDefectData('READ DEFECT DATA(12)', C.READ_DEFECT_DATA_12, false),
]

/** the service-action commands, in the order REPORT SUPPORTED OPERATION CODES lists them */
export const CAPACITY: readonly Command[] = [readCapacity16]

import * as C from '../constants.js'
import { Conflict, type PrIn, type PrOut } from '../persistent-reservations.js'
import { command, good, type Command } from './command.js'

const conflict = () => ({ status: C.RESERVATION_CONFLICT })

/** RESERVE(6), RELEASE(6) (SPC-2 7.21, 7.24): conflict while persistent reservations exist (CRH). */
const reserve = command({
  name: 'RESERVE(6)', opcode: C.RESERVE_6, cdbLength: 6, access: 'other', metrics: 'other',
  fields: () => ({}),
  async run(u, _f, _out, { nexus }) {
    if (u.pr.active || (u.reservedBy !== null && u.reservedBy !== nexus)) return conflict()
    u.reservedBy = nexus
    return good()
  },
})

const release = command({
  name: 'RELEASE(6)', opcode: C.RELEASE_6, cdbLength: 6, access: 'other', reservationExempt: true, metrics: 'other',
  fields: () => ({}),
  async run(u, _f, _out, { nexus }) {
    if (u.pr.active) return conflict()
    if (u.reservedBy === nexus) u.reservedBy = null
    return good()
  },
})

/** PERSISTENT RESERVE IN (SPC-4 6.13). */
const persistentReserveIn = command<PrIn>({
  name: 'PERSISTENT RESERVE IN', opcode: C.PERSISTENT_RESERVE_IN, cdbLength: 10, access: 'other', reservationExempt: true, metrics: 'other',
  fields: (cdb) => ({ sa: cdb[1] & 0x1f, alloc: cdb.readUInt16BE(7) }),
  run: async (u, f) => good(u.pr.in(f)),
})

/** PERSISTENT RESERVE OUT (SPC-4 6.14); PREEMPT AND ABORT aborts the preempted nexuses' task sets. */
const persistentReserveOut = command<PrOut>({
  name: 'PERSISTENT RESERVE OUT', opcode: C.PERSISTENT_RESERVE_OUT, cdbLength: 10, access: 'other', reservationExempt: true, metrics: 'other',
  fields: (cdb) => ({ sa: cdb[1] & 0x1f, scope: cdb[2] >> 4, type: cdb[2] & 0x0f, plen: cdb.readUInt32BE(5) }),
  async run(u, f, out, task) {
    let preempted: string[]
    try {
      preempted = u.pr.out(f, out, task.nexus)
    } catch (e) {
      if (e instanceof Conflict) return conflict()
      throw e
    }
    if (f.sa === C.PRO_PREEMPT_AND_ABORT) await u.abortTasks(new Set(preempted), task)
    return good()
  },
})

/** EXTENDED COPY(LID1) (SPC-4 6.4): copies within this LU, by the copy manager. */
const extendedCopy = command<{ plen: number }>({
  name: 'EXTENDED COPY(LID1)', opcode: C.EXTENDED_COPY, serviceAction: 0x00, cdbLength: 16, access: 'write', thirdPartyCopy: true, metrics: 'xcopy',
  fields: (cdb) => ({ plen: cdb.readUInt32BE(10) }),
  async run(u, { plen }, out, { nexus }) {
    await u.copies.extendedCopy(plen, out, nexus)
    return good()
  },
})

/** RECEIVE COPY RESULTS (SPC-4 6.18): COPY STATUS (00h) and OPERATING PARAMETERS (03h). */
const receiveCopyResults = (name: string, serviceAction: number) =>
  command<{ listId: number; alloc: number }>({
    name, opcode: C.RECEIVE_COPY_RESULTS, serviceAction, cdbLength: 16, access: 'other', thirdPartyCopy: true, metrics: 'other',
    fields: (cdb) => ({ listId: cdb[2], alloc: cdb.readUInt32BE(10) }),
    run: async (u, f, _out, { nexus }) => good(u.copies.receiveCopyResults(serviceAction, f.listId, f.alloc, nexus)),
  })

export const RESERVATIONS: readonly Command[] = [reserve, release, persistentReserveIn, persistentReserveOut]
/** service-action commands, in the order REPORT SUPPORTED OPERATION CODES lists them */
export const COPY: readonly Command[] = [extendedCopy, receiveCopyResults('RECEIVE COPY RESULTS: COPY STATUS', 0x00), receiveCopyResults('RECEIVE COPY RESULTS: OPERATING PARAMETERS', 0x03)]

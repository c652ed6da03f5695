import * as C from '../constants.js'
import { invalidField } from '../sense.js'
import { allocated, command, good, type Command } from './command.js'

interface Rsoc {
  rctd: boolean
  options: number
  opcode: number
  serviceAction: number
  alloc: number
}

/** a command timeouts descriptor with no timeouts given */
function timeouts(): Buffer {
  const b = Buffer.alloc(12)
  b.writeUInt16BE(10, 0)
  return b
}

/** REPORTING OPTIONS 0: every command; the ones without a service action by opcode first, then the others in table order. */
function all(table: readonly Command[], rctd: boolean): Buffer {
  const rows = [...table.filter((c) => c.serviceAction === undefined).sort((a, b) => a.opcode - b.opcode), ...table.filter((c) => c.serviceAction !== undefined)]
  const body = Buffer.concat(
    rows.map((c) => {
      const b = Buffer.alloc(8)
      b[0] = c.opcode
      if (c.serviceAction !== undefined) {
        b.writeUInt16BE(c.serviceAction, 2)
        b[5] = 0x01 // SERVACTV
      }
      if (rctd) b[5] |= 0x02 // CTDP
      b.writeUInt16BE(c.cdbLength, 6)
      return rctd ? Buffer.concat([b, timeouts()]) : b
    }),
  )
  const h = Buffer.alloc(4)
  h.writeUInt32BE(body.length, 0)
  return Buffer.concat([h, body])
}

/** REPORTING OPTIONS 1 (by opcode) or 2 (by opcode and service action): one command's usage data. */
function one(table: readonly Command[], f: Rsoc): Buffer {
  const found = table.find((c) => c.opcode === f.opcode && (f.options === 1 ? c.serviceAction === undefined : c.serviceAction === f.serviceAction))
  const len = found?.cdbLength ?? 0
  const h = Buffer.alloc(4)
  h[1] = (found ? 0x03 : 0x01) | (f.rctd ? 0x80 : 0) // supported as in the standard / not supported
  h.writeUInt16BE(len, 2)
  const usage = Buffer.alloc(len, 0xff)
  if (found) usage[0] = f.opcode
  return Buffer.concat([h, usage, ...(f.rctd && found ? [timeouts()] : [])])
}

/** REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) over `table()`, the table it is a row of. */
export function reportSupportedOperationCodes(table: () => readonly Command[]): Command {
  return command<Rsoc>({
    name: 'REPORT SUPPORTED OPERATION CODES', opcode: C.MAINTENANCE_IN, serviceAction: C.MI_REPORT_SUPPORTED_OPERATION_CODES, cdbLength: 12, access: 'other', reservationExempt: true, metrics: 'other',
    fields: (cdb) => ({ rctd: (cdb[2] & 0x80) !== 0, options: cdb[2] & 0x07, opcode: cdb[3], serviceAction: cdb.readUInt16BE(4), alloc: cdb.readUInt32BE(6) }),
    check(f) {
      if (f.options > 2) throw invalidField(2)
      if (f.options === 0) return
      const rows = table().filter((c) => c.opcode === f.opcode)
      const hasSa = rows.some((c) => c.serviceAction !== undefined)
      // asking by opcode for one with service actions, or by service action for one without
      if ((f.options === 1 && hasSa) || (f.options === 2 && !hasSa && rows.length > 0)) throw invalidField(2)
    },
    run: async (_u, f) => good(allocated(f.options === 0 ? all(table(), f.rctd) : one(table(), f), f.alloc)),
  })
}

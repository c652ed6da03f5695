import { invalidField } from '../sense.js'
import { BLOCK_IO } from './block-io.js'
import type { Command, MetricsClass } from './command.js'
import { CAPACITY, CONTROL } from './control.js'
import { PROVISIONING } from './provisioning.js'
import { reportSupportedOperationCodes } from './report-opcodes.js'
import { COPY, RESERVATIONS } from './reservations.js'

export { type Command, type MetricsClass, type ScsiResult, type Task, type Unit } from './command.js'

/**
 * The command table: every command this logical unit understands, one row each, and the only
 * place an opcode's facts are written (DESIGN §5). Commands with a service action follow the
 * others, in the order REPORT SUPPORTED OPERATION CODES lists them.
 */
export const COMMANDS: readonly Command[] = [
  ...CONTROL,
  ...BLOCK_IO,
  ...PROVISIONING.filter((c) => c.serviceAction === undefined),
  ...RESERVATIONS,
  ...CAPACITY,
  ...PROVISIONING.filter((c) => c.serviceAction !== undefined),
  reportSupportedOperationCodes(() => COMMANDS),
  ...COPY,
]

const byOpcode = new Map<number, Command[]>()
for (const c of COMMANDS) byOpcode.set(c.opcode, [...(byOpcode.get(c.opcode) ?? []), c])

/**
 * A service action the opcode does not have: the opcode's reservation facts (its access where
 * its commands agree, else 'other'), and INVALID FIELD IN CDB at byte 1 once it runs.
 */
function unknownServiceAction(rows: readonly Command[]): Command {
  const [first] = rows
  return {
    ...first,
    name: `${first.name}: unknown service action`,
    serviceAction: undefined,
    access: rows.every((c) => c.access === first.access) ? first.access : 'other',
    exclusive: undefined,
    dataOut: undefined,
    shrink: undefined,
    mediumRead: undefined,
    check() {
      throw invalidField(1)
    },
    run: () => Promise.reject(invalidField(1)),
  }
}
const unknownActions = new Map([...byOpcode].filter(([, rows]) => rows[0].serviceAction !== undefined).map(([op, rows]) => [op, unknownServiceAction(rows)]))

/** The row of `cdb` (opcode, and service action where the opcode has them); undefined for an unknown opcode. */
export function commandFor(cdb: Buffer): Command | undefined {
  const rows = byOpcode.get(cdb[0])
  if (!rows) return undefined
  if (rows[0].serviceAction === undefined) return rows[0]
  const sa = cdb[1] & 0x1f
  return rows.find((c) => c.serviceAction === sa) ?? unknownActions.get(cdb[0])
}

/** The `op` label of an opcode in the export metrics. */
export function metricsClass(opcode: number): MetricsClass {
  return byOpcode.get(opcode)?.[0].metrics ?? 'other'
}

/** `cdb`'s row and fields, or null for an unknown opcode or a CDB shorter than its command's. */
function decoded(cdb: Buffer): { c: Command; f: unknown } | null {
  const c = commandFor(cdb)
  if (!c || cdb.length < c.cdbLength) return null
  return { c, f: c.fields(cdb) }
}

/**
 * The data-out a command carries, in bytes, as its CDB says (the SCSI transfer length), for the
 * transport to compare with its own expected length; and, for the WRITE family, a CDB that
 * transfers only `blocks` (an iSCSI overflow writes only what the initiator sent, RFC 7143 §11.4.5).
 */
export function dataOutLength(cdb: Buffer): { bytes: number; shrink?: (blocks: number) => Buffer } | null {
  const d = decoded(cdb)
  if (!d) return null
  const { c, f } = d
  return { bytes: c.dataOut?.(f) ?? 0, ...(c.shrink ? { shrink: (blocks: number) => c.shrink!(cdb, blocks) } : {}) }
}

/**
 * Bytes the LU reads from the medium and holds at once to execute `cdb`, beyond its data-out: a
 * READ's data-in, the blocks a VERIFY compares (with BYTCHK 3 also the block pattern repeated to
 * their length), the blocks ORWRITE merges into. 0 for a transfer over the maximum (refused before
 * any read) and for every other command (their answers are small). A transport that bounds its
 * memory reserves this much before it runs the command.
 */
export function mediumReadLength(cdb: Buffer): number {
  const d = decoded(cdb)
  return d?.c.mediumRead?.(d.f) ?? 0
}

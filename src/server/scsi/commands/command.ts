import type { BlockDevice } from '../../../disk-formats/block-device.js'
import { GOOD, type AscName } from '../constants.js'
import type { CopyManager } from '../extended-copy.js'
import type { Access, PersistentReservations } from '../persistent-reservations.js'
import { BLOCK, MAX_TRANSFER_BLOCKS } from '../limits.js'
import type { Identity } from '../pages.js'
import { invalidField, lbaOutOfRange, parameterLength } from '../sense.js'

export interface ScsiResult {
  status: number
  dataIn?: Buffer
  sense?: Buffer
}

/** The `op` label of a command in the export metrics (a few classes, not every opcode). */
export type MetricsClass = 'read' | 'write' | 'write_verify' | 'flush' | 'write_same' | 'unmap' | 'compare_and_write' | 'xcopy' | 'other'

/** A command of one I_T nexus from its reservation check to its answer (a SAM-5 task). */
export interface Task {
  readonly nexus: string
  /** aborted before it reached the medium: it answers TASK ABORTED and has no effect */
  aborted: boolean
  /** its work, once it holds the gate (from then on it runs to its end) */
  running: Promise<ScsiResult> | null
}

/** What a command judges its CDB against: the medium's size and the data-out that came. */
export interface Medium {
  readonly blocks: number
  /** bytes of data-out */
  readonly dataOut: number
}

/** The logical unit as its commands see it. */
export interface Unit {
  readonly dev: BlockDevice
  readonly blocks: number
  readonly pr: PersistentReservations
  readonly copies: CopyManager
  /** the device has its own compare-and-write, atomic against all its users */
  readonly ownCompareAndWrite: boolean
  /** the holder of the RESERVE(6) reservation */
  reservedBy: string | null
  readonly identity: Identity
  /** the command table (REPORT SUPPORTED OPERATION CODES, VPD page 0x8F) */
  readonly commands: readonly Command[]
  /** the oldest pending unit attention of `nexus`, taken (REQUEST SENSE reports it) */
  takeAttention(nexus: string): AscName | undefined
  /** aborts the task sets of `nexuses` but `self` (PREEMPT AND ABORT) */
  abortTasks(nexuses: ReadonlySet<string>, self: Task): Promise<void>
}

/**
 * One SCSI command: every fact about it, in one row. `F` is its CDB decoded: `fields` reads it
 * (total: any bytes of `cdbLength` decode), `check` judges it once, `run` trusts it.
 */
export interface Command<F = unknown> {
  readonly name: string
  readonly opcode: number
  /** set for the opcodes whose commands are told apart by a service action (byte 1, bits 4-0) */
  readonly serviceAction?: number
  readonly cdbLength: 6 | 10 | 12 | 16
  /** how it touches the medium, for persistent-reservation conflicts (SPC-4 table 56) */
  readonly access: Access
  /** allowed to a non-holder of a RESERVE(6) reservation (SPC-2 5.5.1) */
  readonly reservationExempt?: boolean
  /** not ended by a pending unit attention (SAM-5 5.14); REQUEST SENSE reports it as its data */
  readonly passesUnitAttention?: boolean
  /** runs alone on the LU, atomic against every other command */
  readonly exclusive?: (u: Unit) => boolean
  /** EXTENDED COPY and RECEIVE COPY RESULTS: listed in VPD page 0x8F */
  readonly thirdPartyCopy?: boolean
  readonly metrics: MetricsClass
  fields(cdb: Buffer): F
  /**
   * Throws the sense of a CDB that cannot run: INVALID FIELD IN CDB naming the byte (and bit),
   * LBA OUT OF RANGE, PARAMETER LIST LENGTH ERROR for block data-out, in the order SBC-3 gives.
   */
  check?(f: F, m: Medium): void
  /** data-out bytes the CDB asks for (the SCSI transfer length); 0 when absent */
  dataOut?(f: F): number
  /** a copy of the CDB asking for `blocks` only (an iSCSI overflow writes what was sent, RFC 7143 §11.4.5) */
  shrink?(cdb: Buffer, blocks: number): Buffer
  /** bytes read from the medium and held at once, beyond the data-out (a transport reserves them) */
  mediumRead?(f: F): number
  run(u: Unit, f: F, out: Buffer, task: Task): Promise<ScsiResult>
}

/** A row of the table, its decoded type erased. */
export const command = <F>(c: Command<F>): Command => c as unknown as Command

export const good = (dataIn?: Buffer): ScsiResult => (dataIn ? { status: GOOD, dataIn } : { status: GOOD })

/** `data` cut to an allocation length */
export const allocated = (data: Buffer, alloc: number): Buffer => data.subarray(0, Math.min(data.length, alloc))

export function inRange(m: { readonly blocks: number }, lba: number, count: number): void {
  if (!Number.isSafeInteger(lba) || lba + count > m.blocks) throw lbaOutOfRange()
}

/** a transfer over the maximum (VPD 0xB0) names its count field */
export function transferable(count: number, countByte: number): void {
  if (count > MAX_TRANSFER_BLOCKS) throw invalidField(countByte)
}

/** RDPROTECT / WRPROTECT / VRPROTECT: no protection information */
export function unprotected(flags: number): void {
  if (flags & 0xe0) throw invalidField(1, 7)
}

/** the data-out carries at least `bytes` (PARAMETER LIST LENGTH ERROR) */
export function dataOutHolds(dataOut: number, bytes: number): void {
  if (dataOut < bytes) throw parameterLength()
}

export const blocks = (count: number) => count * BLOCK

export function firstDifference(a: Buffer, b: Buffer): number {
  if (a.equals(b)) return -1
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i
  return a.length
}

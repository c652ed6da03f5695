import { readField, writeField } from '../../disk-formats/struct.js'
import * as S from '../scsi/constants.js'
import { dataOutLength, logicalUnitNotSupported, mediumReadLength, SenseError, senseData, type LogicalUnit } from '../scsi/index.js'
import { copyLun, DataIn, FINAL, header, lunIsZero, ScsiCommand, ScsiResponse } from './bhs.js'
import { recycle, type DataOutPhase } from './data-out.js'
import { DATA_BUDGET, MAX_EXPECTED_DATA } from './limits.js'
import type { MemoryBudget } from './memory-budget.js'
import type { Params } from './negotiation.js'
import * as P from './pdu.js'

/** What a SCSI command needs from its connection (in full feature phase, on a normal session). */
export interface CommandIo {
  readonly lu: LogicalUnit
  readonly nexus: string
  readonly params: Params
  readonly budget: MemoryBudget
  readonly writes: DataOutPhase
  /** the connection is ending: the command stops where it is */
  gone(): boolean
  /** Sends a target PDU with its numbers; StatSN advances when `advance`. */
  send(b: Buffer, data: Buffer, advance: boolean): void
  /** The command's CmdSN window slot is freed (by the PDU about to carry its status: its MaxCmdSN shows it). */
  freeSlot(): void
  reject(bhs: Buffer, reason: number): void
  account(opcode: number, t0: bigint, status: number, read: number, written: number): void
}

/** ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR: the command's data failed its digest. */
export const crcErrorSense = () => senseData(new SenseError(S.ABORTED_COMMAND, 'PROTOCOL_SERVICE_CRC_ERROR'))

const CMD = ScsiCommand.fields
const RSP = ScsiResponse.fields
const DI = DataIn.fields
/** SCSI Command flags (RFC 7143 §11.3.1) */
const READ = 0x40
const WRITE = 0x20
/** SCSI Response and Data-In flags: residual overflow, underflow; Data-In: status present */
const OVERFLOW = 0x04
const UNDERFLOW = 0x02
const STATUS = 0x01
const NO_DATA = Buffer.alloc(0)

/**
 * Runs a SCSI command and sends its status (a SCSI Response, the last Data-In, or a Reject).
 * `windowed`: it holds a CmdSN window slot, freed by the PDU that carries its status.
 */
export async function runCommand(io: CommandIo, pdu: P.Pdu, windowed: boolean): Promise<void> {
  const { bhs } = pdu
  const itt = P.ittOf(bhs)
  const flags = P.flagsOf(bhs)
  const read = (flags & READ) !== 0
  const write = (flags & WRITE) !== 0
  const edtl = readField(bhs, CMD.expectedDataTransferLength)
  const cdb = readField(bhs, CMD.cdb)
  const t0 = process.hrtime.bigint()
  if (!lunIsZero(bhs)) {
    // only LUN 0 exists
    sendResponse(io, itt, S.CHECK_CONDITION, senseData(logicalUnitNotSupported()), 0, 0, windowed)
    io.account(cdb[0], t0, S.CHECK_CONDITION, 0, 0)
    return
  }
  if (write && edtl > MAX_EXPECTED_DATA) {
    if (windowed) io.freeSlot()
    io.reject(bhs, P.REJECT_INVALID_PDU_FIELD)
    return
  }
  const { budget } = io
  // Bytes this command holds in the budget, taken at once: its data-out buffer and what the LU
  // reads. One needing more than the whole budget (ORWRITE, or VERIFY with BYTCHK 3, of over
  // 16 MiB) waits until it has the budget to itself.
  const need = Math.min(DATA_BUDGET, (write ? edtl : 0) + mediumReadLength(cdb))
  // Unsolicited Data-Out follows the command (InitialR2T=No, F clear) whether or not there is
  // room: it is taken into a buffer of at most FirstBurstLength, and the rest waits.
  const unsolicited = write && edtl > 0 && !io.params.initialR2T && !(flags & FINAL)
  let held = 0
  let room = need === 0 || budget.tryTake(need)
  if (room) held = need
  const takeRoom = async () => {
    await budget.take(need)
    held = need
    room = true
  }
  try {
    if (!room && !unsolicited) await takeRoom()
    if (io.gone()) return
    let dataOut: Buffer | null = null
    if (write && edtl > 0) {
      const got = await io.writes.collect(bhs, pdu.data.subarray(0, Math.min(pdu.data.length, edtl)), edtl, unsolicited, room, takeRoom)
      if (got === null) return
      if (typeof got === 'string') {
        const sense = got === 'digest' ? crcErrorSense() : senseData(new SenseError(S.ABORTED_COMMAND, 'DATA_PHASE_ERROR'))
        sendResponse(io, itt, S.CHECK_CONDITION, sense, 0, 0, windowed)
        io.account(cdb[0], t0, S.CHECK_CONDITION, 0, 0)
        return
      }
      dataOut = got
    }
    if (!room) {
      // a write whose data all came unsolicited
      await takeRoom()
      if (io.gone()) return
    }
    // Residuals (RFC 7143 §11.4.5): compare the initiator's expected length with the SCSI
    // transfer length; on overflow the LU writes only what both agree on.
    let rflags = 0
    let residual = 0
    let written = dataOut?.length ?? 0
    const transfer = write ? dataOutLength(cdb) : null
    if (transfer) {
      written = Math.min(written, transfer.bytes)
      if (edtl < transfer.bytes) {
        rflags = OVERFLOW
        residual = transfer.bytes - edtl
      } else if (edtl > transfer.bytes) {
        rflags = UNDERFLOW
        residual = edtl - transfer.bytes
      }
    }
    const res = await io.lu.execute(cdb, dataOut, io.nexus, write ? edtl : undefined)
    if (dataOut) recycle(dataOut)
    const dataIn = res.dataIn ?? NO_DATA
    const ok = res.status === S.GOOD
    io.account(cdb[0], t0, res.status, ok && read ? Math.min(dataIn.length, edtl) : 0, ok ? written : 0)
    if (read && res.status !== S.CHECK_CONDITION && dataIn.length > 0 && edtl > 0) {
      sendDataIn(io, bhs, itt, dataIn, edtl, res.status, windowed)
      return
    }
    if (read && res.status !== S.CHECK_CONDITION) {
      if (dataIn.length > edtl) {
        rflags = OVERFLOW
        residual = dataIn.length - edtl
      } else if (dataIn.length < edtl) {
        rflags = UNDERFLOW
        residual = edtl - dataIn.length
      }
    }
    sendResponse(io, itt, res.status, res.sense, rflags, residual, windowed)
  } finally {
    if (held) budget.give(held)
  }
}

/** Data-In, the last one with the status; `slot`: the command's window slot is freed with it. */
function sendDataIn(io: CommandIo, cmd: Buffer, itt: number, data: Buffer, edtl: number, status: number, slot: boolean): void {
  const over = data.length > edtl
  // the part sent of a longer result is copied, so the socket's queue holds no more than it counts
  const send = over ? Buffer.from(data.subarray(0, edtl)) : data
  const under = data.length < edtl
  const seg = io.params.maxRecvDataSegmentLength
  let sn = 0
  for (let off = 0; off < send.length || (off === 0 && send.length === 0); off += seg) {
    const last = off + seg >= send.length
    const b = header(P.SCSI_DATA_IN, last ? FINAL | STATUS | (over ? OVERFLOW : 0) | (under ? UNDERFLOW : 0) : 0)
    if (last) writeField(b, DI.status, status)
    copyLun(cmd, b)
    writeField(b, DI.initiatorTaskTag, itt)
    writeField(b, DI.targetTransferTag, P.RESERVED_TAG)
    writeField(b, DI.dataSN, sn++)
    writeField(b, DI.bufferOffset, off)
    if (last) writeField(b, DI.residualCount, over ? data.length - edtl : under ? edtl - data.length : 0)
    if (last && slot) io.freeSlot()
    io.send(b, send.subarray(off, Math.min(off + seg, send.length)), last)
    if (last) break
  }
}

/** SCSI Response (sense data, if any, as its data segment); `slot`: the command's window slot is freed with it. */
export function sendResponse(io: Pick<CommandIo, 'send' | 'freeSlot'>, itt: number, status: number, sense: Buffer | undefined, flags: number, residual: number, slot: boolean): void {
  const b = header(P.SCSI_RESPONSE, FINAL | flags)
  writeField(b, RSP.response, 0) // command completed at target
  writeField(b, RSP.status, status)
  writeField(b, RSP.initiatorTaskTag, itt)
  writeField(b, RSP.residualCount, residual)
  let data = NO_DATA
  if (sense) {
    data = Buffer.alloc(2 + sense.length)
    data.writeUInt16BE(sense.length, 0) // SenseLength (§11.4.7.2)
    sense.copy(data, 2)
  }
  if (slot) io.freeSlot()
  io.send(b, data, true)
}

import { defineStruct, writeField } from '../../disk-formats/struct.js'

/**
 * The 48-byte Basic Header Segment of every iSCSI PDU (RFC 7143 §11.2) and the layout of each
 * opcode's header, declared once for the target and the initiator. Field names are the RFC's.
 * A hot path reads or writes the fields it needs with `readField`/`writeField` on these tables
 * (no decoded object per PDU); other headers are built with `assign`.
 */
export const BHS_LENGTH = 48

/** Bytes 0-7 and the Initiator Task Tag: the same in every PDU (§11.2.1). */
const basic = {
  /** the opcode, with the I (immediate delivery) bit 0x40 in a request */
  opcode: { offset: 0, type: 'u8' },
  /** F (final) is 0x80; the other bits depend on the opcode */
  flags: { offset: 1, type: 'u8' },
  totalAhsLength: { offset: 4, type: 'u8' },
  dataSegmentLength: { offset: 5, type: 'u24be' },
  initiatorTaskTag: { offset: 16, type: 'u32be' },
} as const

const lun = { offset: 8, type: { bytes: 8 } } as const

/** Sequence numbers of an initiator's request. */
const request = {
  cmdSN: { offset: 24, type: 'u32be' },
  expStatSN: { offset: 28, type: 'u32be' },
} as const

/** Sequence numbers of a target's response (§11.3.4-11.3.6). */
const response = {
  statSN: { offset: 24, type: 'u32be' },
  expCmdSN: { offset: 28, type: 'u32be' },
  maxCmdSN: { offset: 32, type: 'u32be' },
} as const

export const Basic = defineStruct(basic, BHS_LENGTH)

/** SCSI Command (§11.3): flags F 0x80, R 0x40, W 0x20, ATTR (low 3 bits). */
export const ScsiCommand = defineStruct(
  {
    ...basic,
    lun,
    expectedDataTransferLength: { offset: 20, type: 'u32be' },
    ...request,
    cdb: { offset: 32, type: { bytes: 16 } },
  },
  BHS_LENGTH,
)

/** SCSI Response (§11.4): flags o 0x10, u 0x08, O 0x04, U 0x02 (residual over/underflow). */
export const ScsiResponse = defineStruct(
  {
    ...basic,
    response: { offset: 2, type: 'u8' },
    status: { offset: 3, type: 'u8' },
    snackTag: { offset: 20, type: 'u32be' },
    ...response,
    expDataSN: { offset: 36, type: 'u32be' },
    bidirectionalReadResidualCount: { offset: 40, type: 'u32be' },
    residualCount: { offset: 44, type: 'u32be' },
  },
  BHS_LENGTH,
)

/** SCSI Data-In (§11.7): flags F 0x80, A 0x40, O 0x04, U 0x02, S 0x01 (status present). */
export const DataIn = defineStruct(
  {
    ...basic,
    status: { offset: 3, type: 'u8' },
    lun,
    targetTransferTag: { offset: 20, type: 'u32be' },
    ...response,
    dataSN: { offset: 36, type: 'u32be' },
    bufferOffset: { offset: 40, type: 'u32be' },
    residualCount: { offset: 44, type: 'u32be' },
  },
  BHS_LENGTH,
)

/** SCSI Data-Out (§11.7): flags F 0x80. */
export const DataOut = defineStruct(
  {
    ...basic,
    lun,
    targetTransferTag: { offset: 20, type: 'u32be' },
    expStatSN: { offset: 28, type: 'u32be' },
    dataSN: { offset: 36, type: 'u32be' },
    bufferOffset: { offset: 40, type: 'u32be' },
  },
  BHS_LENGTH,
)

/** Ready To Transfer (§11.8). */
export const R2t = defineStruct(
  {
    ...basic,
    lun,
    targetTransferTag: { offset: 20, type: 'u32be' },
    ...response,
    r2tSN: { offset: 36, type: 'u32be' },
    bufferOffset: { offset: 40, type: 'u32be' },
    desiredDataTransferLength: { offset: 44, type: 'u32be' },
  },
  BHS_LENGTH,
)

/** Login Request (§11.12): flags T 0x80, C 0x40, CSG bits 2-3, NSG bits 0-1. */
export const LoginRequest = defineStruct(
  {
    ...basic,
    versionMax: { offset: 2, type: 'u8' },
    versionMin: { offset: 3, type: 'u8' },
    isid: { offset: 8, type: { bytes: 6 } },
    tsih: { offset: 14, type: 'u16be' },
    cid: { offset: 20, type: 'u16be' },
    ...request,
  },
  BHS_LENGTH,
)

/** Login Response (§11.13). */
export const LoginResponse = defineStruct(
  {
    ...basic,
    versionMax: { offset: 2, type: 'u8' },
    versionActive: { offset: 3, type: 'u8' },
    isid: { offset: 8, type: { bytes: 6 } },
    tsih: { offset: 14, type: 'u16be' },
    ...response,
    statusClass: { offset: 36, type: 'u8' },
    statusDetail: { offset: 37, type: 'u8' },
  },
  BHS_LENGTH,
)

/** Text Request and NOP-Out (§11.10, §11.18): the same fields. */
export const TextRequest = defineStruct({ ...basic, lun, targetTransferTag: { offset: 20, type: 'u32be' }, ...request }, BHS_LENGTH)
export const NopOut = TextRequest

/** Text Response and NOP-In (§11.11, §11.19). */
export const TextResponse = defineStruct({ ...basic, lun, targetTransferTag: { offset: 20, type: 'u32be' }, ...response }, BHS_LENGTH)
export const NopIn = TextResponse

/** Task Management Function Request (§11.5): the function is flags & 0x7f. */
export const TaskMgmtRequest = defineStruct(
  {
    ...basic,
    lun,
    referencedTaskTag: { offset: 20, type: 'u32be' },
    ...request,
    refCmdSN: { offset: 32, type: 'u32be' },
    expDataSN: { offset: 36, type: 'u32be' },
  },
  BHS_LENGTH,
)

/** Task Management Function Response (§11.6). */
export const TaskMgmtResponse = defineStruct({ ...basic, response: { offset: 2, type: 'u8' }, ...response }, BHS_LENGTH)

/** Logout Request (§11.14): the reason code is flags & 0x7f. */
export const LogoutRequest = defineStruct({ ...basic, cid: { offset: 20, type: 'u16be' }, ...request }, BHS_LENGTH)

/** Logout Response (§11.15). */
export const LogoutResponse = defineStruct(
  {
    ...basic,
    response: { offset: 2, type: 'u8' },
    ...response,
    time2Wait: { offset: 40, type: 'u16be' },
    time2Retain: { offset: 42, type: 'u16be' },
  },
  BHS_LENGTH,
)

/** Reject (§11.17): the data segment is the rejected PDU's header. */
export const Reject = defineStruct({ ...basic, reason: { offset: 2, type: 'u8' }, ...response, dataSN: { offset: 36, type: 'u32be' } }, BHS_LENGTH)

/** The I bit of a request's opcode byte (§11.2.1.1). */
export const IMMEDIATE = 0x40
/** The F bit of the flags byte. */
export const FINAL = 0x80

/** A new BHS with the opcode byte (I bit included) and flags set, all else zero. */
export function header(opcode: number, flags: number): Buffer {
  const b = Buffer.alloc(BHS_LENGTH)
  writeField(b, basic.opcode, opcode)
  writeField(b, basic.flags, flags)
  return b
}

/** The header's LUN is 0 (the only one a target has). */
export const lunIsZero = (bhs: Buffer) => bhs.readBigUInt64BE(lun.offset) === 0n

/** Copies the LUN of one header into another. */
export function copyLun(from: Buffer, to: Buffer): void {
  from.copy(to, lun.offset, lun.offset, lun.offset + lun.type.bytes)
}

import { readField } from '../../disk-formats/struct.js'
import { Basic, FINAL, IMMEDIATE } from './bhs.js'

/** iSCSI PDUs (RFC 7143 §11): opcodes, a PDU as read, login and text key=value data. The header layouts are in bhs.ts. */

// Initiator opcodes
export const NOP_OUT = 0x00
export const SCSI_COMMAND = 0x01
export const TASK_MGMT_REQUEST = 0x02
export const LOGIN_REQUEST = 0x03
export const TEXT_REQUEST = 0x04
export const SCSI_DATA_OUT = 0x05
export const LOGOUT_REQUEST = 0x06
export const SNACK_REQUEST = 0x10
// Target opcodes
export const NOP_IN = 0x20
export const SCSI_RESPONSE = 0x21
export const TASK_MGMT_RESPONSE = 0x22
export const LOGIN_RESPONSE = 0x23
export const TEXT_RESPONSE = 0x24
export const SCSI_DATA_IN = 0x25
export const LOGOUT_RESPONSE = 0x26
export const R2T = 0x31
export const REJECT = 0x3f

// Reject reasons (§11.17.1)
export const REJECT_DIGEST_ERROR = 0x02
export const REJECT_PROTOCOL_ERROR = 0x04
export const REJECT_COMMAND_NOT_SUPPORTED = 0x05
export const REJECT_IMMEDIATE_COMMAND = 0x06 // too many immediate commands
export const REJECT_INVALID_PDU_FIELD = 0x09

export const RESERVED_TAG = 0xffffffff

export interface Pdu {
  bhs: Buffer
  ahs: Buffer
  data: Buffer
  /** the data segment failed its CRC32C data digest (the data is not to be used) */
  digestError?: boolean
  /** the data was read straight into the buffer given for it, at the PDU's BufferOffset */
  direct?: boolean
  /** a request outside the CmdSN window, to be silently ignored (its data was dropped unread) */
  ignored?: boolean
}

export const opcodeOf = (bhs: Buffer) => readField(bhs, Basic.fields.opcode) & 0x3f
export const immediateOf = (bhs: Buffer) => (readField(bhs, Basic.fields.opcode) & IMMEDIATE) !== 0
export const flagsOf = (bhs: Buffer) => readField(bhs, Basic.fields.flags)
export const finalOf = (bhs: Buffer) => (flagsOf(bhs) & FINAL) !== 0
export const ittOf = (bhs: Buffer) => readField(bhs, Basic.fields.initiatorTaskTag)

/** Parses `key=value\0…` text (§6.1); bounded by the caller's data segment limit. */
export function parseText(data: Buffer): [string, string][] {
  const out: [string, string][] = []
  for (const item of data.toString('utf8').split('\0')) {
    if (item === '') continue
    const eq = item.indexOf('=')
    if (eq <= 0) throw new Error(`malformed key=value '${item.slice(0, 64)}'`)
    out.push([item.slice(0, eq), item.slice(eq + 1)])
  }
  return out
}

export function encodeText(pairs: [string, string][]): Buffer {
  return Buffer.from(pairs.map(([k, v]) => `${k}=${v}\0`).join(''), 'utf8')
}

import { defineStruct } from '../../disk-formats/struct.js'

/**
 * The virtual SCSI HBA's ring slot (SPEC.md "HBA ring slot", 64 bytes, little-endian). The guest
 * writes the request fields; the HBA writes the completion fields, and nothing else, when the
 * request completes. Offsets are from the slot's start.
 */
export const HbaRequest = defineStruct({
  cdb: { offset: 0, type: { bytes: 16 } },
  dataAddr: { offset: 16, type: 'u32' },
  dataLength: { offset: 20, type: 'u32' },
  cdbLength: { offset: 24, type: 'u8' },
  /** 0 none, 1 to the device (data-out), 2 from the device (data-in) */
  direction: { offset: 25, type: 'u8' },
})

export const HbaCompletion = defineStruct({
  status: { offset: 28, type: 'u8' },
  /** 1 at completion */
  done: { offset: 29, type: 'u8' },
  senseLength: { offset: 30, type: 'u16' },
  /** zero-padded */
  sense: { offset: 32, type: { bytes: 32 } },
})

export const HBA_SLOT_BYTES = HbaCompletion.size
/** where the completion fields begin (the bytes a completion dirties) */
export const HBA_COMPLETION_AT = HbaCompletion.fields.status.offset
/** a CDB longer than the slot holds is cut to it */
export const HBA_CDB_BYTES = HbaRequest.fields.cdb.type.bytes

/** SCSI constants with their SPC/SBC names. */

export const GOOD = 0x00
export const CHECK_CONDITION = 0x02
export const CONDITION_MET = 0x04
export const BUSY = 0x08
export const RESERVATION_CONFLICT = 0x18
export const TASK_SET_FULL = 0x28
export const TASK_ABORTED = 0x40

// Sense keys (SPC-4 table 54)
export const NO_SENSE = 0x0
export const NOT_READY = 0x2
export const MEDIUM_ERROR = 0x3
export const HARDWARE_ERROR = 0x4
export const ILLEGAL_REQUEST = 0x5
export const UNIT_ATTENTION = 0x6
export const DATA_PROTECT = 0x7
export const COPY_ABORTED = 0xa
export const ABORTED_COMMAND = 0xb
export const MISCOMPARE = 0xe

// Operation codes
export const TEST_UNIT_READY = 0x00
export const REQUEST_SENSE = 0x03
export const READ_6 = 0x08
export const WRITE_6 = 0x0a
export const INQUIRY = 0x12
export const MODE_SELECT_6 = 0x15
export const RESERVE_6 = 0x16
export const RELEASE_6 = 0x17
export const MODE_SENSE_6 = 0x1a
export const START_STOP_UNIT = 0x1b
export const READ_CAPACITY_10 = 0x25
export const READ_DEFECT_DATA_10 = 0x37
export const READ_DEFECT_DATA_12 = 0xb7
export const PERSISTENT_RESERVE_IN = 0x5e
export const PERSISTENT_RESERVE_OUT = 0x5f
export const READ_10 = 0x28
export const WRITE_10 = 0x2a
export const WRITE_AND_VERIFY_10 = 0x2e
export const VERIFY_10 = 0x2f
export const PRE_FETCH_10 = 0x34
export const SYNCHRONIZE_CACHE_10 = 0x35
export const WRITE_SAME_10 = 0x41
export const UNMAP = 0x42
export const MODE_SELECT_10 = 0x55
export const MODE_SENSE_10 = 0x5a
export const READ_16 = 0x88
export const COMPARE_AND_WRITE = 0x89
export const WRITE_16 = 0x8a
export const ORWRITE_16 = 0x8b
export const WRITE_AND_VERIFY_16 = 0x8e
export const VERIFY_16 = 0x8f
export const PRE_FETCH_16 = 0x90
export const SYNCHRONIZE_CACHE_16 = 0x91
export const WRITE_SAME_16 = 0x93
export const WRITE_ATOMIC_16 = 0x9c
export const SERVICE_ACTION_IN_16 = 0x9e
export const REPORT_LUNS = 0xa0
export const MAINTENANCE_IN = 0xa3
export const EXTENDED_COPY = 0x83
export const RECEIVE_COPY_RESULTS = 0x84
export const READ_12 = 0xa8
export const WRITE_12 = 0xaa
export const WRITE_AND_VERIFY_12 = 0xae
export const VERIFY_12 = 0xaf

// Service actions
export const SAI_READ_CAPACITY_16 = 0x10
export const SAI_GET_LBA_STATUS = 0x12
export const MI_REPORT_SUPPORTED_OPERATION_CODES = 0x0c
/** PERSISTENT RESERVE IN service actions (SPC-4 6.13.1) */
export const PRI_READ_KEYS = 0x00
export const PRI_READ_RESERVATION = 0x01
/** PERSISTENT RESERVE OUT service actions (SPC-4 6.14.1) */
export const PRO_REGISTER = 0x00
export const PRO_RESERVE = 0x01
export const PRO_RELEASE = 0x02
export const PRO_CLEAR = 0x03
export const PRO_PREEMPT = 0x04
export const PRO_PREEMPT_AND_ABORT = 0x05
export const PRO_REGISTER_AND_IGNORE_EXISTING_KEY = 0x06

/** Additional sense code and qualifier pairs used here (SPC-4 annex D). */
export const ASC = {
  NO_ADDITIONAL_SENSE: [0x00, 0x00],
  LUN_NOT_READY_MANUAL_INTERVENTION: [0x04, 0x03],
  MEDIUM_NOT_PRESENT: [0x3a, 0x00],
  UNREACHABLE_COPY_TARGET: [0x08, 0x04],
  WRITE_ERROR: [0x0c, 0x00],
  UNRECOVERED_READ_ERROR: [0x11, 0x00],
  PARAMETER_LIST_LENGTH_ERROR: [0x1a, 0x00],
  MISCOMPARE_DURING_VERIFY_OPERATION: [0x1d, 0x00],
  INVALID_COMMAND_OPERATION_CODE: [0x20, 0x00],
  LBA_OUT_OF_RANGE: [0x21, 0x00],
  INVALID_FIELD_IN_CDB: [0x24, 0x00],
  LOGICAL_UNIT_NOT_SUPPORTED: [0x25, 0x00],
  INVALID_FIELD_IN_PARAMETER_LIST: [0x26, 0x00],
  INVALID_RELEASE_OF_PERSISTENT_RESERVATION: [0x26, 0x04],
  TOO_MANY_TARGET_DESCRIPTORS: [0x26, 0x06],
  UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: [0x26, 0x07],
  TOO_MANY_SEGMENT_DESCRIPTORS: [0x26, 0x08],
  UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: [0x26, 0x09],
  WRITE_PROTECTED: [0x27, 0x00],
  SPACE_ALLOCATION_FAILED_WRITE_PROTECT: [0x27, 0x07],
  POWER_ON_RESET_OR_BUS_DEVICE_RESET: [0x29, 0x00],
  BUS_DEVICE_RESET_FUNCTION_OCCURRED: [0x29, 0x03],
  I_T_NEXUS_LOSS_OCCURRED: [0x29, 0x07],
  MODE_PARAMETERS_CHANGED: [0x2a, 0x01],
  RESERVATIONS_PREEMPTED: [0x2a, 0x03],
  RESERVATIONS_RELEASED: [0x2a, 0x04],
  REGISTRATIONS_PREEMPTED: [0x2a, 0x05],
  CAPACITY_DATA_HAS_CHANGED: [0x2a, 0x09],
  SAVING_PARAMETERS_NOT_SUPPORTED: [0x39, 0x00],
  INTERNAL_TARGET_FAILURE: [0x44, 0x00],
  PROTOCOL_SERVICE_CRC_ERROR: [0x47, 0x05],
  DATA_PHASE_ERROR: [0x4b, 0x00],
} as const satisfies Record<string, readonly [number, number]>

export type AscName = keyof typeof ASC

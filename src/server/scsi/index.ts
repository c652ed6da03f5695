export { LogicalUnit, BLOCK, dataOutLength, mediumReadLength, type ScsiResult, type LogicalUnitOptions } from './logical-unit.js'
export { SenseError, logicalUnitNotSupported, senseData, senseFor } from './sense.js'
export * as SCSI from './constants.js'

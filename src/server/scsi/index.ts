export { LogicalUnit, BLOCK, dataOutLength, mediumReadLength, type ScsiResult, type LogicalUnitOptions } from './logical-unit.js'
export { SenseError, senseData, senseFor } from './sense.js'
export * as SCSI from './constants.js'
export { PersistentReservations } from './persistent-reservations.js'

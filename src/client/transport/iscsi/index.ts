export { IscsiInitiator, ScsiStatusError, statusError, DEFAULT_INITIATOR, type InitiatorOptions, type ScsiResult } from './initiator.js'
export { isIscsiUri, parseIscsiUri, ISCSI_DEFAULT_PORT, type IscsiUri } from './uri.js'
export { SessionLostError, type ReconnectPolicy } from './recovery.js'
export type { Timers } from '../../../server/net/timers.js'

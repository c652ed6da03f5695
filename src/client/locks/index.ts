export { WatchdogLink, WATCHDOG_FIRED } from './watchdog-link.js'
export { openLockStorage } from './open-storage.js'
export { isIscsiUri } from '../transport/iscsi/uri.js'

export { LockManager, initLockspace, realClock, DEFAULT_TIMINGS, type Clock, type Held, type AcquireOptions, type HostView, type LockView, type LockspaceOptions } from './manager.js'
export { FileLockStorage, delayedStorage, countingStorage, type LockStorage } from './storage.js'
export { openLockStorage } from './open-storage.js'
export { isIscsiUri } from '../transport/iscsi/uri.js'

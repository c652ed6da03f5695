export { LockManager, initLockspace, realClock, DEFAULT_TIMINGS, type Clock, type Held, type AcquireOptions, type HostView, type LockView, type LockspaceOptions } from './manager.js'
export { FileLockStorage, delayedStorage, countingStorage, type LockStorage } from './storage.js'

export { LockManager, initLockspace, realClock, DEFAULT_TIMINGS, type Clock, type Held, type AcquireOptions, type HostView, type LockView, type LockspaceOptions, type JoinOptions } from './manager.js'
export { FileLockStorage, delayedStorage, countingStorage, type LockStorage } from './storage.js'
export { WatchdogLink, WATCHDOG_FIRED } from './watchdog-link.js'

export * from './layout.js'
export { LockspaceObserver, realClock, backgroundClock, type Clock, type HostView, type LockView, type LockspaceReader } from './observer.js'
export { LockManager, initLockspace, DEFAULT_TIMINGS, type Held, type AcquireOptions, type LockspaceOptions, type JoinOptions } from './manager.js'
export { FileLockStorage, delayedStorage, countingStorage, type LockStorage, type FileLockStorageOptions } from './storage.js'

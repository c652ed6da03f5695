import { isIscsiUri } from '../transport/iscsi/uri.js'
import type { IscsiLockStorageOptions } from './iscsi-storage.js'
import { FileLockStorage, type LockStorage } from '../../disk-formats/lock-region/index.js'

/**
 * The lockspace named by `--lockspace`: `iscsi://HOST[:PORT]/IQN/LUN` is an LU locked by SCSI
 * COMPARE AND WRITE (iscsi-storage.ts, loaded only then), anything else a file.
 */
export async function openLockStorage(spec: string, o: IscsiLockStorageOptions = {}): Promise<LockStorage> {
  if (!isIscsiUri(spec)) return FileLockStorage.open(spec)
  const { IscsiLockStorage } = await import('./iscsi-storage.js')
  return IscsiLockStorage.open(spec, o)
}

export { Datastore, type DiskRecord, type DiskInfo, type SnapshotRecord, type AccessRecord, type ExportHandle } from './datastore.js'
export { LiveDisk } from '../../disk-formats/filters/index.js'
export { validName, parseExportName, IQN_PREFIX, LOCKSPACE_IQN } from './names.js'
export { PskKeys, KEYS_FILE, validIdentity, validKey } from './psk-keys.js'

export { lockArbiter, fenceKey, vmLockName } from './arbiter.js'
export { ftPrimary, ftBackup, type Arbiter, type FtReport, type FtRole, type FtRoleOptions, type FtStatus } from './run-ft.js'
export { BackupDisk, type BackupReads } from './backup-disk.js'
export { FtBackup, rarpAnnouncement } from './backup.js'
export { FtPrimary, type Ack } from './primary.js'
export {
  FT_VERSION,
  FT_TYPE,
  FT_TYPES,
  MAX_PAYLOAD,
  MAX_TEXT,
  FRAME_OVERHEAD,
  FrameDecoder,
  FtProtocolError,
  decodeFrame,
  encodeFrame,
  type FtBackupReads,
  type FtByeReason,
  type FtErrorCode,
  type FtHelloParams,
  type FtMessage,
  type FtMessageOf,
  type FtMode,
  type FtRefusal,
  type FtStart,
  type FtType,
} from './protocol.js'
export { FtChannel, FtChannelEnded, FtListener, HEARTBEAT_MS, LOSS_MS, HIGH_WATER_BYTES, CLOSE_GRACE_MS, type FtChannelOptions, type FtCounts, type FtEnd } from './channel.js'
export { FaultLink, type FaultLinkOptions } from './fault-link.js'
export { coloPrimary, coloSecondary, COLO_TIMEOUT_MS, type ColoOptions, type ColoStats } from './colo/run-colo.js'
export { DirtyPageResync, type Resync } from './colo/resync.js'

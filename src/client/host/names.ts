import { createHash } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import { NAME_BYTES } from '../../disk-formats/lock-region/layout.js'

/** Tandem's iSCSI names (DESIGN §8): a host's is used for the lockspace only, a VM's for its disk. */
import { IQN_PREFIX } from '../../server/datastore/names.js'
import { vmInitiatorName } from '../vm/scsi-path.js'

export { LOCKSPACE_IQN } from '../../server/datastore/names.js'

/**
 * Host and VM names become part of an iSCSI name (RFC 3720 §3.2.6: lowercase letters, digits,
 * '.', '-') and of a lock name (`vm/<name>`, at most the lockspace's 64 bytes): hence the
 * character set and the 60-byte bound.
 */
const NAME = /^[a-z0-9]([a-z0-9.-]{0,58}[a-z0-9])?$/

function valid(kind: 'host' | 'VM', name: unknown): string {
  if (typeof name !== 'string' || !NAME.test(name)) {
    throw new StorageError('InvalidArgument', `invalid ${kind} name ${JSON.stringify(name)}: 1 to 60 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit (it becomes part of an iSCSI name)`)
  }
  return name
}

export const validHostName = (name: unknown): string => valid('host', name)
export const validVmName = (name: unknown): string => valid('VM', name)

/** The host's initiator name, used for the lockspace only. */
export const hostIqn = (host: string): string => `${IQN_PREFIX}host:${host}`
/** The VM's initiator name for its disk: the same on every host it runs on (per-VM storage identity). */
export const vmIqn = vmInitiatorName
/** The exclusive lock a VM holds while it runs (its generation is the fencing token). */
export const vmLockName = (vm: string): string => `vm/${vm}`

/**
 * The lockspace host name of a pair's side that `host` runs for VM `vm`: `<host>-vm-<vm>`, or, past
 * the lockspace's 64-byte names, its first 47 bytes and 16 hex digits of its SHA-256 (still unique).
 * The side's arbiter holds vm/<name> under it, apart from the host's own slot.
 */
export function ftHostName(host: string, vm: string): string {
  const full = `${host}-vm-${vm}`
  if (full.length <= NAME_BYTES) return full
  return `${full.slice(0, NAME_BYTES - 17)}-${createHash('sha256').update(full).digest('hex').slice(0, 16)}`
}

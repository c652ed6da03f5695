import { StorageError } from '../../disk-formats/errors.js'

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

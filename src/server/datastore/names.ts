import { StorageError } from '../../disk-formats/errors.js'

/**
 * The one place names are validated (DESIGN §4): disks and snapshots are
 * `[A-Za-z0-9._-]{1,64}`, not starting with a dot (which keeps `.`, `..` and `.tandem` out).
 * Nothing joins a user's string into a path without passing here first.
 */
const NAME = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/

export function isValidName(name: unknown): name is string {
  return typeof name === 'string' && NAME.test(name)
}

export function validName(kind: 'disk' | 'snapshot', name: unknown): string {
  if (!isValidName(name)) {
    throw new StorageError(
      'InvalidArgument',
      `invalid ${kind} name ${JSON.stringify(name)}: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with '.'`,
    )
  }
  return name
}

/** A disk's iSCSI target is `IQN_PREFIX + disk` (DESIGN §5), its NBD export the disk's own name. */
export const IQN_PREFIX = 'iqn.2026-11.local.tandem:'
/** The lockspace's LUN, exported to every initiator when the datastore has a lockspace. */
export const LOCKSPACE_IQN = `${IQN_PREFIX}lockspace`

/** An export name: `disk` (read-write, current state) or `disk@snapshot` (read-only). */
export function parseExportName(exportName: string): { disk: string; snapshot?: string } {
  const at = exportName.indexOf('@')
  if (at < 0) return { disk: validName('disk', exportName) }
  return { disk: validName('disk', exportName.slice(0, at)), snapshot: validName('snapshot', exportName.slice(at + 1)) }
}

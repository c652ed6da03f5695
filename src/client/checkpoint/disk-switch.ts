import { StorageError } from '../../disk-formats/errors.js'

/**
 * The disk half of a VM checkpoint (issue 16): prepare a COW delta while the VM runs, switch the
 * disk onto it inside the stun (commit), then decide what becomes of the frozen layer
 * (afterwards). Two kinds: a disk on a Tandem server (server-switch.ts) and a local VMDK file the
 * VM opened in-process (local-switch.ts).
 */

/** keep: the frozen layer is the checkpoint's disk; copy-and-commit: a standalone copy of it is, and the delta goes back into the parent. */
export type Afterwards = 'keep' | 'copy-and-commit'

export interface DiskSwitch {
  /** Makes the delta `name` (slow: outside the stun); the disk is unchanged until commit. */
  prepare(name: string): Promise<PreparedSwitch>
}

export interface PreparedSwitch {
  /** Switches the disk onto the delta (inside the stun): from here writes go to the delta. */
  commit(): Promise<SwitchedDisk>
  /** Drops the delta; the disk stays as it is. */
  abort(): Promise<void>
}

export interface SwitchedDisk {
  /** the frozen layer holding the disk as it was at the switch (a file path, or DISK@SNAPSHOT on a server) */
  readonly layer: string
  /**
   * `keep`: the checkpoint's disk is `layer`. `copy-and-commit`: `layer`'s content is copied to
   * the standalone VMDK `copyTo` (the checkpoint's disk), then the delta is folded back into the
   * chain so the disk has no extra layer. Resolves to the checkpoint's disk.
   */
  afterwards(mode: Afterwards, opts?: { copyTo?: string }): Promise<{ disk: string }>
}

/** The copy target of copy-and-commit: InvalidArgument when it is missing. */
export function copyTarget(mode: Afterwards, opts: { copyTo?: string } | undefined): string | undefined {
  if (mode === 'keep') return undefined
  if (!opts?.copyTo) throw new StorageError('InvalidArgument', 'copy-and-commit needs copyTo (the file the standalone copy goes to)')
  return opts.copyTo
}

import type { BlockDevice } from '../../disk-formats/block-device.js'
import { StorageError } from '../../disk-formats/errors.js'
import { openImage, type OpenImageOptions } from '../../disk-formats/chain/index.js'
import { IscsiInitiator, isIscsiUri, type InitiatorOptions } from './iscsi/index.js'
import { isNbdUri, NbdClient } from './nbd/index.js'

/** nbd:// and iscsi:// name disks on a server rather than files. */
export const isNetworkDisk = (p: string): boolean => isNbdUri(p) || isIscsiUri(p)

/**
 * An image file, an export named by an nbd:// URI or a LU named by an iscsi:// URI (as qemu-img
 * accepts all three). `iscsi`: the session's identity (initiator name, ISID, CHAP).
 */
export async function openDisk(path: string, opts: OpenImageOptions & { iscsi?: Omit<InitiatorOptions, 'readOnly'> } = {}): Promise<BlockDevice> {
  if (isNetworkDisk(path)) {
    if (opts.format === 'vmdk') throw new StorageError('Unsupported', `'${path}': a network disk is read as raw bytes (-f raw)`)
    return isNbdUri(path) ? NbdClient.connect(path, { readOnly: opts.readOnly }) : IscsiInitiator.connect(path, { ...opts.iscsi, readOnly: opts.readOnly })
  }
  return openImage(path, opts)
}

import type { BlockDevice } from '../../disk-formats/block-device.js'
import { StorageError } from '../../disk-formats/errors.js'
import { IscsiInitiator, isIscsiUri } from '../transport/iscsi/index.js'
import { isNetworkDisk, openDisk } from '../transport/open-disk.js'
import { probeFormat } from '../../disk-formats/chain/index.js'
import { imageLocking } from '../../disk-formats/image-lock.js'
import { openSwitchableDisk } from '../checkpoint/local-switch.js'
import type { DiskSwitch } from '../checkpoint/disk-switch.js'
import { initiatorPath, vmIsid, type ScsiPath } from './scsi-path.js'

/**
 * A VM's disk, opened: a block device for an in-process LU, or a SCSI path to a target. A local
 * VMDK also has the switch a checkpoint moves it onto a new delta with.
 */
export type VmDisk = { disk: BlockDevice; scsi?: undefined; switch?: DiskSwitch; close(): Promise<void> } | { disk?: undefined; scsi: ScsiPath; switch?: undefined; close(): Promise<void> }

/**
 * Opens `--disk`: a file or nbd:// export (runVm puts an in-process LU over it), or an iscsi://
 * LU reached in a session logged in as `identity` with the VM's fixed ISID (vmIsid), so the LU's
 * access list, and the reservations the guest makes, see the VM and not the host it runs on.
 */
export async function openVmDisk(spec: string, identity: string, o: { isidQualifier?: number; follow?: boolean } = {}): Promise<VmDisk> {
  if (o.follow && !isNetworkDisk(spec)) {
    // a file another process writes (an FT primary): read-only, taking no image lock (qemu's -U);
    // a VMDK's tables would be cached stale under the writer, so only a raw file is followed
    if ((await probeFormat(spec)) === 'vmdk') {
      throw new StorageError('Unsupported', `'${spec}': an FT backup follows a local disk only as a raw file (its primary changes a VMDK's tables under it); give a datastore disk over iscsi://`)
    }
    const was = imageLocking.forceShare
    imageLocking.forceShare = true
    try {
      const dev = await openDisk(spec, { readOnly: true })
      return { disk: dev, close: () => dev.close() }
    } finally {
      imageLocking.forceShare = was
    }
  }
  const isidQualifier = o.isidQualifier ?? 1
  if (!isNetworkDisk(spec) && (await probeFormat(spec)) === 'vmdk') {
    const { device, switch: sw } = await openSwitchableDisk(spec)
    return { disk: device, switch: sw, close: () => device.close() }
  }
  let dev: BlockDevice
  try {
    dev = await openDisk(spec, { iscsi: { initiatorName: identity, isid: vmIsid(identity, isidQualifier) } })
  } catch (e) {
    if (!isIscsiUri(spec) || !(e instanceof StorageError)) throw e
    throw new StorageError(e.code, `the VM's disk as ${identity}: ${e.message}`)
  }
  const close = () => dev.close()
  return dev instanceof IscsiInitiator ? { scsi: initiatorPath(dev), close } : { disk: dev, close }
}

/**
 * openVmDisk for a side that has just won its VM (an FT backup going live): the process that lost
 * it may hold a local file's image lock a moment longer (SIGKILLed, its files are closed as it
 * exits, its FT socket perhaps before them), so a conflicting image lock (Busy) is tried again
 * every `everyMs` for up to `forMs`; anything else, or a lock held past that, is thrown.
 */
export async function openWonVmDisk(spec: string, identity: string, o: { isidQualifier?: number } = {}, wait = { forMs: 2000, everyMs: 20 }): Promise<VmDisk> {
  const end = performance.now() + wait.forMs
  for (;;) {
    try {
      return await openVmDisk(spec, identity, o)
    } catch (e) {
      if (!(e instanceof StorageError && e.code === 'Busy') || isNetworkDisk(spec) || performance.now() >= end) throw e
      await new Promise((r) => setTimeout(r, wait.everyMs))
    }
  }
}

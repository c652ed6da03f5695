import { unlink } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { commit, convert, linkParent, openVmdk } from '../../disk-formats/chain/index.js'
import { StorageError } from '../../disk-formats/errors.js'
import { swappable, type LiveDisk } from '../../disk-formats/filters/index.js'
import { createVmdk, VmdkImage } from '../../disk-formats/vmdk/index.js'
import { copyTarget, type DiskSwitch, type PreparedSwitch, type SwitchedDisk } from './disk-switch.js'

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

/**
 * A local VMDK (chain) opened read-write in this process, as a device whose chain can be
 * switched (what `tandem vm run --disk FILE` gives its in-process LU), and its DiskSwitch.
 */
export async function openSwitchableDisk(path: string): Promise<{ device: LiveDisk; switch: DiskSwitch }> {
  const device = swappable(await openVmdk(path))
  return { device, switch: localDiskSwitch(device) }
}

/**
 * Switches `live`, whose device is a writable VMDK chain, onto deltas made beside its top file:
 * prepare makes `STEM-NAME.vmdk` on the top (its CID pinned and synced first) and opens it;
 * commit drains the requests in flight, swaps the delta in and freezes the old top (synced,
 * read-only, a reader's image locks): the frozen file is the checkpoint's layer. No record names
 * the new top: whoever reopens the disk after the process ends names the delta's file.
 * copy-and-commit converts the frozen chain to a standalone VMDK, then commits the delta back
 * into the old top and puts that top back under the device: requests wait meanwhile (for as
 * long as copying what was written since the switch takes).
 */
export function localDiskSwitch(live: LiveDisk): DiskSwitch {
  return {
    async prepare(name: string): Promise<PreparedSwitch> {
      if (!NAME.test(name)) throw new StorageError('InvalidArgument', `invalid checkpoint layer name '${name}'`)
      const top = live.current
      if (!(top instanceof VmdkImage) || top.readOnly) throw new StorageError('InvalidArgument', 'only a disk open as a writable VMDK can be switched onto a delta')
      const path = join(dirname(top.path), `${basename(top.path, '.vmdk')}-${name}.vmdk`)
      const cid = await top.pinCid()
      await createVmdk(path, { size: top.size, parent: { path: top.path, cid }, exclusive: true })
      let delta: VmdkImage
      try {
        delta = await VmdkImage.open(path)
        await top.flush()
      } catch (e) {
        await unlink(path).catch(() => undefined)
        throw e
      }
      return {
        async commit(): Promise<SwitchedDisk> {
          if (live.current !== top) throw new StorageError('Busy', `the disk was switched since '${name}' was prepared`)
          linkParent(delta, top)
          await live.pause()
          live.resume(delta)
          await top.freeze()
          return {
            layer: top.path,
            afterwards: async (mode, opts) => {
              const copyTo = copyTarget(mode, opts)
              if (copyTo === undefined) return { disk: top.path }
              const frozen = await openVmdk(top.path, { readOnly: true })
              try {
                await convert(frozen, copyTo, { to: 'vmdk' })
              } finally {
                await frozen.close()
              }
              await commitBack(live, delta, top.path)
              return { disk: copyTo }
            },
          }
        },
        async abort(): Promise<void> {
          await delta.close().catch(() => undefined)
          await unlink(path).catch(() => undefined)
        },
      }
    },
  }
}

/** Commits `delta` (the device of `live`) into its parent `parentPath`, which becomes the device again; the delta's file is removed. */
async function commitBack(live: LiveDisk, delta: VmdkImage, parentPath: string): Promise<void> {
  await live.pause()
  let next: VmdkImage | undefined
  try {
    await delta.close() // and the chain below it
    await commit(delta.path)
    next = await openVmdk(parentPath)
  } catch (e) {
    live.resume(await openVmdk(delta.path).catch(() => undefined)) // the delta, whole or committed, reads the same (else requests fail: closed)
    throw e
  }
  live.resume(next)
  await unlink(delta.path).catch(() => undefined)
}

import { convert } from '../../disk-formats/chain/index.js'
import { requestJson } from '../api/http.js'
import { NbdClient } from '../transport/nbd/index.js'
import { copyTarget, type DiskSwitch, type PreparedSwitch, type SwitchedDisk } from './disk-switch.js'

/**
 * The disk `disk` of the Tandem server at `server` (its REST URL), switched with a prepared
 * snapshot: prepare is `POST …/snapshots {"name","prepare":true}`, commit `POST
 * …/snapshots/NAME/commit`, abort `DELETE …/snapshots/NAME`. The frozen layer is the snapshot
 * `DISK@NAME`. copy-and-commit reads it over NBD into a standalone VMDK, then deletes the
 * snapshot: the server consolidates its layer into the disk's chain (content unchanged).
 */
export function serverDiskSwitch(server: string, disk: string): DiskSwitch {
  const snapshots = `/api/v1/disks/${encodeURIComponent(disk)}/snapshots`
  return {
    async prepare(name: string): Promise<PreparedSwitch> {
      await requestJson(server, 'POST', snapshots, { name, prepare: true })
      const at = `${snapshots}/${encodeURIComponent(name)}`
      return {
        async commit(): Promise<SwitchedDisk> {
          await requestJson(server, 'POST', `${at}/commit`)
          return {
            layer: `${disk}@${name}`,
            async afterwards(mode, opts) {
              const copyTo = copyTarget(mode, opts)
              if (copyTo === undefined) return { disk: `${disk}@${name}` }
              const { nbd } = await requestJson<{ nbd: string }>(server, 'GET', `/api/v1/disks/${encodeURIComponent(disk)}`)
              const src = await NbdClient.connect(`${nbd}@${name}`, { readOnly: true })
              try {
                await convert(src, copyTo, { to: 'vmdk' })
              } finally {
                await src.close()
              }
              await requestJson(server, 'DELETE', at)
              return { disk: copyTo }
            },
          }
        },
        async abort(): Promise<void> {
          await requestJson(server, 'DELETE', at)
        },
      }
    },
  }
}

import { Datastore } from '../../src/server/datastore/index.js'
import { shmTmp } from './peers.js'

/** A datastore on tmpfs with disk `d` (`size` bytes) and its read-write export open, all closed at the end of `t`. */
export async function openDisk(t: { teardown(fn: () => unknown): void }, size: number, prefix: string) {
  const dir = shmTmp(t, prefix)
  const ds = await Datastore.open(dir)
  t.teardown(() => ds.close())
  await ds.createDisk('d', size)
  const h = await ds.openExport('d')
  t.teardown(() => h.release())
  return { dir, ds, h }
}

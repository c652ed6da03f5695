/**
 * The process commit-crash.test.ts kills: a datastore with disk `d` and its export open in this
 * process, a QD1 writer printing `ack N` once write N is acknowledged (write N puts pattern seed N
 * in 4 KiB slot N % 16), a prepared snapshot `cp` and its commit, which stops for good at the
 * record's rename (argv[3] 'before': the record not yet replaced) or at the folder sync after it
 * ('after'), printing `window` there. Stdout is a pipe: each line is written before the next step.
 */
import { open } from 'node:fs/promises'
import { createRequire, syncBuiltinESMExports } from 'node:module'
import { pattern } from './peers.js'

const [dir, mode] = process.argv.slice(2)
const fsp = createRequire(import.meta.url)('node:fs/promises') as { rename: (a: string, b: string) => Promise<void> }
const rename = fsp.rename
let armed = false
let renamed = false
const stopHere = () => {
  process.stdout.write('window\n')
  return new Promise<void>(() => undefined) // killed here
}
fsp.rename = async (from: string, to: string) => {
  if (!armed || !to.endsWith('/disk.json')) return rename(from, to)
  if (mode === 'before') return stopHere()
  await rename(from, to)
  renamed = true
}
syncBuiltinESMExports()
const probe = await open(process.execPath, 'r')
const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> }
await probe.close()
const sync = proto.sync
proto.sync = function (this: unknown) {
  return renamed ? stopHere() : sync.call(this)
}
const { Datastore } = await import('../../src/server/datastore/index.js')

const K = 1024
const ds = await Datastore.open(dir)
await ds.createDisk('d', 1 << 20)
const h = await ds.openExport('d')
let n = 0
const writer = (async () => {
  for (n = 1; ; n++) {
    process.stdout.write(`issue ${n}\n`)
    await h.device.write((n % 16) * 4 * K, pattern(4 * K, n))
    process.stdout.write(`ack ${n}\n`)
    await new Promise((r) => setImmediate(r))
  }
})()
const after = async (k: number) => {
  const n0 = n
  while (n < n0 + k) await new Promise((r) => setTimeout(r, 1))
}
await after(20)
await ds.prepareSnapshot('d', 'cp')
process.stdout.write('prepared\n')
await after(20)
armed = true
await ds.commitSnapshot('d', 'cp')
process.stdout.write('committed\n') // not reached
await writer

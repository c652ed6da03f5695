/**
 * initiator-load: the load of scripts/bench/iscsi-load.c, driven by Tandem's iSCSI initiator.
 *
 *   node dist/scripts/bench/initiator-load.js URL MODE BLOCK_BYTES QUEUE_DEPTH SECONDS [SPAN_BYTES]
 *
 * MODE is read | write (sequential, wrapping at SPAN) or randread | randwrite (aligned random
 * offsets within SPAN). Keeps QUEUE_DEPTH reads or writes in flight on one session for SECONDS
 * (through the BlockDevice interface, as a caller would: reads by `readInto`, each worker into
 * its own buffer, or by `read` with LOAD_ALLOC=1) and prints one JSON line:
 * {"ops":N,"bytes":N,"seconds":S,"iops":N,"mibps":N,"cpu":S} — `cpu`: this process's user+system
 * seconds over the timed part only (Node's start-up and the login excluded).
 */
import { IscsiInitiator } from '../../src/client/transport/iscsi/index.js'

const [url, mode, bs, qd, secs, span] = process.argv.slice(2)
const block = Number(bs)
const depth = Number(qd)
const seconds = Number(secs)
if (!url || !mode || !(block > 0) || block % 512 || !(depth > 0) || !(seconds > 0)) {
  console.error('usage: initiator-load URL read|write|randread|randwrite BLOCK_BYTES QUEUE_DEPTH SECONDS [SPAN_BYTES]')
  process.exit(2)
}
const ini = await IscsiInitiator.connect(url, { queueDepth: depth })
const write = mode.includes('write')
const random = mode.startsWith('rand')
const slots = Math.floor(Math.min(span ? Number(span) : ini.size, ini.size) / block)
const payload = Buffer.alloc(block, 0x5a)
// xorshift32: deterministic offsets, uniform over the span as iscsi-load's
let x = 0x9e3779b9
let next = 0
const offset = () => {
  if (!random) {
    if (next >= slots) next = 0
    return next++ * block
  }
  x ^= x << 13
  x >>>= 0
  x ^= x >>> 17
  x ^= x << 5
  x >>>= 0
  return (x % slots) * block
}
let ops = 0
const c0 = process.cpuUsage()
const t0 = performance.now()
const deadline = t0 + seconds * 1000
// reads land in one buffer per worker (ReadsInto, as `tandem disk convert` reads); LOAD_ALLOC=1: a new buffer per read (`read`)
const fresh = process.env.LOAD_ALLOC === '1'
const worker = async () => {
  const into = Buffer.allocUnsafe(block)
  while (performance.now() < deadline) {
    if (write) await ini.write(offset(), payload)
    else if (fresh) await ini.read(offset(), block)
    else await ini.readInto(offset(), block, into, 0)
    ops++
  }
}
await Promise.all(Array.from({ length: depth }, worker))
const elapsed = (performance.now() - t0) / 1000
const c = process.cpuUsage(c0)
await ini.close()
const bytes = ops * block
console.log(JSON.stringify({ ops, bytes, seconds: elapsed, iops: ops / elapsed, mibps: bytes / 1048576 / elapsed, cpu: (c.user + c.system) / 1e6 }))

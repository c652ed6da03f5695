import type { UdpAddress } from '../net/address.js'
import { UdpUplink } from '../net/udp-uplink.js'
import { AckLog, readAckLog } from './ack-log.js'
import { runCheck } from './check.js'
import { KvClient, KvNoReply, type KvClientOptions } from './client.js'
import { runLoad, type LoadOptions } from './load.js'

/** Exit statuses of `tandem kv`. */
export const KV_EXIT = { FAILED: 1, NO_REPLY: 3 } as const

export interface KvRunOptions {
  switch: UdpAddress
  client: Omit<KvClientOptions, 'port'>
  log: string
  window: number
  json: boolean
}

async function withClient(o: KvRunOptions, fn: (c: KvClient) => Promise<number>): Promise<number> {
  const uplink = await UdpUplink.join(o.switch)
  try {
    return await fn(new KvClient({ port: uplink, ...o.client }))
  } catch (e) {
    if (!(e instanceof KvNoReply)) throw e
    process.stderr.write(`tandem kv: ${e.message}\n`)
    return KV_EXIT.NO_REPLY
  } finally {
    uplink.close()
  }
}

/** `tandem kv load`: SIGINT or SIGTERM stops starting requests; outstanding ones finish, then the summary. */
export function kvLoad(o: KvRunOptions & Pick<LoadOptions, 'keys' | 'rate' | 'count' | 'durationMs' | 'seed'>): Promise<number> {
  return withClient(o, async (client) => {
    const log = AckLog.open(o.log)
    const stop = new AbortController()
    const onSignal = () => stop.abort()
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    try {
      const s = await runLoad({ client, log, signal: stop.signal, keys: o.keys, rate: o.rate, count: o.count, durationMs: o.durationMs, seed: o.seed, window: o.window })
      if (o.json) process.stdout.write(JSON.stringify(s) + '\n')
      else {
        process.stdout.write(
          `tandem kv load: ${s.requests} requests, ${s.acked} acknowledged, ${s.errors} errors in ${s.seconds.toFixed(3)} s (${(s.acked / Math.max(s.seconds, 1e-3)).toFixed(1)}/s); ` +
            `${s.sent} sent, ${s.retries} retries, ${s.stale} stale replies; round trip p50 ${s.rttMs.p50} ms, p99 ${s.rttMs.p99} ms; seq ${s.firstSeq}..${s.lastSeq} in ${o.log}\n`,
        )
      }
      if (s.firstError) process.stderr.write(`tandem kv: the VM refused a SET: ${s.firstError}\n`)
      return s.errors ? KV_EXIT.FAILED : 0
    } finally {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
      log.close()
    }
  })
}

/** `tandem kv check`. */
export function kvCheck(o: KvRunOptions): Promise<number> {
  const { last } = readAckLog(o.log)
  return withClient(o, async (client) => {
    const s = await runCheck(client, last, o.window)
    if (o.json) process.stdout.write(JSON.stringify(s) + '\n')
    if (!s.problems.length) {
      if (!o.json) process.stdout.write(`${s.keys} keys checked, all acknowledged values present (${s.exact} as acknowledged, ${s.newer} with a later value sent)\n`)
      return 0
    }
    process.stderr.write(`tandem kv check: ${s.problems.length} of ${s.keys} keys do not hold their last acknowledged value; the first:\n`)
    for (const p of s.problems.slice(0, 10)) process.stderr.write(`  ${p.key}: ${p.kind}, acknowledged ${p.acked}, found ${p.found === null ? 'NOTFOUND' : p.found}\n`)
    return KV_EXIT.FAILED
  })
}

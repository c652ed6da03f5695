import { StorageError } from '../../disk-formats/errors.js'
import { realTimers, type Timers } from '../vm/timers.js'
import { seededRandom } from '../net/random.js'
import { kvValue, type AckLog } from './ack-log.js'
import type { KvClient } from './client.js'

export interface LoadOptions {
  client: KvClient
  log: AckLog
  /** keys k0 … k<keys-1> */
  keys: number
  /** requests started per second */
  rate: number
  /** stop starting requests after this many */
  count?: number
  /** stop starting requests after this many ms */
  durationMs?: number
  /** requests outstanding at once (each for a different key) */
  window?: number
  /** seed of the key choice */
  seed?: number
  /** aborting stops starting requests; outstanding ones finish */
  signal?: AbortSignal
  timers?: Timers
}

export interface LoadSummary {
  /** SET requests started */
  requests: number
  /** answered OK, each a line in the log */
  acked: number
  /** answered otherwise (e.g. ERR full) */
  errors: number
  /** datagrams sent, retries among them */
  sent: number
  retries: number
  /** replies to requests already answered */
  stale: number
  seconds: number
  rttMs: { p50: number; p99: number; max: number }
  firstSeq: number
  lastSeq: number
  /** the first non-OK reply */
  firstError?: string
}

export const LOAD_DEFAULTS = { window: 8, keys: 100, rate: 100 } as const

/** The q-quantile of sorted numbers (nearest rank). */
export function quantile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] : 0
}

/**
 * SETs at `rate` per second (request n starts at start + n/rate, or when a window slot frees)
 * of keys drawn (seeded) from those with no request outstanding; value kvValue(key, seq), seq
 * from log.nextSeq up. Each OK is appended to the log before the key is used again. A request
 * unanswered for the client's timeout stops the load: outstanding requests finish, then KvNoReply.
 */
export async function runLoad(o: LoadOptions): Promise<LoadSummary> {
  const timers = o.timers ?? realTimers
  const window = o.window ?? LOAD_DEFAULTS.window
  if (!(o.keys >= 1 && o.keys <= 1_000_000 && Number.isInteger(o.keys))) throw new StorageError('InvalidArgument', `invalid key count ${o.keys} (1 to 1000000)`)
  if (!(o.rate > 0 && o.rate <= 1_000_000)) throw new StorageError('InvalidArgument', `invalid rate ${o.rate} (requests per second, above 0)`)
  if (!(window >= 1 && window <= 1024 && Number.isInteger(window))) throw new StorageError('InvalidArgument', `invalid window ${window} (1 to 1024)`)
  const random = seededRandom(o.seed ?? 1)
  const busy = new Set<number>()
  const rtts: number[] = []
  const s = { requests: 0, acked: 0, errors: 0, firstError: undefined as string | undefined }
  let failure: unknown
  let seq = o.log.nextSeq
  const firstSeq = seq
  let freed: (() => void) | null = null
  const outstanding = new Set<Promise<void>>()
  const t0 = timers.now()
  const stopped = () => o.signal?.aborted || failure !== undefined || (o.count !== undefined && s.requests >= o.count) || (o.durationMs !== undefined && timers.now() - t0 >= o.durationMs)
  while (!stopped()) {
    const due = t0 + (s.requests * 1000) / o.rate
    const wait = due - timers.now()
    if (wait > 0) {
      await timers.sleep(o.durationMs !== undefined ? Math.min(wait, t0 + o.durationMs - timers.now()) : wait, o.signal)
      continue
    }
    if (busy.size >= Math.min(window, o.keys)) {
      await new Promise<void>((r) => (freed = r))
      continue
    }
    // a key with no request outstanding: draw, then step past busy ones
    let k = Math.floor(random() * o.keys)
    while (busy.has(k)) k = (k + 1) % o.keys
    busy.add(k)
    const key = `k${k}`
    const mySeq = seq++
    const value = kvValue(key, mySeq)
    s.requests++
    const p: Promise<void> = o.client.request(`SET ${key} ${value}`).then(
      (r) => {
        if (r.text === 'OK') {
          o.log.append({ key, value, seq: mySeq, t: Date.now() })
          s.acked++
          rtts.push(r.rttMs)
        } else {
          s.errors++
          s.firstError ??= `SET ${key}: ${r.text}`
        }
      },
      (e: unknown) => {
        failure ??= e
      },
    ).finally(() => {
      busy.delete(k)
      outstanding.delete(p)
      const f = freed
      freed = null
      f?.()
    })
    outstanding.add(p)
  }
  await Promise.all([...outstanding])
  if (failure !== undefined) throw failure
  rtts.sort((a, b) => a - b)
  const r3 = (x: number) => Number(x.toFixed(3))
  return {
    requests: s.requests,
    acked: s.acked,
    errors: s.errors,
    sent: o.client.sent,
    retries: o.client.retries,
    stale: o.client.stale,
    seconds: r3((timers.now() - t0) / 1000),
    rttMs: { p50: r3(quantile(rtts, 0.5)), p99: r3(quantile(rtts, 0.99)), max: r3(rtts.at(-1) ?? 0) },
    firstSeq,
    lastSeq: seq - 1,
    ...(s.firstError ? { firstError: s.firstError } : {}),
  }
}

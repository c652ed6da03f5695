import type { VmInfo } from '../../src/client/host/index.js'
import { leaseServer, startHost } from './host-process.js'
import { bearer } from './server.js'

/**
 * startHost's options for hosts that run pairs under a kill: a loss timeout a busy machine's
 * scheduling does not reach (as startPair's), so a pair splits only when a side is killed (its
 * socket closes: seen at once).
 */
export const PAIR_HOST = { env: { TANDEM_FT_LOSS_MS: '1500' } }

/** A lease server and two host agents on it, host-a and host-b (`o`: startHost's options, PAIR_HOST by default). */
export async function twoHosts(t: { teardown(fn: () => unknown): void }, o: { env?: NodeJS.ProcessEnv } = PAIR_HOST) {
  const s = await leaseServer(t)
  const [a, b] = await Promise.all([startHost(t, 'host-a', s.url, [], o), startHost(t, 'host-b', s.url, [], o)])
  return { s, a, b }
}

export type ErrorBody = { error?: { code: string; message: string } }
export type ApiAnswer<T> = { status: number; body: T & ErrorBody; text: string }

/** A JSON request to a server's or host's REST API with the server's REST token (`token()`: read at each request). */
export function restApi(token: () => string) {
  return async function api<T = Record<string, unknown>>(base: string, method: string, path: string, body?: unknown): Promise<ApiAnswer<T>> {
    const r = await fetch(`${base}${path}`, { method, headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...bearer(token()) }, body: body === undefined ? undefined : JSON.stringify(body) })
    const text = await r.text()
    return { status: r.status, body: JSON.parse(text) as T & ErrorBody, text }
  }
}

/** A VM as its host shows it (GET /api/v1/vms/:name, its figures read now). */
export async function hostVm(host: string, name: string): Promise<VmInfo & { console: string } & ErrorBody> {
  return (await fetch(`${host}/api/v1/vms/${encodeURIComponent(name)}`)).json() as Promise<VmInfo & { console: string } & ErrorBody>
}

/** Polls `probe` every 50 ms until it returns something truthy (that) or `ms` pass (null); a probe that throws counts as not yet. */
export async function until<T>(ms: number, probe: () => Promise<T | null | undefined | false>): Promise<T | null> {
  const end = performance.now() + ms
  for (;;) {
    const v = await probe().catch(() => null)
    if (v) return v
    if (performance.now() > end) return null
    await new Promise((r) => setTimeout(r, 50))
  }
}

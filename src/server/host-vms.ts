/**
 * The VMs of the lockspace's hosts, as each host's REST API (`tandem host`) lists them, for the
 * console and `GET /api/v1/vms`: the VM, its state, and for a side of a fault-tolerant pair its
 * role and lag. The server asks the hosts (the browser could not: other origins).
 */

/** A VM as `GET /api/v1/vms` shows it: the fields a host reports, and the host. */
export interface HostVm {
  host: string
  name: string
  state: string
  pid: number | null
  generation: number | null
  startedAt: string | null
  /** a side of a fault-tolerant pair; null for a VM alone */
  ft: { side: string; mode: string | null; role: string | null; lagMs: number | null; peer: string | null; logBytesPerSecond: number | null } | null
}

export interface HostVms {
  vms: HostVm[]
  /** hosts that did not answer in time, or answered something else */
  unreachable: { host: string; api: string; error: string }[]
}

/** VMs kept per host: a host that lists more is cut (a listing, not an inventory system). */
const MAX_PER_HOST = 256

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null)
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)

/** One VM of a host's listing, or null when it is not one. */
function vmOf(host: string, v: unknown): HostVm | null {
  if (typeof v !== 'object' || v === null) return null
  const x = v as Record<string, unknown>
  if (typeof x.name !== 'string' || typeof x.state !== 'string') return null
  const f = typeof x.ft === 'object' && x.ft !== null ? (x.ft as Record<string, unknown>) : null
  return {
    host,
    name: x.name,
    state: x.state,
    pid: num(x.pid),
    generation: num(x.generation),
    startedAt: str(x.startedAt),
    ft: f && typeof f.side === 'string' ? { side: f.side, mode: str(f.mode), role: str(f.role), lagMs: num(f.lagMs), peer: str(f.peer), logBytesPerSecond: num(f.logBytesPerSecond) } : null,
  }
}

/**
 * Asks every host with an API for its VMs, all at once, each within `timeoutMs`; a host that does
 * not answer, or answers with anything but `{"vms":[…]}`, is listed under `unreachable` with why.
 */
export async function vmsOfHosts(hosts: { name: string; api: string | null }[], timeoutMs = 1500): Promise<HostVms> {
  const out: HostVms = { vms: [], unreachable: [] }
  await Promise.all(
    hosts.map(async (h) => {
      if (!h.api) return
      try {
        const res = await fetch(`${h.api}/api/v1/vms`, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } })
        if (!res.ok) throw new Error(`HTTP ${res.status}`)
        const body = (await res.json()) as { vms?: unknown }
        if (!Array.isArray(body?.vms)) throw new Error('the answer has no "vms" list')
        for (const v of body.vms.slice(0, MAX_PER_HOST)) {
          const vm = vmOf(h.name, v)
          if (vm) out.vms.push(vm)
        }
      } catch (e) {
        const err = e as Error
        const error = err.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : err.name === 'SyntaxError' ? 'the answer is not JSON' : err.message === 'fetch failed' ? `cannot connect (${(err.cause as Error | undefined)?.message ?? 'refused'})` : err.message
        out.unreachable.push({ host: h.name, api: h.api, error })
      }
    }),
  )
  out.vms.sort((a, b) => a.name.localeCompare(b.name) || a.host.localeCompare(b.host))
  out.unreachable.sort((a, b) => a.host.localeCompare(b.host))
  return out
}

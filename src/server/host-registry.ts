import { StorageError } from '../disk-formats/errors.js'
import { NAME_BYTES } from '../disk-formats/lock-region/index.js'

/** A host's REST API, as it registered it (`PUT /api/v1/hosts/:name`). */
export interface HostRegistration {
  api: string
  /** wall-clock ISO time of the latest registration (hosts register again every few seconds) */
  registeredAt: string
}

/**
 * Bound on remembered hosts: a lockspace has at most a few hundred slots, and an unknown client
 * registering names in a loop must not grow the server's memory. Over it, the registration
 * refreshed longest ago is forgotten (a live host registers again within seconds).
 */
const MAX_HOSTS = 1024
/** An http(s) URL of a sane length: it is shown to people and used by `tandem vm`. */
const API_URL = /^https?:\/\/[^\s/?#]+(?:\/[^\s?#]*)?$/
const MAX_URL = 256

/**
 * Where each host's REST API is, as the hosts said. Kept in memory: a restarted server learns it
 * again from the hosts' next registration. The lockspace, not this, says which hosts are alive.
 */
export class HostRegistry {
  private readonly hosts = new Map<string, HostRegistration>()

  constructor(private readonly now: () => Date = () => new Date()) {}

  register(name: string, body: Record<string, unknown>): HostRegistration {
    if (name.length === 0 || Buffer.byteLength(name) > NAME_BYTES) throw new StorageError('InvalidArgument', `host name must be 1 to ${NAME_BYTES} bytes`)
    const api = body.api
    if (typeof api !== 'string' || api.length > MAX_URL || !API_URL.test(api)) {
      throw new StorageError('InvalidArgument', `"api" must be the host's REST API as an http(s) URL of at most ${MAX_URL} characters, e.g. "http://127.0.0.1:7800"`)
    }
    const r = { api: api.replace(/\/$/, ''), registeredAt: this.now().toISOString() }
    this.hosts.delete(name) // re-inserted last: the map's order is oldest refresh first
    this.hosts.set(name, r)
    if (this.hosts.size > MAX_HOSTS) this.hosts.delete(this.hosts.keys().next().value!)
    return r
  }

  get(name: string): HostRegistration | undefined {
    return this.hosts.get(name)
  }
}

import {
  decodeHeader,
  decodeRecord,
  decodeSlot,
  MODE_EXCLUSIVE,
  MODE_FREE,
  MODE_SHARED,
  recordOffset,
  regionSize,
  SECTOR,
  SLOT_FREE,
  SLOT_LIVE,
  slotOffset,
  type Header,
  type LockRecord,
  type Slot,
} from './layout.js'
import type { LockStorage } from './storage.js'

/** Monotonic milliseconds and timers, injected so tests can run on a fake clock. */
export interface Clock {
  now(): number
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(h: unknown): void
  /**
   * Marks a timer nobody awaits (a heartbeat, a fence check) as background work: a host that wants
   * its process to end when nothing else is left to do says so here (unref). A timer someone
   * awaits (a wait to join, a lock's poll) is never marked: it keeps its caller's process alive.
   */
  background?(h: unknown): void
}

export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
}

/**
 * The real clock for a host inside a longer-lived process (a server, a host agent): its heartbeat
 * does not keep the process alive, its waits do.
 */
export const backgroundClock: Clock = { ...realClock, background: (h) => (h as NodeJS.Timeout).unref() }

export interface HostView {
  slot: number
  /** the host's name; '' for a damaged slot */
  name: string
  state: 'free' | 'live' | 'left' | 'damaged'
  generation: number
  /**
   * true: its heartbeat advanced within the lease, as seen here; false: it is not live, or it has
   * not advanced for a whole lease; null (unknown): watched for less than a lease without seeing an advance.
   */
  alive: boolean | null
  /** ms since its heartbeat was last seen advancing — or, while it has never been seen advancing, since it was first read */
  heartbeatAgeMs: number | null
  requesting: string | null
  /** why the slot could not be read */
  error?: string
}

export interface LockView {
  /** the lock's name; '' for a damaged record */
  name: string
  state: 'free' | 'exclusive' | 'shared' | 'damaged'
  managed: boolean
  generation: number
  owner: string | null
  ownerHeartbeatAgeMs: number | null
  sharedHolders: string[]
  /** hosts asking for the lock (any mode), oldest request first */
  waiting: string[]
  /** the damaged record's index (its name is unknown) */
  record?: number
  /** why the record could not be read */
  error?: string
}

export interface Observation {
  generation: number
  counter: number
  state: number
  /** when (generation, counter, state) was last seen changing — or first read */
  since: number
  /** seen changing at least once (so `since` is a real heartbeat, not our first look) */
  advanced: boolean
  request: number
  /** when the current request was first seen */
  requestSince: number
}

export /** A slot or record that could not be decoded: it affects only itself (DESIGN §9). */
type Damaged = { damaged?: string }

/** Record `i` from its sector, or a free record marked `damaged` (why) when it does not decode. */
export function recordOrDamaged(sector: Buffer, i: number, file: string): LockRecord & Damaged {
  try {
    return decodeRecord(sector, i, file)
  } catch (e) {
    return { index: i, name: '', mode: MODE_FREE, managed: false, generation: 0, owner: 0, ownerGeneration: 0, shared: new Set(), damaged: (e as Error).message }
  }
}

/** What an observer needs of the storage: it only reads. */
export type LockspaceReader = Pick<LockStorage, 'name' | 'size' | 'read'>

/**
 * A read-only watcher of a lockspace (DESIGN §6): it never writes, so anyone may run it (`tandem
 * lock ls`, the server's REST routes) without joining. Liveness is judged by watching each slot's
 * counter advance on this observer's monotonic clock, so a view made soon after the first one
 * reports hosts as unknown (`alive: null`) until it has watched them for a lease.
 */
export class LockspaceObserver {
  header!: Header
  protected readonly observed = new Map<number, Observation>()

  constructor(
    readonly storage: LockspaceReader,
    readonly clock: Clock = realClock,
  ) {}

  /** This observer's own heartbeat slot: none (-1); a LockManager's once joined. */
  get slot(): number {
    return -1
  }

  /** The record (index + 1) this observer's own slot asks for: none (0). */
  protected ownRequest(): number {
    return 0
  }

  /** Reads and checks the header (and that the storage is the size it describes). */
  protected async readHeader(): Promise<Header> {
    this.header = decodeHeader(await this.storage.read(0, SECTOR), this.storage.name, this.storage.size)
    return this.header
  }

  /**
   * Reads the whole region. The header (and the region's size) must be sound, or this throws; a
   * damaged slot or record does not: it comes back marked `damaged`, so it affects only itself.
   */
  protected async readAll(): Promise<{ slots: (Slot & Damaged)[]; records: (LockRecord & Damaged)[]; raw: Buffer }> {
    const raw = await this.storage.read(0, regionSize(this.header))
    decodeHeader(raw.subarray(0, SECTOR), this.storage.name, this.storage.size)
    const now = this.clock.now()
    const slots: (Slot & Damaged)[] = []
    for (let i = 0; i < this.header.maxHosts; i++) slots.push(this.observeSlot(i, raw.subarray(slotOffset(i), slotOffset(i) + SECTOR), now))
    const records: (LockRecord & Damaged)[] = []
    for (let i = 0; i < this.header.maxLocks; i++) {
      const off = recordOffset(this.header, i)
      records.push(recordOrDamaged(raw.subarray(off, off + SECTOR), i, this.storage.name))
    }
    return { slots, records, raw }
  }

  /**
   * Reads the heartbeat slots from the lowest to the highest of `indexes` (one read) and takes
   * their observations, as a whole-region read does.
   */
  protected async observeSlots(indexes: number[]): Promise<void> {
    if (indexes.length === 0) return
    const lo = Math.min(...indexes)
    const hi = Math.max(...indexes)
    const raw = await this.storage.read(slotOffset(lo), (hi - lo + 1) * SECTOR)
    const now = this.clock.now()
    for (let i = lo; i <= hi; i++) this.observeSlot(i, raw.subarray((i - lo) * SECTOR, (i - lo + 1) * SECTOR), now)
  }

  /** Slot `i` decoded from its sector (a damaged one comes back free, marked), its observation taken at `now`. */
  private observeSlot(i: number, sector: Buffer, now: number): Slot & Damaged {
    let s: Slot & Damaged
    try {
      s = decodeSlot(sector, i, this.storage.name)
    } catch (e) {
      // unchanged observation: a slot that stays damaged ages out like a silent one
      return { index: i, state: SLOT_FREE, generation: 0, counter: 0, request: 0, requestShared: false, name: '', damaged: (e as Error).message }
    }
    const o = this.observed.get(i)
    if (!o) {
      this.observed.set(i, { generation: s.generation, counter: s.counter, state: s.state, since: now, advanced: false, request: s.request, requestSince: now })
    } else {
      if (o.generation !== s.generation || o.counter !== s.counter || o.state !== s.state) {
        Object.assign(o, { generation: s.generation, counter: s.counter, state: s.state, since: now, advanced: true })
      }
      if (o.request !== s.request) Object.assign(o, { request: s.request, requestSince: now })
    }
    return s
  }

  /** What this observer can say of slot `i`: alive, dead, or unknown (watched for less than a lease without an advance). */
  protected liveness(i: number): boolean | null {
    const o = this.observed.get(i)
    if (!o || o.state !== SLOT_LIVE) return false
    if (this.clock.now() - o.since >= this.header.leaseMs) return false
    return o.advanced ? true : null
  }

  /**
   * May the host in slot `i` be alive, as seen from here: it has not been silent for a whole lease
   * on our clock (a host not yet watched that long counts as alive: its locks are not broken).
   */
  protected alive(i: number, generation?: number): boolean {
    const o = this.observed.get(i)
    if (!o || o.state !== SLOT_LIVE) return false
    if (generation !== undefined && o.generation !== generation) return false
    return this.clock.now() - o.since < this.header.leaseMs
  }

  /** Live hosts other than our own slot asking for record `index`, oldest request first (as first seen here). */
  protected requesters(slots: (Slot & Damaged)[], index: number): Slot[] {
    const since = (s: Slot) => this.observed.get(s.index)?.requestSince ?? Infinity
    return slots
      .filter((s) => !s.damaged && s.index !== this.slot && s.state === SLOT_LIVE && s.request === index + 1 && this.liveness(s.index) !== false)
      .sort((x, y) => since(x) - since(y) || x.index - y.index)
  }

  /** Hosts and locks as seen from here (ls, REST). */
  async view(): Promise<{ hosts: HostView[]; locks: LockView[] }> {
    if (!this.header) await this.readHeader()
    const { slots, records } = await this.readAll()
    const now = this.clock.now()
    const age = (i: number) => {
      const o = this.observed.get(i)
      return o ? Math.round(now - o.since) : null
    }
    const name = (i: number) => slots[i]?.name || `slot ${i}`
    const hosts: HostView[] = slots
      .filter((s) => s.state !== SLOT_FREE || s.damaged)
      .map((s) => ({
        slot: s.index,
        name: s.name,
        state: s.damaged ? 'damaged' : s.state === SLOT_LIVE ? 'live' : 'left',
        generation: s.generation,
        alive: s.damaged ? null : this.liveness(s.index),
        heartbeatAgeMs: age(s.index),
        requesting: s.request ? records[s.request - 1]?.name || null : null,
        ...(s.damaged ? { error: s.damaged } : {}),
      }))
    const locks: LockView[] = records
      .filter((r) => r.name !== '' || r.damaged)
      .map((r) => ({
        name: r.name,
        state: r.damaged ? 'damaged' : r.mode === MODE_EXCLUSIVE ? 'exclusive' : r.mode === MODE_SHARED ? 'shared' : 'free',
        managed: r.managed,
        generation: r.generation,
        owner: r.owner ? name(r.owner - 1) : null,
        ownerHeartbeatAgeMs: r.owner ? age(r.owner - 1) : null,
        sharedHolders: [...r.shared].map(name),
        waiting: [...(this.slot >= 0 && r.index + 1 === this.ownRequest() ? [slots[this.slot]] : []), ...this.requesters(slots, r.index)].map((s) => s.name),
        ...(r.damaged ? { record: r.index, error: r.damaged } : {}),
      }))
    return { hosts, locks }
   }
}

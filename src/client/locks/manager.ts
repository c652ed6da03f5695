import { randomBytes } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import {
  decodeHeader,
  decodeRecord,
  decodeSlot,
  encodeHeader,
  encodeRecord,
  encodeSlot,
  MODE_EXCLUSIVE,
  MODE_FREE,
  MODE_SHARED,
  NAME_BYTES,
  recordOffset,
  regionSize,
  SECTOR,
  SLOT_FREE,
  SLOT_LEFT,
  SLOT_LIVE,
  slotOffset,
  type Header,
  type LockRecord,
  type Slot,
} from '../../disk-formats/lock-region/index.js'
import type { LockStorage } from './storage.js'

/** Monotonic milliseconds and timers, injected so tests can run on a fake clock. */
export interface Clock {
  now(): number
  setTimeout(fn: () => void, ms: number): unknown
  clearTimeout(h: unknown): void
}

export const realClock: Clock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
}

export interface LockspaceOptions {
  maxHosts?: number
  maxLocks?: number
  heartbeatMs?: number
  leaseMs?: number
  fenceMarginMs?: number
}

/** Defaults: renew every 250 ms; dead after 2 s without an advance; holders stop 500 ms before. */
export const DEFAULT_TIMINGS = { heartbeatMs: 250, leaseMs: 2000, fenceMarginMs: 500 }

export interface Held {
  name: string
  index: number
  mode: 'exclusive' | 'shared'
  managed: boolean
  /** the fencing token */
  generation: number
}

export interface AcquireOptions {
  shared?: boolean
  managed?: boolean
  /** how long to wait for the lock, ms; 0 (default) tries once */
  waitMs?: number
  /** how often to look again while waiting (default half a heartbeat) */
  pollMs?: number
}

export interface HostView {
  slot: number
  name: string
  state: 'free' | 'live' | 'left'
  generation: number
  alive: boolean
  heartbeatAgeMs: number | null
  requesting: string | null
}

export interface LockView {
  name: string
  state: 'free' | 'exclusive' | 'shared'
  managed: boolean
  generation: number
  owner: string | null
  ownerHeartbeatAgeMs: number | null
  sharedHolders: string[]
  waiting: string[]
}

interface Observation {
  generation: number
  counter: number
  state: number
  since: number
}

/** Initialises an empty lockspace on `storage` (which must be exactly the right size, or empty and growable by the caller). */
export async function initLockspace(storage: LockStorage, o: LockspaceOptions = {}): Promise<Header> {
  const h = {
    maxHosts: o.maxHosts ?? 64,
    maxLocks: o.maxLocks ?? 256,
    heartbeatMs: o.heartbeatMs ?? DEFAULT_TIMINGS.heartbeatMs,
    leaseMs: o.leaseMs ?? DEFAULT_TIMINGS.leaseMs,
    fenceMarginMs: o.fenceMarginMs ?? DEFAULT_TIMINGS.fenceMarginMs,
    uuid: randomBytes(16),
  }
  const bytes = encodeHeader(h)
  const decoded = decodeHeader(bytes, storage.name)
  if (storage.size !== regionSize(decoded)) {
    throw new StorageError('InvalidArgument', `'${storage.name}' is ${storage.size} bytes; a lockspace of ${h.maxHosts} hosts and ${h.maxLocks} locks needs exactly ${regionSize(decoded)}`)
  }
  const head = await storage.read(0, SECTOR)
  if (!head.every((b) => b === 0)) {
    throw new StorageError('Exists', `'${storage.name}' is not empty (already a lockspace, or other data); refusing to overwrite it`)
  }
  // Zero slots and records, then the header last: a half-initialised region has no valid header.
  const zero = Buffer.alloc(64 * SECTOR)
  for (let o2 = SECTOR; o2 < storage.size; o2 += zero.length) await storage.write(o2, zero.subarray(0, Math.min(zero.length, storage.size - o2)))
  await storage.write(0, bytes)
  return decoded
}

/** FNV-1a: the home record of a lock name (linear probing from there). */
function homeIndex(name: string, max: number): number {
  let h = 0x811c9dc5
  for (const b of Buffer.from(name, 'utf8')) h = Math.imul(h ^ b, 0x01000193) >>> 0
  return h % max
}

/**
 * The lock manager of one host over a lockspace (DESIGN §6; sanlock's delta leases and VMFS's
 * heartbeat + on-disk locks, reference/locking.md).
 *
 * Safety argument: a holder stops using its locks at T_issue + lease − margin, where T_issue is
 * when it issued its last heartbeat write that succeeded; that write took effect at or after
 * T_issue, so any other host saw the counter change at B ≥ T_issue and breaks the lock no earlier
 * than B + lease (on its own monotonic clock, never comparing wall clocks) — at least `margin`
 * after the holder stopped. Every change of owner goes through compare-and-write (except a
 * managed handover, written by the live owner alone) and bumps the generation, the fencing token.
 */
export class LockManager {
  header!: Header
  private slotIndex = -1
  private generation = 0
  private counter = 0
  private request = 0
  private requestShared = false
  /** monotonic time at which the last successful heartbeat write was issued */
  private lastRenewIssue = -Infinity
  private readonly observed = new Map<number, Observation>()
  private readonly held = new Map<string, Held>()
  private timer: unknown = null
  private fenceTimer: unknown = null
  private stopped = false
  private beating: Promise<void> | null = null
  /** called once when this host's lease can no longer be trusted; holders must stop at once */
  onFence: (reason: string) => void = () => {}
  /** called after each successful renewal with the new fence deadline (monotonic ms) */
  onRenew: (deadline: number) => void = () => {}

  constructor(
    readonly storage: LockStorage,
    readonly hostName: string,
    readonly clock: Clock = realClock,
  ) {
    if (hostName.length === 0 || Buffer.byteLength(hostName) > NAME_BYTES) {
      throw new StorageError('InvalidArgument', `host name must be 1 to ${NAME_BYTES} bytes`)
    }
  }

  get slot(): number {
    return this.slotIndex
  }

  /** The moment (monotonic ms) by which this host must have stopped using its locks. */
  get fenceDeadline(): number {
    return this.lastRenewIssue + this.header.leaseMs - this.header.fenceMarginMs
  }

  /** True while this host's lease is valid: check before each use of a locked resource. */
  valid(at = this.clock.now()): boolean {
    return !this.stopped && at < this.fenceDeadline
  }

  private async readAll(): Promise<{ slots: Slot[]; records: LockRecord[]; raw: Buffer }> {
    const raw = await this.storage.read(0, regionSize(this.header))
    decodeHeader(raw.subarray(0, SECTOR), this.storage.name, this.storage.size)
    const now = this.clock.now()
    const slots: Slot[] = []
    for (let i = 0; i < this.header.maxHosts; i++) {
      const s = decodeSlot(raw.subarray(slotOffset(i), slotOffset(i) + SECTOR), i, this.storage.name)
      slots.push(s)
      const o = this.observed.get(i)
      if (!o || o.generation !== s.generation || o.counter !== s.counter || o.state !== s.state) {
        this.observed.set(i, { generation: s.generation, counter: s.counter, state: s.state, since: now })
      }
    }
    const records: LockRecord[] = []
    for (let i = 0; i < this.header.maxLocks; i++) {
      const off = recordOffset(this.header, i)
      records.push(decodeRecord(raw.subarray(off, off + SECTOR), i, this.storage.name))
    }
    return { slots, records, raw }
  }

  /** Is the host in slot `i` alive, as seen from here: its heartbeat advanced within the lease. */
  private alive(i: number, generation?: number): boolean {
    if (i === this.slotIndex) return this.valid()
    const o = this.observed.get(i)
    if (!o || o.state !== SLOT_LIVE) return false
    if (generation !== undefined && o.generation !== generation) return false
    return this.clock.now() - o.since < this.header.leaseMs
  }

  /** Joins by host name: the slot is claimed automatically (no manual ids). */
  async join(): Promise<{ slot: number; generation: number }> {
    const head = await this.storage.read(0, SECTOR)
    this.header = decodeHeader(head, this.storage.name, this.storage.size)
    for (;;) {
      const { slots, raw } = await this.readAll()
      const mine = slots.find((s) => s.name === this.hostName && s.state !== SLOT_FREE)
      let target = mine ?? slots.find((s) => s.state !== SLOT_LIVE) ?? null
      if (!mine && !target) {
        // every slot is live: reuse one whose host is dead, after watching it for a lease
        target = slots.find((s) => !this.alive(s.index)) ?? null
        if (!target) {
          await this.sleep(this.header.heartbeatMs)
          const still = await this.readAll()
          if (still.slots.every((s) => s.state === SLOT_LIVE && this.alive(s.index))) {
            throw new StorageError('NoSpace', `lockspace '${this.storage.name}' has no free host slot (${this.header.maxHosts} hosts live)`)
          }
          continue
        }
      }
      if (mine && mine.state === SLOT_LIVE && this.observed.get(mine.index)!.since + this.header.leaseMs > this.clock.now()) {
        // Our name, still live: a previous incarnation that crashed, or a duplicate host. Wait
        // until it has been silent for a whole lease before taking over (it may still hold locks).
        await this.sleep(this.header.heartbeatMs)
        await this.readAll()
        if (this.alive(mine.index)) continue
      }
      const expected = raw.subarray(slotOffset(target!.index), slotOffset(target!.index) + SECTOR)
      const gen = target!.generation + 1
      const issue = this.clock.now()
      const slotBytes = encodeSlot({ state: SLOT_LIVE, generation: gen, counter: 1, request: 0, requestShared: false, name: this.hostName })
      if (await this.storage.compareAndWrite(slotOffset(target!.index), Buffer.from(expected), slotBytes)) {
        this.slotIndex = target!.index
        this.generation = gen
        this.counter = 1
        this.lastRenewIssue = issue
        this.stopped = false
        this.armFence()
        this.onRenew(this.fenceDeadline)
        this.schedule()
        return { slot: this.slotIndex, generation: gen }
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => this.clock.setTimeout(r, ms))
  }

  private armFence(): void {
    if (this.fenceTimer !== null) this.clock.clearTimeout(this.fenceTimer)
    const ms = Math.max(0, this.fenceDeadline - this.clock.now())
    this.fenceTimer = this.clock.setTimeout(() => {
      if (!this.valid()) this.fence('could not renew the heartbeat within the lease')
      else this.armFence()
    }, ms)
  }

  private fence(reason: string): void {
    if (this.stopped) return
    this.stopped = true
    this.held.clear()
    this.onFence(reason)
  }

  private schedule(): void {
    if (this.stopped) return
    this.timer = this.clock.setTimeout(() => {
      this.beating = this.heartbeat().finally(() => {
        this.beating = null
        this.schedule()
      })
    }, this.header.heartbeatMs)
  }

  private slotBytes(): Buffer {
    return encodeSlot({ state: SLOT_LIVE, generation: this.generation, counter: this.counter, request: this.request, requestShared: this.requestShared, name: this.hostName })
  }

  /** One renewal: write our slot, then read the region to watch the others and serve requests. */
  async heartbeat(): Promise<void> {
    if (this.stopped || this.slotIndex < 0) return
    const issue = this.clock.now()
    this.counter++
    try {
      await this.storage.write(slotOffset(this.slotIndex), this.slotBytes(), { durable: false })
      if (this.stopped) return
      this.lastRenewIssue = issue
      this.armFence()
      this.onRenew(this.fenceDeadline)
      const view = await this.readAll()
      const me = view.slots[this.slotIndex]
      if (me.generation !== this.generation || me.name !== this.hostName) {
        this.fence(`our heartbeat slot ${this.slotIndex} was taken over`)
        return
      }
      await this.serveRequests(view.slots, view.records)
    } catch {
      // a failed renewal: the fence timer decides when the lease is gone
    }
  }

  /** Managed locks we own but do not use: hand them to a live requester by rewriting the record. */
  private async serveRequests(slots: Slot[], records: LockRecord[]): Promise<void> {
    for (const s of slots) {
      if (s.index === this.slotIndex || s.request === 0 || !this.alive(s.index)) continue
      const r = records[s.request - 1]
      if (!r || !r.managed || r.owner !== this.slotIndex + 1 || r.mode !== MODE_FREE || this.held.has(r.name)) continue
      if (!this.valid()) return
      await this.storage.write(
        recordOffset(this.header, r.index),
        encodeRecord({ ...r, owner: s.index + 1, ownerGeneration: s.generation, generation: r.generation + 1 }),
      )
    }
  }

  /** Finds the record of `name`, claiming a blank one (by compare-and-write) if none has it yet. */
  private async recordFor(name: string, managed: boolean): Promise<{ rec: LockRecord; bytes: Buffer }> {
    if (name.length === 0 || Buffer.byteLength(name) > NAME_BYTES) throw new StorageError('InvalidArgument', `lock name must be 1 to ${NAME_BYTES} bytes`)
    for (;;) {
      const { records, raw } = await this.readAll()
      const home = homeIndex(name, this.header.maxLocks)
      for (let k = 0; k < this.header.maxLocks; k++) {
        const r = records[(home + k) % this.header.maxLocks]
        const off = recordOffset(this.header, r.index)
        const bytes = Buffer.from(raw.subarray(off, off + SECTOR))
        if (r.name === name) return { rec: r, bytes }
        if (r.name === '') {
          const fresh = { name, mode: MODE_FREE, managed, generation: 0, owner: 0, ownerGeneration: 0, shared: new Set<number>() }
          await this.storage.compareAndWrite(off, bytes, encodeRecord(fresh))
          break // re-read: we, or whoever won, has the name there now
        }
        if (k === this.header.maxLocks - 1) throw new StorageError('NoSpace', `lockspace '${this.storage.name}' has no free lock record`)
      }
    }
  }

  /** One attempt; null when the lock is taken by a live host. */
  private async attempt(name: string, o: AcquireOptions): Promise<Held | null> {
    if (!this.valid()) {
      this.fence('the lease expired before the lock was taken')
      throw new StorageError('IoError', `host '${this.hostName}' has no valid lease`)
    }
    const { rec, bytes } = await this.recordFor(name, o.managed ?? false)
    const me = this.slotIndex + 1
    const off = recordOffset(this.header, rec.index)
    const take = async (next: Omit<LockRecord, 'index'>): Promise<Held | null> => {
      const ok = rec.managed && rec.owner === me && rec.ownerGeneration === this.generation
        ? (await this.storage.write(off, encodeRecord(next)), true) // the managed owner alone writes its record
        : await this.storage.compareAndWrite(off, bytes, encodeRecord(next))
      if (!ok) return null
      const h: Held = { name, index: rec.index, mode: o.shared ? 'shared' : 'exclusive', managed: rec.managed, generation: next.generation }
      this.held.set(name, h)
      return h
    }
    if (this.held.has(name)) throw new StorageError('Busy', `lock '${name}' is already held by this host`)
    const ownerAlive = rec.owner !== 0 && this.alive(rec.owner - 1, rec.ownerGeneration)
    const liveShared = [...rec.shared].filter((i) => this.alive(i))
    if (o.shared) {
      if (rec.mode === MODE_EXCLUSIVE && ownerAlive) return null
      if (rec.managed) throw new StorageError('InvalidArgument', `lock '${name}' is managed: it has no shared mode`)
      const shared = new Set(liveShared)
      shared.add(this.slotIndex)
      return take({ ...rec, mode: MODE_SHARED, owner: 0, ownerGeneration: 0, shared, generation: rec.generation + 1 })
    }
    if (liveShared.some((i) => i !== this.slotIndex)) return null
    const mine = { ...rec, mode: MODE_EXCLUSIVE, owner: me, ownerGeneration: this.generation, shared: new Set<number>() }
    if (rec.managed) {
      if (rec.owner === me && rec.ownerGeneration === this.generation) {
        // already ours (handed over, or kept idle): take it into use, same owner, same token
        if (rec.mode === MODE_EXCLUSIVE) throw new StorageError('Busy', `lock '${name}' is already held by this host`)
        return take({ ...mine, generation: rec.generation })
      }
      if (ownerAlive) {
        await this.setRequest(rec.index + 1)
        return null
      }
      return take({ ...mine, generation: rec.generation + 1 }) // owner dead (or none): break by compare-and-write
    }
    if (rec.mode === MODE_EXCLUSIVE && ownerAlive) return null
    return take({ ...mine, generation: rec.generation + 1 })
  }

  private async setRequest(req: number): Promise<void> {
    if (this.request === req) return
    this.request = req
    this.counter++
    await this.storage.write(slotOffset(this.slotIndex), this.slotBytes())
  }

  /** Acquires a lock: once (waitMs 0) or until waitMs has passed. Returns the fencing token. */
  async acquire(name: string, o: AcquireOptions = {}): Promise<Held> {
    const until = this.clock.now() + (o.waitMs ?? 0)
    try {
      for (;;) {
        const h = await this.attempt(name, o)
        if (h) return h
        if (this.clock.now() >= until) {
          const v = (await this.view()).locks.find((l) => l.name === name)
          throw new StorageError('Busy', `lock '${name}' is held by ${v?.owner ? `host '${v.owner}'` : `${v?.sharedHolders.length ?? 0} shared holder(s)`} (generation ${v?.generation})`)
        }
        await this.sleep(Math.min(o.pollMs ?? this.header.heartbeatMs / 2, Math.max(1, until - this.clock.now())))
      }
    } finally {
      if (this.request !== 0) await this.setRequest(0).catch(() => undefined)
    }
  }

  /** Releases a lock. A managed lock stays owned (idle) by this host until someone asks for it. */
  async release(name: string): Promise<void> {
    const h = this.held.get(name)
    if (!h) throw new StorageError('InvalidArgument', `lock '${name}' is not held by this host`)
    this.held.delete(name)
    for (;;) {
      const { rec, bytes } = await this.recordFor(name, h.managed)
      const off = recordOffset(this.header, rec.index)
      if (h.mode === 'shared') {
        const shared = new Set(rec.shared)
        shared.delete(this.slotIndex)
        if (await this.storage.compareAndWrite(off, bytes, encodeRecord({ ...rec, shared, mode: shared.size ? MODE_SHARED : MODE_FREE }))) return
        continue
      }
      if (rec.owner !== this.slotIndex + 1 || rec.ownerGeneration !== this.generation) return // broken meanwhile: nothing to release
      if (rec.managed) {
        await this.storage.write(off, encodeRecord({ ...rec, mode: MODE_FREE }))
        return
      }
      if (await this.storage.compareAndWrite(off, bytes, encodeRecord({ ...rec, mode: MODE_FREE, owner: 0, ownerGeneration: 0 }))) return
    }
  }

  heldLocks(): Held[] {
    return [...this.held.values()]
  }

  /** Releases everything, marks the slot left, stops the heartbeat. */
  async leave(): Promise<void> {
    for (const h of [...this.held.values()]) await this.release(h.name).catch(() => undefined)
    this.stopped = true
    if (this.timer !== null) this.clock.clearTimeout(this.timer)
    if (this.fenceTimer !== null) this.clock.clearTimeout(this.fenceTimer)
    await this.beating
    if (this.slotIndex >= 0) {
      await this.storage.write(slotOffset(this.slotIndex), encodeSlot({ state: SLOT_LEFT, generation: this.generation, counter: this.counter + 1, request: 0, requestShared: false, name: this.hostName }))
    }
    this.slotIndex = -1
  }

  /** Stops heartbeating without touching the storage (tests: a host that hangs). */
  halt(): void {
    this.stopped = true
    if (this.timer !== null) this.clock.clearTimeout(this.timer)
    if (this.fenceTimer !== null) this.clock.clearTimeout(this.fenceTimer)
  }

  /** Hosts and locks as seen from here (ls, REST). */
  async view(): Promise<{ hosts: HostView[]; locks: LockView[] }> {
    if (!this.header) this.header = decodeHeader(await this.storage.read(0, SECTOR), this.storage.name, this.storage.size)
    const { slots, records } = await this.readAll()
    const now = this.clock.now()
    const age = (i: number) => {
      const o = this.observed.get(i)
      return o ? Math.round(now - o.since) : null
    }
    const name = (i: number) => slots[i]?.name ?? `slot ${i}`
    const hosts = slots
      .filter((s) => s.state !== SLOT_FREE)
      .map((s) => ({
        slot: s.index,
        name: s.name,
        state: (s.state === SLOT_LIVE ? 'live' : 'left') as HostView['state'],
        generation: s.generation,
        alive: this.alive(s.index),
        heartbeatAgeMs: age(s.index),
        requesting: s.request ? records[s.request - 1]?.name ?? null : null,
      }))
    const locks = records
      .filter((r) => r.name !== '')
      .map((r) => ({
        name: r.name,
        state: (r.mode === MODE_EXCLUSIVE ? 'exclusive' : r.mode === MODE_SHARED ? 'shared' : 'free') as LockView['state'],
        managed: r.managed,
        generation: r.generation,
        owner: r.owner ? name(r.owner - 1) : null,
        ownerHeartbeatAgeMs: r.owner ? age(r.owner - 1) : null,
        sharedHolders: [...r.shared].map(name),
        waiting: slots.filter((s) => s.request === r.index + 1 && s.state === SLOT_LIVE).map((s) => s.name),
      }))
    return { hosts, locks }
  }
}

import { randomBytes } from 'node:crypto'
import { StorageError } from '../errors.js'
import {
  decodeHeader,
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
} from './layout.js'
import { LockspaceObserver, realClock, recordOrDamaged, type Clock, type Damaged } from './observer.js'
import type { LockStorage } from './storage.js'

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

export interface JoinOptions {
  /**
   * How long to wait, ms, while a live process already uses this host name (default: forever).
   * A slot under our name not seen advancing is watched for a whole lease first in any case: it may
   * be an earlier incarnation that crashed.
   */
  waitMs?: number
}

/** An attempt refused because a live host has the lock. */
type Refused = { refused: number; managed: boolean }

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

/**
 * Records read at once along a name's probe sequence: an acquire or release reads 4 KiB, not the
 * whole region (over iSCSI that was 164 KiB, and its decoding most of the CPU, per request).
 */
const PROBE_WINDOW = 8

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
export class LockManager extends LockspaceObserver {
  declare readonly storage: LockStorage
  private slotIndex = -1
  private generation = 0
  private counter = 0
  private request = 0
  private requestShared = false
  /** monotonic time at which the last successful heartbeat write was issued */
  private lastRenewIssue = -Infinity
  private readonly held = new Map<string, Held>()
  private timer: unknown = null
  private fenceTimer: unknown = null
  private stopped = false
  /** halt() was called: a join in progress gives up at its next step */
  private halted = false
  private beating: Promise<void> | null = null
  /** called once when this host's lease can no longer be trusted; holders must stop at once */
  onFence: (reason: string) => void = () => {}
  /** called after each successful renewal with the new fence deadline (monotonic ms) */
  onRenew: (deadline: number) => void = () => {}
  /** called at each heartbeat while a live host asks for a managed lock this host is using */
  onRequested: (lock: string, by: string) => void = () => {}
  /**
   * called once when a heartbeat finds that a lock this host holds is no longer its own (another
   * host claimed it, `claim`); the lock is dropped from the held set, and its user must stop at once
   */
  onLost: (lock: string, reason: string) => void = () => {}
  /** locks with a claim in flight: the heartbeat does not judge them from a read that raced it */
  private readonly claiming = new Set<string>()

  constructor(
    storage: LockStorage,
    readonly hostName: string,
    clock: Clock = realClock,
  ) {
    super(storage, clock)
    if (hostName.length === 0 || Buffer.byteLength(hostName) > NAME_BYTES) {
      throw new StorageError('InvalidArgument', `host name must be 1 to ${NAME_BYTES} bytes`)
    }
  }

  override get slot(): number {
    return this.slotIndex
  }

  protected override ownRequest(): number {
    return this.request
  }

  /** The moment (monotonic ms) by which this host must have stopped using its locks. */
  get fenceDeadline(): number {
    return this.lastRenewIssue + this.header.leaseMs - this.header.fenceMarginMs
  }

  /** True while this host's lease is valid: check before each use of a locked resource. */
  valid(at = this.clock.now()): boolean {
    return !this.stopped && at < this.fenceDeadline
  }

  /** True while this host's lease is valid and `name` is still its own (as of its last heartbeat). */
  holds(name: string, at = this.clock.now()): boolean {
    return this.valid(at) && this.held.has(name)
  }

  /** Our own slot is alive while our lease is valid; others as the observer sees them. */
  protected override liveness(i: number): boolean | null {
    return i === this.slotIndex ? this.valid() : super.liveness(i)
  }

  protected override alive(i: number, generation?: number): boolean {
    // our slot under an earlier generation: a crashed incarnation of this host, whose locks are dead
    if (i === this.slotIndex) return (generation === undefined || generation === this.generation) && this.valid()
    return super.alive(i, generation)
  }

  /** Joins by host name: the slot is claimed automatically (no manual ids). */
  async join(o: JoinOptions = {}): Promise<{ slot: number; generation: number }> {
    await this.readHeader()
    const until = this.clock.now() + (o.waitMs ?? Infinity)
    this.halted = false
    for (;;) {
      // halt() while joining (the host is closing): no slot is claimed
      if (this.halted) throw new StorageError('Busy', `joining lockspace '${this.storage.name}' was stopped`)
      const { slots, raw } = await this.readAll()
      const mine = slots.find((s) => s.name === this.hostName && s.state !== SLOT_FREE)
      // a damaged slot is never claimed: it may be a live host's, rewritten at its next heartbeat
      let target = mine ?? slots.find((s) => s.state !== SLOT_LIVE && !s.damaged) ?? null
      if (!mine && !target) {
        // every slot is live: reuse one whose host is dead, after watching it for a lease
        target = slots.find((s) => !s.damaged && !this.alive(s.index)) ?? null
        if (!target) {
          await this.sleep(this.header.heartbeatMs)
          const still = await this.readAll()
          if (still.slots.every((s) => s.state === SLOT_LIVE && this.alive(s.index))) {
            throw new StorageError('NoSpace', `lockspace '${this.storage.name}' has no free host slot (${this.header.maxHosts} hosts live)`)
          }
          continue
        }
      }
      if (mine && mine.state === SLOT_LIVE && this.alive(mine.index)) {
        // Our name, still live: a previous incarnation that crashed, or a duplicate host. Wait
        // until it has been silent for a whole lease before taking over (it may still hold locks);
        // one seen advancing is another live process: give up once `waitMs` has passed.
        if (this.liveness(mine.index) === true && this.clock.now() >= until) {
          const age = Math.round(this.clock.now() - this.observed.get(mine.index)!.since)
          throw new StorageError('Busy', `host name '${this.hostName}' is in use by a live process (heartbeat slot ${mine.index}, last beat ${age} ms ago); give each host its own --host name`)
        }
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
        // halted as the slot was claimed: claimed but not kept alive (leave() marks it left)
        this.stopped = this.halted
        if (this.stopped) return { slot: this.slotIndex, generation: gen }
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
    this.clock.background?.(this.fenceTimer)
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
    this.clock.background?.(this.timer)
  }

  private slotBytes(): Buffer {
    return encodeSlot({ state: SLOT_LIVE, generation: this.generation, counter: this.counter, request: this.request, requestShared: this.requestShared, name: this.hostName })
  }

  /** One renewal: write our slot, then read the region to watch the others and serve requests. */
  async heartbeat(): Promise<void> {
    if (this.stopped || this.slotIndex < 0) return
    const issue = this.clock.now()
    this.counter++
    const before = new Map(this.held)
    try {
      await this.storage.write(slotOffset(this.slotIndex), this.slotBytes(), { durable: false })
      if (this.stopped) return
      this.lastRenewIssue = issue
      this.armFence()
      this.onRenew(this.fenceDeadline)
      const view = await this.readAll()
      const me = view.slots[this.slotIndex]
      // damaged: not taken over (a taker writes a valid slot); our next beat rewrites it
      if (!me.damaged && (me.generation !== this.generation || me.name !== this.hostName)) {
        this.fence(`our heartbeat slot ${this.slotIndex} was taken over`)
        return
      }
      this.checkHeld(before, view.slots, view.records)
      await this.serveRequests(view.slots, view.records)
    } catch {
      // a failed renewal: the fence timer decides when the lease is gone
    }
  }

  /**
   * Drops (and reports by `onLost`) each held lock whose record no longer names this host — a
   * claim took it. Judged only for locks held, unchanged and with no claim in flight, since before
   * the read: a read that raced our own acquire or claim says nothing about them.
   */
  private checkHeld(before: Map<string, Held>, slots: (Slot & Damaged)[], records: (LockRecord & Damaged)[]): void {
    const me = this.slotIndex + 1
    for (const [name, h] of before) {
      if (this.held.get(name) !== h || this.claiming.has(name)) continue
      const r = records[h.index]
      if (r.damaged) continue // rewritten by its owner or a claimer; not evidence either way
      const ours = r.name === name && (h.mode === 'shared'
        ? r.mode === MODE_SHARED && r.shared.has(this.slotIndex)
        : r.mode === MODE_EXCLUSIVE && r.owner === me && r.ownerGeneration === this.generation && r.generation === h.generation)
      if (ours) continue
      this.held.delete(name)
      const by = r.owner ? `host '${slots[r.owner - 1]?.name || `slot ${r.owner - 1}`}'` : 'no host'
      this.onLost(name, `lock '${name}' (generation ${h.generation}) is now held by ${by} at generation ${r.generation}`)
    }
  }

  /**
   * Managed locks we own: an idle one goes to the oldest live requester by our rewrite of the
   * record; for one in use, `onRequested` tells the user (`lock run --yield` ends its command).
   */
  private async serveRequests(slots: (Slot & Damaged)[], records: (LockRecord & Damaged)[]): Promise<void> {
    for (const r of records) {
      if (r.damaged || !r.managed || r.owner !== this.slotIndex + 1 || r.ownerGeneration !== this.generation) continue
      const [first] = this.requesters(slots, r.index)
      if (!first) continue
      if (this.held.has(r.name)) {
        this.onRequested(r.name, first.name)
        continue
      }
      // idle and not wanted here (a lock handed to us while we wait for it is about to be used)
      if (r.mode !== MODE_FREE || this.request === r.index + 1 || !this.valid()) continue
      await this.handOver(r, first)
    }
  }

  /** The managed owner's rewrite: `to` owns the lock (idle) under a new generation. */
  private async handOver(r: LockRecord, to: Slot): Promise<void> {
    await this.storage.write(
      recordOffset(this.header, r.index),
      encodeRecord({ ...r, mode: MODE_FREE, owner: to.index + 1, ownerGeneration: to.generation, generation: r.generation + 1 }),
    )
  }

  /**
   * Finds the record of `name`, claiming a blank one (by compare-and-write) if none has it yet.
   * A damaged record on the way is skipped when the name turns up further on (names are claimed
   * at the first blank of their probe sequence and never move, so it cannot have been ours);
   * when it does not, the damaged record may be this lock's own, and the lock is refused.
   */
  private async recordFor(name: string, managed: boolean): Promise<{ rec: LockRecord; bytes: Buffer }> {
    if (name.length === 0 || Buffer.byteLength(name) > NAME_BYTES) throw new StorageError('InvalidArgument', `lock name must be 1 to ${NAME_BYTES} bytes`)
    const max = this.header.maxLocks
    const home = homeIndex(name, max)
    for (;;) {
      let damaged: (LockRecord & Damaged) | null = null
      let blank: { off: number; bytes: Buffer } | null = null
      // the probe sequence, a window of records per read (a name mostly sits at its home record)
      probe: for (let k = 0; k < max; ) {
        const first = (home + k) % max
        const count = Math.min(PROBE_WINDOW, max - first, max - k)
        const raw = await this.storage.read(recordOffset(this.header, first), count * SECTOR)
        for (let j = 0; j < count; j++, k++) {
          const bytes = Buffer.from(raw.subarray(j * SECTOR, (j + 1) * SECTOR))
          const r = recordOrDamaged(bytes, first + j, this.storage.name)
          if (r.damaged) {
            damaged ??= r
            continue
          }
          if (r.name === name) return { rec: r, bytes }
          if (r.name === '') {
            blank = { off: recordOffset(this.header, r.index), bytes }
            break probe
          }
        }
      }
      if (damaged) {
        throw new StorageError('Corrupt', `lock '${name}': its record may be the damaged record ${damaged.index} (${damaged.damaged}); other locks are not affected — see 'Repairs' in the README`)
      }
      if (!blank) throw new StorageError('NoSpace', `lockspace '${this.storage.name}' has no free lock record`)
      const fresh = { name, mode: MODE_FREE, managed, generation: 0, owner: 0, ownerGeneration: 0, shared: new Set<number>() }
      await this.storage.compareAndWrite(blank.off, blank.bytes, encodeRecord(fresh))
      // re-read: we, or whoever won, has the name there now
    }
  }

  /** Throws (and fences) unless this host's lease is valid. */
  private needLease(): void {
    if (!this.valid()) {
      this.fence('the lease expired before the lock was taken')
      throw new StorageError('IoError', `host '${this.hostName}' has no valid lease`)
    }
  }

  /** One attempt: the lock, or (when a live host has it) its record's index and whether it is managed. */
  private async attempt(name: string, o: AcquireOptions): Promise<Held | Refused> {
    this.needLease()
    const { rec, bytes } = await this.recordFor(name, o.managed ?? false)
    const me = this.slotIndex + 1
    const off = recordOffset(this.header, rec.index)
    const refused: Refused = { refused: rec.index, managed: rec.managed }
    const take = async (next: Omit<LockRecord, 'index'>): Promise<Held | Refused> => {
      const ok = rec.managed && rec.owner === me && rec.ownerGeneration === this.generation
        ? (await this.storage.write(off, encodeRecord(next)), true) // the managed owner alone writes its record
        : await this.storage.compareAndWrite(off, bytes, encodeRecord(next))
      if (!ok) return refused
      const h: Held = { name, index: rec.index, mode: o.shared ? 'shared' : 'exclusive', managed: rec.managed, generation: next.generation }
      this.held.set(name, h)
      return h
    }
    if (this.held.has(name)) throw new StorageError('Busy', `lock '${name}' is already held by this host`)
    // the holders' liveness as of now: their heartbeat slots read again (a free record needs none)
    await this.observeSlots([...(rec.owner !== 0 && rec.owner !== me ? [rec.owner - 1] : []), ...[...rec.shared].filter((i) => i !== this.slotIndex)])
    const ownerAlive = rec.owner !== 0 && this.alive(rec.owner - 1, rec.ownerGeneration)
    const liveShared = [...rec.shared].filter((i) => this.alive(i))
    if (o.shared) {
      if (rec.mode === MODE_EXCLUSIVE && ownerAlive) return refused
      if (rec.managed) throw new StorageError('InvalidArgument', `lock '${name}' is managed: it has no shared mode`)
      const shared = new Set(liveShared)
      shared.add(this.slotIndex)
      return take({ ...rec, mode: MODE_SHARED, owner: 0, ownerGeneration: 0, shared, generation: rec.generation + 1 })
    }
    if (liveShared.some((i) => i !== this.slotIndex)) return refused
    const mine = { ...rec, mode: MODE_EXCLUSIVE, owner: me, ownerGeneration: this.generation, shared: new Set<number>() }
    if (rec.managed) {
      if (rec.owner === me && rec.ownerGeneration === this.generation) {
        // already ours (handed over, or kept idle): take it into use, same owner, same token
        if (rec.mode === MODE_EXCLUSIVE) throw new StorageError('Busy', `lock '${name}' is already held by this host`)
        return take({ ...mine, generation: rec.generation })
      }
      if (ownerAlive) return refused
      return take({ ...mine, generation: rec.generation + 1 }) // owner dead (or none): break by compare-and-write
    }
    if (rec.mode === MODE_EXCLUSIVE && ownerAlive) return refused
    return take({ ...mine, generation: rec.generation + 1 })
  }

  /**
   * Takes lock `name` from whoever holds it at generation `expectGeneration`, live or not (no lease
   * wait): one compare-and-write of the record as read, {owner P, g} → {owner this host, g + 1}
   * (the VMware FT rule, ft-architecture.md §1.3). Of hosts that claim the same generation exactly
   * one wins; the others get null (the record's generation is no longer `expectGeneration`). The
   * winner holds the lock exclusively like an acquired one — this host may be its holder already —
   * and the deposed holder learns it at its next heartbeat (`onLost`, `holds()` false).
   * A managed lock is refused (InvalidArgument): its owner rewrites its record without
   * compare-and-write, which could undo a claim.
   */
  async claim(name: string, expectGeneration: number): Promise<Held | null> {
    this.needLease()
    this.claiming.add(name)
    try {
      // a record still at `expectGeneration` that changed (its owner released it) is read again:
      // every change of owner bumps the generation, so this ends with a win or a newer generation
      for (let tries = 0; ; tries++) {
        const { rec, bytes } = await this.recordFor(name, false)
        if (rec.managed) throw new StorageError('InvalidArgument', `lock '${name}' is managed: it moves by its owner's handover, not by claim`)
        if (rec.generation !== expectGeneration) return null
        if (tries === 8) throw new StorageError('Busy', `lock '${name}': its record kept changing at generation ${expectGeneration}`)
        const next = { ...rec, mode: MODE_EXCLUSIVE, owner: this.slotIndex + 1, ownerGeneration: this.generation, shared: new Set<number>(), generation: rec.generation + 1 }
        if (!(await this.storage.compareAndWrite(recordOffset(this.header, rec.index), bytes, encodeRecord(next)))) continue
        const h: Held = { name, index: rec.index, mode: 'exclusive', managed: false, generation: next.generation }
        this.held.set(name, h)
        return h
      }
    } finally {
      this.claiming.delete(name)
    }
  }

  private async setRequest(req: number, shared = false): Promise<void> {
    if (this.request === req && this.requestShared === shared) return
    this.request = req
    this.requestShared = shared
    this.counter++
    // a signal to the other hosts like the heartbeat itself: visible is enough, no fsync
    await this.storage.write(slotOffset(this.slotIndex), this.slotBytes(), { durable: false })
  }

  /**
   * Acquires a lock: once (waitMs 0) or until waitMs has passed. Returns the fencing token.
   * A waiter says so in its heartbeat slot (any mode: `waiting` in views); for a managed lock
   * that request is what makes the owner hand it over.
   */
  async acquire(name: string, o: AcquireOptions = {}): Promise<Held> {
    const waitMs = o.waitMs ?? 0
    const start = this.clock.now()
    const until = start + waitMs
    try {
      for (;;) {
        const h = await this.attempt(name, o)
        if (!('refused' in h)) return h
        if (this.clock.now() >= until) {
          const v = (await this.view()).locks.find((l) => l.name === name)
          const who = v?.owner ? `host '${v.owner}'` : `${v?.sharedHolders.length ?? 0} shared holder(s)`
          const err = new StorageError('Busy', `lock '${name}' is held by ${who} (generation ${v?.generation})${waitMs > 0 ? `; timed out after ${waitMs / 1000} s` : ''}`)
          throw Object.assign(err, { timedOut: waitMs > 0 })
        }
        // A managed lock's owner hands over on request: ask at once. Other waiters say so once they
        // have waited a heartbeat (for views): a short wait writes nothing, so hosts busy taking
        // many locks do not crowd the storage with request writes.
        if (h.managed || this.clock.now() - start >= this.header.heartbeatMs) await this.setRequest(h.refused + 1, o.shared ?? false)
        await this.sleep(Math.min(o.pollMs ?? this.header.heartbeatMs / 2, Math.max(1, until - this.clock.now())))
      }
    } finally {
      if (this.request !== 0) await this.setRequest(0).catch(() => undefined)
    }
  }

  /**
   * Releases a lock. A managed lock goes to the oldest live requester by this owner's rewrite; with
   * none, it stays owned (idle) by this host until someone asks for it.
   */
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
        const [first] = this.valid() ? this.requesters((await this.readAll()).slots, rec.index) : []
        if (first) await this.handOver(rec, first)
        else await this.storage.write(off, encodeRecord({ ...rec, mode: MODE_FREE }))
        return
      }
      if (await this.storage.compareAndWrite(off, bytes, encodeRecord({ ...rec, mode: MODE_FREE, owner: 0, ownerGeneration: 0 }))) return
    }
  }

  heldLocks(): Held[] {
    return [...this.held.values()]
  }

  /**
   * Releases everything, marks the slot left, stops the heartbeat. Throws (IoError, naming each
   * lock) after doing all it can when a release or the final slot write failed.
   */
  async leave(): Promise<void> {
    const failed: string[] = []
    for (const h of [...this.held.values()]) await this.release(h.name).catch((e: Error) => failed.push(`lock '${h.name}': ${e.message}`))
    this.stopped = true
    if (this.timer !== null) this.clock.clearTimeout(this.timer)
    if (this.fenceTimer !== null) this.clock.clearTimeout(this.fenceTimer)
    await this.beating
    if (this.slotIndex >= 0) {
      const left = encodeSlot({ state: SLOT_LEFT, generation: this.generation, counter: this.counter + 1, request: 0, requestShared: false, name: this.hostName })
      await this.storage.write(slotOffset(this.slotIndex), left).catch((e: Error) => failed.push(`heartbeat slot ${this.slotIndex}: ${e.message}`))
    }
    this.slotIndex = -1
    if (failed.length) throw new StorageError('IoError', `could not release: ${failed.join('; ')}`)
  }

  /**
   * Stops heartbeating, and a join in progress, without touching the storage (a closing host; in
   * tests, a host that hangs).
   */
  halt(): void {
    this.halted = true
    this.stopped = true
    if (this.timer !== null) this.clock.clearTimeout(this.timer)
    if (this.fenceTimer !== null) this.clock.clearTimeout(this.fenceTimer)
  }


}

import { initLockspace, LockManager, regionSize, type Clock, type LockStorage } from '../../src/disk-formats/lock-region/index.js'

/** An in-memory LockStorage: every operation completes in a microtask (for fake-clock tests). */
export class MemoryLockStorage implements LockStorage {
  readonly buf: Buffer
  readonly name = 'memory'
  constructor(size: number) {
    this.buf = Buffer.alloc(size)
  }
  get size() {
    return this.buf.length
  }
  async read(o: number, l: number) {
    return Buffer.from(this.buf.subarray(o, o + l))
  }
  async write(o: number, d: Buffer, _opts?: { durable?: boolean }) {
    void _opts
    d.copy(this.buf, o)
  }
  async compareAndWrite(o: number, e: Buffer, d: Buffer) {
    if (!this.buf.subarray(o, o + e.length).equals(e)) return false
    d.copy(this.buf, o)
    return true
  }
  async close() {}
}

/** A fake monotonic clock: timers fire only when the test advances time. */
export class FakeClock implements Clock {
  t = 1000
  private timers: { at: number; fn: () => void; id: number }[] = []
  private next = 1
  now() {
    return this.t
  }
  setTimeout(fn: () => void, ms: number) {
    const id = this.next++
    this.timers.push({ at: this.t + ms, fn, id })
    return id
  }
  clearTimeout(h: unknown) {
    this.timers = this.timers.filter((x) => x.id !== h)
  }
  /** timers marked as background work (Clock.background) */
  readonly backgroundIds = new Set<unknown>()
  background(h: unknown) {
    this.backgroundIds.add(h)
  }
  /** The timers pending now: their delays from now, and whether each is background work. */
  pending(): { ms: number; background: boolean }[] {
    return this.timers.map((x) => ({ ms: x.at - this.t, background: this.backgroundIds.has(x.id) }))
  }
  /** Advances time in steps, firing due timers and letting their promise chains settle. */
  async advance(ms: number, step = 10) {
    const end = this.t + ms
    while (this.t < end) {
      this.t = Math.min(end, this.t + step)
      for (;;) {
        const due = this.timers.filter((x) => x.at <= this.t).sort((a, b) => a.at - b.at)[0]
        if (!due) break
        this.timers = this.timers.filter((x) => x !== due)
        due.fn()
        await settle()
      }
      await settle()
    }
  }
}

export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r))
}

/** A fresh, initialised in-memory lockspace of `hosts` slots and `locks` records. */
export async function memorySpace(hosts = 8, locks = 16): Promise<MemoryLockStorage> {
  const st = new MemoryLockStorage(regionSize({ maxHosts: hosts, maxLocks: locks }))
  await initLockspace(st, { maxHosts: hosts, maxLocks: locks })
  return st
}

/** Hosts 'a' and 'b', both joined, on `st` (default: a fresh memorySpace) and one fake clock. */
export async function twoHosts(st?: MemoryLockStorage): Promise<{ st: MemoryLockStorage; clock: FakeClock; a: LockManager; b: LockManager }> {
  const space = st ?? (await memorySpace())
  const clock = new FakeClock()
  const a = new LockManager(space, 'a', clock)
  const b = new LockManager(space, 'b', clock)
  await a.join()
  await b.join()
  return { st: space, clock, a, b }
}

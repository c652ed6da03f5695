import { Mutex } from 'async-mutex'

/**
 * One mutex per disk name. An entry lives while anyone holds or waits for it, so a request queued
 * behind a disk's deletion runs after it (and finds no disk), never beside a request that came
 * later; names nobody is waiting for cost nothing.
 */
export class DiskLocks {
  private readonly held = new Map<string, { mutex: Mutex; users: number }>()

  async run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    let e = this.held.get(name)
    if (!e) this.held.set(name, (e = { mutex: new Mutex(), users: 0 }))
    e.users++
    try {
      return await e.mutex.runExclusive(fn)
    } finally {
      if (--e.users === 0) this.held.delete(name)
    }
  }
}

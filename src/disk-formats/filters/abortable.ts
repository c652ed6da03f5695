import { readInto, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from '../block-device.js'
import { StorageError } from '../errors.js'
import { Filter } from './filter.js'

/**
 * `next` until `signal` aborts; from then on every request fails at once (IoError naming the
 * signal's reason, `cancelled: true`), so a copy through it stops at its next request. Requests
 * already sent to `next` finish; close passes.
 */
export function abortable(next: BlockDevice, signal: AbortSignal): BlockDevice {
  return new Abortable(next, signal)
}

/** Was `e` the failure of a request made after its abortable's signal aborted? */
export const isCancelled = (e: unknown): boolean => e instanceof StorageError && (e as { cancelled?: unknown }).cancelled === true

class Abortable extends Filter {
  constructor(
    next: BlockDevice,
    private readonly signal: AbortSignal,
  ) {
    super(next)
  }

  private go<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.signal.aborted) return fn()
    const why = this.signal.reason instanceof Error ? this.signal.reason.message : String(this.signal.reason)
    return Promise.reject(Object.assign(new StorageError('IoError', `cancelled (${why})`), { cancelled: true }))
  }
  override read(offset: number, length: number): Promise<Buffer> {
    return this.go(() => this.next.read(offset, length))
  }
  readInto(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    return this.go(() => readInto(this.next, offset, length, out, at))
  }
  override write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.go(() => this.next.write(offset, data, opts))
  }
  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.go(() => this.next.writeZeroes(offset, length, opts))
  }
  override discard(offset: number, length: number): Promise<void> {
    return this.go(() => this.next.discard(offset, length))
  }
  override flush(): Promise<void> {
    return this.go(() => this.next.flush())
  }
  override blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.go(() => this.next.blockStatus(offset, length))
  }
}

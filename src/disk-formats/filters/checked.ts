import { rangeError, readOnlyError, type BlockDevice, type Extent, type WriteOptions, type ZeroOptions } from '../block-device.js'
import { StorageError } from '../errors.js'
import { Filter } from './filter.js'

export interface CheckedOptions {
  /** offsets and lengths must be multiples of this many bytes (default 1: any byte) */
  alignment?: number
}

/**
 * Validates every request once, at the edge (DESIGN §11), so the devices beneath trust their
 * input: a write to a read-only device fails `ReadOnly` (before its range is looked at), then an
 * offset or length that is not a safe non-negative integer fails `InvalidArgument`, one past the
 * end `OutOfRange`, one off the alignment `InvalidArgument`. Failures are rejected promises.
 */
export function checked(next: BlockDevice, opts: CheckedOptions = {}): BlockDevice {
  return new Checked(next, opts.alignment ?? 1)
}

class Checked extends Filter {
  constructor(
    next: BlockDevice,
    private readonly alignment: number,
  ) {
    super(next)
    if (!Number.isSafeInteger(alignment) || alignment < 1) throw new StorageError('InvalidArgument', `alignment ${alignment}: a positive integer is needed`)
  }

  private problem(offset: number, length: number, writes: boolean): StorageError | null {
    if (writes && this.next.readOnly) return readOnlyError()
    const e = rangeError(this.next, offset, length)
    if (e) return e
    if (this.alignment > 1 && (offset % this.alignment !== 0 || length % this.alignment !== 0)) {
      return new StorageError('InvalidArgument', `request ${offset}+${length} is not aligned to ${this.alignment} bytes`)
    }
    return null
  }

  override read(offset: number, length: number): Promise<Buffer> {
    const e = this.problem(offset, length, false)
    return e ? Promise.reject(e) : this.next.read(offset, length)
  }
  override write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    const e = this.problem(offset, data.length, true)
    return e ? Promise.reject(e) : this.next.write(offset, data, opts)
  }
  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const e = this.problem(offset, length, true)
    return e ? Promise.reject(e) : this.next.writeZeroes(offset, length, opts)
  }
  override discard(offset: number, length: number): Promise<void> {
    const e = this.problem(offset, length, true)
    return e ? Promise.reject(e) : this.next.discard(offset, length)
  }
  override blockStatus(offset: number, length: number): Promise<Extent[]> {
    const e = this.problem(offset, length, false)
    return e ? Promise.reject(e) : this.next.blockStatus(offset, length)
  }
  protected override compareAndWriteNext(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    if (expected.length !== data.length) {
      return Promise.reject(new StorageError('InvalidArgument', `compare-and-write of ${data.length} bytes against ${expected.length} expected`))
    }
    const e = this.problem(offset, data.length, true)
    return e ? Promise.reject(e) : super.compareAndWriteNext(offset, expected, data)
  }
}

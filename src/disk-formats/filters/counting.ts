import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block-device.js'
import { Filter } from './filter.js'
import type { Op } from './fault.js'

export type Counts = Record<Op, number>

/** A filter counting the requests that reach `next` (tests: dropWrites issues no write). */
export function counting(next: BlockDevice): BlockDevice & { counts: Counts } {
  return new Counting(next)
}

class Counting extends Filter {
  readonly counts: Counts = { read: 0, write: 0, writeZeroes: 0, discard: 0, flush: 0, blockStatus: 0, compareAndWrite: 0 }

  override read(offset: number, length: number): Promise<Buffer> {
    this.counts.read++
    return super.read(offset, length)
  }
  override write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.counts.write++
    return super.write(offset, data, opts)
  }
  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.counts.writeZeroes++
    return super.writeZeroes(offset, length, opts)
  }
  override discard(offset: number, length: number): Promise<void> {
    this.counts.discard++
    return super.discard(offset, length)
  }
  override flush(): Promise<void> {
    this.counts.flush++
    return super.flush()
  }
  override blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.counts.blockStatus++
    return super.blockStatus(offset, length)
  }
  protected override compareAndWriteNext(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    this.counts.compareAndWrite++
    return super.compareAndWriteNext(offset, expected, data)
  }
}

import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../block-device.js'
import { Filter } from './filter.js'
import type { FaultTest, Op } from './fault.js'

/**
 * A filter that runs each request `fault` hits through `hit` instead of straight to `next`
 * (`delay` waits first, `error` fails it); the others pass untouched.
 */
export class Faulty extends Filter {
  constructor(
    next: BlockDevice,
    private readonly fault: FaultTest,
    private readonly hit: <T>(op: Op, offset: number, length: number, go: () => Promise<T>) => Promise<T>,
  ) {
    super(next)
  }

  override read(offset: number, length: number): Promise<Buffer> {
    if (!this.fault('read', offset, length)) return this.next.read(offset, length)
    return this.hit('read', offset, length, () => this.next.read(offset, length))
  }
  override write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    if (!this.fault('write', offset, data.length)) return this.next.write(offset, data, opts)
    return this.hit('write', offset, data.length, () => this.next.write(offset, data, opts))
  }
  override writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    if (!this.fault('writeZeroes', offset, length)) return this.next.writeZeroes(offset, length, opts)
    return this.hit('writeZeroes', offset, length, () => this.next.writeZeroes(offset, length, opts))
  }
  override discard(offset: number, length: number): Promise<void> {
    if (!this.fault('discard', offset, length)) return this.next.discard(offset, length)
    return this.hit('discard', offset, length, () => this.next.discard(offset, length))
  }
  override flush(): Promise<void> {
    if (!this.fault('flush', 0, 0)) return this.next.flush()
    return this.hit('flush', 0, 0, () => this.next.flush())
  }
  override blockStatus(offset: number, length: number): Promise<Extent[]> {
    if (!this.fault('blockStatus', offset, length)) return this.next.blockStatus(offset, length)
    return this.hit('blockStatus', offset, length, () => this.next.blockStatus(offset, length))
  }
  protected override compareAndWriteNext(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    const go = () => super.compareAndWriteNext(offset, expected, data)
    return this.fault('compareAndWrite', offset, data.length) ? this.hit('compareAndWrite', offset, data.length, go) : go()
  }
}

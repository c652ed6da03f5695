import { capabilitiesOf, type BlockDevice, type Capabilities, type ComparesAndWrites, type Extent, type WriteOptions, type ZeroOptions } from '../block-device.js'

/**
 * The pass-through every filter starts from (nbdkit's filter table): each call goes to `next`
 * unchanged, and a filter overrides the calls it changes. `compareAndWrite` is present only when
 * `next` has one (the SCSI LU offers COMPARE AND WRITE through it by that test), forwarded through
 * `compareAndWriteNext` so a filter may override it too.
 */
export class Filter implements BlockDevice {
  declare compareAndWrite?: ComparesAndWrites['compareAndWrite']

  constructor(protected readonly next: BlockDevice) {
    if (capabilitiesOf(next).compareAndWrite) this.compareAndWrite = (o, e, d) => this.compareAndWriteNext(o, e, d)
  }

  get size(): number {
    return this.next.size
  }
  get readOnly(): boolean {
    return this.next.readOnly
  }
  read(offset: number, length: number): Promise<Buffer> {
    return this.next.read(offset, length)
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.next.write(offset, data, opts)
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.next.writeZeroes(offset, length, opts)
  }
  discard(offset: number, length: number): Promise<void> {
    return this.next.discard(offset, length)
  }
  flush(): Promise<void> {
    return this.next.flush()
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.next.blockStatus(offset, length)
  }
  close(): Promise<void> {
    return this.next.close()
  }
  capabilities(): Capabilities {
    return capabilitiesOf(this.next)
  }
  protected compareAndWriteNext(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    return (this.next as BlockDevice & ComparesAndWrites).compareAndWrite(offset, expected, data)
  }
}

/** Resolved: what a request that is dropped or needs nothing answers (one promise, shared). */
export const DONE: Promise<void> = Promise.resolve()

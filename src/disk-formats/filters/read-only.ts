import { capabilitiesOf, readOnlyError, type BlockDevice, type Capabilities } from '../block-device.js'
import { Filter } from './filter.js'

/** A read-only view of `next`: every change fails `ReadOnly`; reads, flush and status pass. */
export function readOnly(next: BlockDevice): BlockDevice {
  return new ReadOnly(next)
}

class ReadOnly extends Filter {
  override get readOnly(): boolean {
    return true
  }
  override write(): Promise<void> {
    return Promise.reject(readOnlyError())
  }
  override writeZeroes(): Promise<void> {
    return Promise.reject(readOnlyError())
  }
  override discard(): Promise<void> {
    return Promise.reject(readOnlyError())
  }
  protected override compareAndWriteNext(): Promise<boolean> {
    return Promise.reject(readOnlyError())
  }
  override capabilities(): Capabilities {
    return { ...capabilitiesOf(this.next), discard: false }
  }
}

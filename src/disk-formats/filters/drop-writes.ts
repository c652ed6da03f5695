import { capabilitiesOf, type BlockDevice, type Capabilities } from '../block-device.js'
import { DONE, Filter } from './filter.js'

/**
 * The FT backup's disk (DESIGN §8): reads and block status come from `next`; writes, zeroes,
 * discards and flushes complete at once without reaching it (the primary issues them). Writable
 * whatever `next` is, and it offers no compare-and-write (it could not both drop and compare).
 */
export function dropWrites(next: BlockDevice): BlockDevice {
  return new DropWrites(next)
}

class DropWrites extends Filter {
  constructor(next: BlockDevice) {
    super(next)
    delete this.compareAndWrite
  }
  override get readOnly(): boolean {
    return false
  }
  override write(): Promise<void> {
    return DONE
  }
  override writeZeroes(): Promise<void> {
    return DONE
  }
  override discard(): Promise<void> {
    return DONE
  }
  override flush(): Promise<void> {
    return DONE
  }
  override capabilities(): Capabilities {
    return { ...capabilitiesOf(this.next), compareAndWrite: false }
  }
}

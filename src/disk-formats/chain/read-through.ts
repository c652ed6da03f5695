import { readInto, type BlockDevice, type Extent } from '../block-device.js'
import { VmdkImage, type Below } from '../vmdk/vmdk-image.js'

/**
 * Read-through (DESIGN §3): where a delta allocates nothing it reads its parent's bytes, and
 * zeros past the parent's end (a parent smaller than its child). Block status answers for each
 * layer and counts depth down from the child; past the parent's end nothing is present.
 */
export class ReadThrough implements Below {
  constructor(readonly device: BlockDevice) {}

  /** Counted when asked: a chain is linked top-down, so the parent's own parent may come later. */
  get depth(): number {
    return 1 + (this.device instanceof VmdkImage ? this.device.depthBelow : 0)
  }

  async fill(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    const avail = Math.max(0, Math.min(length, this.device.size - offset))
    if (avail > 0) await readInto(this.device, offset, avail, out, at)
    if (avail < length) out.fill(0, at + avail, at + length)
  }

  /**
   * A parent is read-only, except for a moment: a datastore snapshot stacks a delta on the open
   * top and freezes it after. Until then a flush through the child syncs the parent too, and
   * after it while the parent was frozen without a sync (VmdkImage.freeze).
   */
  async flush(): Promise<void> {
    if (!this.device.readOnly || (this.device instanceof VmdkImage && this.device.syncPending)) await this.device.flush()
  }

  shadows(offset: number): boolean {
    return offset < this.device.size
  }

  async status(offset: number, length: number): Promise<Extent[]> {
    const avail = Math.max(0, Math.min(length, this.device.size - offset))
    const out: Extent[] = []
    if (avail > 0) for (const e of await this.device.blockStatus(offset, avail)) out.push({ ...e, depth: e.depth + 1 })
    if (avail < length) out.push({ offset: offset + avail, length: length - avail, data: false, zero: true, depth: this.depth, present: false })
    return out
  }
}

/** Puts `parent` under `child`: the child's unallocated grains read through to it. */
export function linkParent(child: VmdkImage, parent: BlockDevice): void {
  child.attachParent(new ReadThrough(parent))
}

import { PAGE_SHIFT, PAGE_SIZE, type Memory } from './memory.js'

/** pages per slab: the first is allocated before the VM stops, more as the guest writes */
const SLAB_PAGES = 4096

/**
 * Copy-on-write guest memory for a checkpoint (SPEC.md §Checkpoints): from `arm()`, the first
 * write to each page still to be saved copies it into the arena first, so `page(i)` is always the
 * page as it was at the checkpoint — the arena's copy, or RAM when the guest has not written it.
 * A page is disarmed once read, so the guest pays for at most one copy per page.
 */
export class CowArena {
  private slabs: Buffer[] = []
  private used = 0
  /** page → arena slot + 1 (0: not copied) */
  private readonly slot: Uint32Array
  copied = 0

  constructor(private readonly mem: Memory) {
    this.slot = new Uint32Array(mem.pages)
    // allocated while the VM still runs: nothing is allocated inside the stun
    this.slabs.push(Buffer.allocUnsafe(Math.min(SLAB_PAGES, mem.pages) * PAGE_SIZE))
  }

  /** Arms every page: call with the VM paused. */
  arm(): void {
    this.mem.armFirstWrite((p) => this.copy(p))
  }

  private copy(p: number): void {
    let slab = this.slabs[this.slabs.length - 1]
    let at = (this.used % SLAB_PAGES) * PAGE_SIZE
    if (this.used > 0 && this.used % SLAB_PAGES === 0) {
      slab = Buffer.allocUnsafe(SLAB_PAGES * PAGE_SIZE)
      this.slabs.push(slab)
      at = 0
    }
    const from = p << PAGE_SHIFT
    slab.set(this.mem.bytes.subarray(from, from + PAGE_SIZE), at)
    this.slot[p] = ++this.used
    this.copied++
  }

  /**
   * Page `p` as it was at the checkpoint. Read it synchronously (the VM runs between two calls):
   * RAM is only safe to read while the page is still armed, and this disarms it.
   */
  page(p: number): Uint8Array {
    const s = this.slot[p]
    if (s) {
      const i = s - 1
      const slab = this.slabs[Math.floor(i / SLAB_PAGES)]
      const at = (i % SLAB_PAGES) * PAGE_SIZE
      return slab.subarray(at, at + PAGE_SIZE)
    }
    this.mem.disarmPage(p)
    const from = p << PAGE_SHIFT
    return this.mem.bytes.subarray(from, from + PAGE_SIZE)
  }

  /** Done: the hook is off and the copies are dropped. */
  release(): void {
    this.mem.disarmFirstWrite()
    this.slabs = []
  }
}

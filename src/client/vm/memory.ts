/**
 * Guest RAM: one ArrayBuffer at RAM_BASE, in 4 KiB pages, with a dirty bitmap set by every store
 * (CPU or device) and a per-page first-write hook (for copy-on-write checkpoints).
 *
 * The store path tests one byte per page, `watch[page]`: 0 means "already dirty and no hook
 * armed", so the common store costs a single load and compare. Anything else takes the slow path
 * (`touch`), which marks the page dirty, fires an armed hook once, and clears `watch`.
 */
export const RAM_BASE = 0x80000000
export const PAGE_SHIFT = 12
export const PAGE_SIZE = 1 << PAGE_SHIFT

export class Memory {
  readonly bytes: Uint8Array
  readonly i8: Int8Array
  readonly u16: Uint16Array
  readonly i16: Int16Array
  readonly i32: Int32Array
  readonly pages: number
  /** 1 = written since the last `readAndClearDirty` */
  private readonly dirty: Uint8Array
  /** 1 = a first-write hook is armed */
  private readonly armed: Uint8Array
  /** 0 = fast store path (dirty, not armed, no compiled code) */
  readonly watch: Uint8Array
  private hook: ((page: number) => void) | null = null
  /** 1 = the page holds compiled code: its stores keep taking the slow path, which tells `codeWatch` */
  private readonly code: Uint8Array
  /**
   * Told of every store to a page marked with `setCode`, by the CPU or a device, after the
   * first-write hook and before the bytes change; true when compiled code was invalidated.
   */
  codeWatch: ((offset: number, length: number) => boolean) | null = null

  constructor(readonly size: number) {
    if (size <= 0 || size % PAGE_SIZE || size > 0x40000000) throw new RangeError(`memory size must be a positive multiple of 4 KiB up to 1 GiB, not ${size}`)
    const buf = new ArrayBuffer(size)
    this.bytes = new Uint8Array(buf)
    this.i8 = new Int8Array(buf)
    this.u16 = new Uint16Array(buf)
    this.i16 = new Int16Array(buf)
    this.i32 = new Int32Array(buf)
    this.pages = size >>> PAGE_SHIFT
    this.dirty = new Uint8Array(this.pages)
    this.armed = new Uint8Array(this.pages)
    this.watch = new Uint8Array(this.pages).fill(1)
    this.code = new Uint8Array(this.pages)
  }

  /**
   * Slow path of a store of `length` bytes at `offset` in `page` (see the class comment); true when
   * the store invalidated compiled code (`codeWatch`).
   */
  touch(page: number, offset = page << PAGE_SHIFT, length = PAGE_SIZE): boolean {
    this.dirty[page] = 1
    this.watch[page] = this.code[page]
    if (this.armed[page]) {
      this.armed[page] = 0
      this.hook?.(page)
    }
    return this.code[page] === 1 && this.codeWatch !== null && this.codeWatch(offset, length)
  }

  /** Marks the pages of [offset, offset+length) written, as a device's DMA does. */
  touchRange(offset: number, length: number): void {
    if (length <= 0) return
    const last = (offset + length - 1) >>> PAGE_SHIFT
    for (let p = offset >>> PAGE_SHIFT; p <= last; p++) {
      if (!this.watch[p]) continue
      const from = Math.max(offset, p << PAGE_SHIFT)
      this.touch(p, from, Math.min(offset + length, (p + 1) << PAGE_SHIFT) - from)
    }
  }

  /** Marks `page` as holding compiled code (or not): its stores take the slow path while it does. */
  setCode(page: number, on: boolean): void {
    this.code[page] = on ? 1 : 0
    if (on) this.watch[page] = 1
  }

  /** The pages written since the last call, in order; their dirty bits are cleared. */
  readAndClearDirty(): number[] {
    const out: number[] = []
    const d = this.dirty
    for (let p = 0; p < d.length; p++) {
      if (d[p]) {
        out.push(p)
        d[p] = 0
        this.watch[p] = 1
      }
    }
    return out
  }

  /**
   * Arms the first-write hook on `pages` (default: every page): the next store to each, by the
   * CPU or a device, calls `hook(page)` once, before the store. One hook at a time.
   */
  armFirstWrite(hook: (page: number) => void, pages?: Iterable<number>): void {
    this.hook = hook
    if (!pages) {
      this.armed.fill(1)
      this.watch.fill(1)
      return
    }
    for (const p of pages) {
      this.armed[p] = 1
      this.watch[p] = 1
    }
  }

  /** The hook is no longer wanted for `page` (it was saved some other way). */
  disarmPage(page: number): void {
    this.armed[page] = 0
  }

  /** is the hook still armed for `page` */
  isArmed(page: number): boolean {
    return this.armed[page] === 1
  }

  disarmFirstWrite(): void {
    this.armed.fill(0)
    this.hook = null
  }

  /** Guest physical address → offset in RAM, or -1 when [addr, addr+length) is not all RAM. */
  offsetOf(addr: number, length: number): number {
    const off = (addr - RAM_BASE) >>> 0
    return off + length <= this.size && length >= 0 ? off : -1
  }
}

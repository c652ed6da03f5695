import { capabilitiesOf, type BlockDevice, type Capabilities, type Extent, type WriteOptions, type ZeroOptions } from '../block-device.js'
import { StorageError } from '../errors.js'

export interface SwappableOptions {
  /** what the device says of itself, whatever it forwards to (default: `next`'s) */
  readOnly?: boolean
  /** called once, after the device is closed (the server's disk lock is released there) */
  onClose?: () => Promise<void>
}

/** A device whose chain can be swapped underneath its users: see LiveDisk. */
export function swappable(next: BlockDevice, opts: SwappableOptions = {}): LiveDisk {
  return new LiveDisk(next, opts.readOnly ?? next.readOnly, opts.onClose)
}

/**
 * A BlockDevice that forwards to a chain which the datastore can swap underneath it (a snapshot
 * puts a new delta on top; a revert points it at another layer). Clients keep their connection:
 * `pause` lets in-flight requests finish and holds new ones until `resume`.
 */
export class LiveDisk implements BlockDevice {
  private inflight = 0
  private drained: (() => void) | null = null
  private paused: Promise<void> | null = null
  private unpause: (() => void) | null = null
  /** while set, requests that change the disk wait for it before they pick the device */
  private held: Promise<void> | null = null
  private unhold: (() => void) | null = null
  /** while set, flushes and FUA writes wait for it */
  private heldFlush: Promise<void> | null = null
  private unholdFlush: (() => void) | null = null
  private closed = false

  constructor(
    private dev: BlockDevice,
    readonly readOnly: boolean,
    /** called once, after the device is closed (the server's disk lock is released there) */
    private readonly onClose?: () => Promise<void>,
  ) {}

  get size(): number {
    return this.dev.size
  }

  /** The device underneath (for the datastore's own use while paused). */
  get current(): BlockDevice {
    return this.dev
  }

  private async enter(): Promise<BlockDevice> {
    while (this.paused) await this.paused
    if (this.closed) throw new StorageError('IoError', 'the disk was closed')
    this.inflight++
    return this.dev
  }

  private exit(): void {
    this.inflight--
    if (this.inflight === 0 && this.drained) this.drained()
  }

  private async run<T>(fn: (d: BlockDevice) => Promise<T>): Promise<T> {
    // Fast path: not paused, no extra await before the request starts.
    const d = this.paused || this.closed ? await this.enter() : (this.inflight++, this.dev)
    try {
      return await fn(d)
    } finally {
      this.exit()
    }
  }

  /** A request that changes the disk (`durable`: a flush or FUA write): waits while held, then picks the device. */
  private async change<T>(durable: boolean, fn: (d: BlockDevice) => Promise<T>): Promise<T> {
    for (;;) {
      const gate = this.held ?? (durable ? this.heldFlush : null)
      if (!gate) break
      await gate
    }
    return this.run(fn)
  }

  /**
   * Holds requests that change the disk (write, write zeroes, discard, flush) until
   * `releaseWrites`; reads go on. Pause first, so that none is in flight: then a `resume(next)`
   * made while held puts every held request on `next`, whichever device that is when they are
   * released (a switch whose record is not yet in place acknowledges nothing written to the new
   * device, and can switch back).
   */
  holdWrites(): void {
    this.held ??= new Promise((r) => (this.unhold = r))
    this.heldFlush ??= new Promise((r) => (this.unholdFlush = r))
  }

  /**
   * Lets held requests go on, to the device current now. `flushes: 'held'` keeps flushes and FUA
   * writes held until a later call (a record in place but not yet durable: what a write
   * acknowledged meanwhile promises holds across a kill of the process, and across a power loss
   * only once flushed, as for any write).
   */
  releaseWrites(o: { flushes?: 'held' } = {}): void {
    const u = this.unhold
    this.held = null
    this.unhold = null
    u?.()
    if (o.flushes === 'held') return
    const f = this.unholdFlush
    this.heldFlush = null
    this.unholdFlush = null
    f?.()
  }

  /** Holds new requests and waits for the ones in flight. */
  async pause(): Promise<void> {
    while (this.paused) await this.paused
    this.paused = new Promise((r) => (this.unpause = r))
    if (this.inflight > 0) await new Promise<void>((r) => (this.drained = r))
    this.drained = null
  }

  /** Continues with `next` as the device (or the same one). */
  resume(next?: BlockDevice): void {
    if (next) this.dev = next
    const u = this.unpause
    this.paused = null
    this.unpause = null
    u?.()
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.run((d) => d.read(offset, length))
  }
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    return this.held || this.heldFlush ? this.change(opts?.fua === true, (d) => d.write(offset, data, opts)) : this.run((d) => d.write(offset, data, opts))
  }
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    return this.change(false, (d) => d.writeZeroes(offset, length, opts))
  }
  discard(offset: number, length: number): Promise<void> {
    return this.change(false, (d) => d.discard(offset, length))
  }
  flush(): Promise<void> {
    return this.change(true, (d) => d.flush())
  }
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.run((d) => d.blockStatus(offset, length))
  }
  /** The current device's (a swap puts a chain of the same kind in its place). */
  capabilities(): Capabilities {
    return capabilitiesOf(this.dev)
  }
  async close(): Promise<void> {
    this.releaseWrites()
    await this.pause()
    this.closed = true
    try {
      await this.dev.close()
    } finally {
      this.resume()
      await this.onClose?.()
    }
  }
}

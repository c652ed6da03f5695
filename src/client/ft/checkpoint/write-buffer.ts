import { CHECK_CONDITION, GOOD } from '../../../server/scsi/constants.js'
import { invalidOpcode, senseData } from '../../../server/scsi/sense.js'
import { mediumRange, type DiskRequestInfo, type ScsiPath, type ScsiResult } from '../../vm/scsi-path.js'

/** WRITE (6, 10, 12, 16) and WRITE AND VERIFY (10, 12, 16): buffered per epoch */
const BUFFERED_WRITES = new Set([0x0a, 0x2a, 0xaa, 0x8a, 0x2e, 0xae, 0x8e])
/** SYNCHRONIZE CACHE (10, 16): durability comes from the epoch's acknowledgement */
const SYNC = new Set([0x35, 0x91])
/** commands that change nothing: passed through (the output rule's read-only list, ft/SPEC.md) */
const READ_ONLY = new Set([0x00, 0x03, 0x12, 0x1a, 0x5a, 0x25, 0x9e, 0xa0, 0x5e, 0x08, 0x28, 0xa8, 0x88, 0x37, 0xb7, 0x4d])

export interface BufferedWrite {
  cdb: Buffer
  data: Buffer
}

/**
 * The primary's disk in checkpoint mode (checkpoint/SPEC.md "Disk writes"): a guest write completes
 * at once into the current epoch's buffer and an overlay that the guest's reads see; nothing
 * reaches the shared disk until the backup has acknowledged the write's epoch (`acked`), when the
 * primary writes it through, in order. `cut()` at each epoch's end hands the epoch's writes over
 * (they travel in the epoch, so that a backup going live can write again those whose write-through
 * it has not been told of). `direct()`: the primary runs alone — what is buffered is written
 * through, in order, and later commands go straight to the disk behind it.
 *
 * Other commands that change the disk (WRITE SAME, UNMAP, COMPARE AND WRITE, PERSISTENT RESERVE
 * OUT, …) cannot be buffered: CHECK CONDITION, ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.
 */
export class EpochWriteBuffer implements ScsiPath {
  /** lba → the block's latest buffered data and the write's number */
  private readonly overlay = new Map<number, { data: Buffer; n: number }>()
  private current: (BufferedWrite & { n: number })[] = []
  /** cut epochs not yet written through, oldest first */
  private readonly pending: { epoch: number; writes: (BufferedWrite & { n: number })[] }[] = []
  private writes = 0
  private chain: Promise<void> = Promise.resolve()
  private alone = false
  /** every write of epochs up to this one is on the disk */
  writtenThrough = 0
  /** a write-through failed: the disk can no longer be trusted to hold acknowledged writes */
  failed: Error | null = null

  constructor(private disk: ScsiPath) {}

  get blocks(): number {
    return this.disk.blocks
  }

  /** buffered writes not yet on the disk */
  get held(): number {
    return this.current.length + this.pending.reduce((n, e) => n + e.writes.length, 0)
  }

  async execute(cdb: Buffer, dataOut: Buffer | null, dataInLength: number, req?: DiskRequestInfo): Promise<ScsiResult> {
    if (this.alone) {
      await this.chain
      return this.disk.execute(cdb, dataOut, dataInLength, req)
    }
    const op = cdb[0]
    if (BUFFERED_WRITES.has(op)) {
      const range = mediumRange(cdb)
      const data = Buffer.from(dataOut ?? Buffer.alloc(0))
      if (!range || range.blocks === 0 || data.length % range.blocks !== 0) return this.disk.execute(cdb, dataOut, dataInLength, req)
      const n = ++this.writes
      const bs = data.length / range.blocks
      for (let i = 0; i < range.blocks; i++) this.overlay.set(range.lba + i, { data: data.subarray(i * bs, (i + 1) * bs), n })
      this.current.push({ cdb: Buffer.from(cdb), data, n })
      return { status: GOOD }
    }
    if (SYNC.has(op)) return { status: GOOD }
    if (!READ_ONLY.has(op)) return { status: CHECK_CONDITION, sense: senseData(invalidOpcode()) }
    const range = mediumRange(cdb)
    if (!range || this.overlay.size === 0) return this.disk.execute(cdb, dataOut, dataInLength, req)
    // the buffered blocks as they are now: a write-through finishing meanwhile drops them from the overlay
    const mine: [number, Buffer][] = []
    for (let i = 0; i < range.blocks; i++) {
      const b = this.overlay.get(range.lba + i)
      if (b) mine.push([i, b.data])
    }
    const r = await this.disk.execute(cdb, dataOut, dataInLength, req)
    if (r.status === GOOD && r.dataIn && mine.length) {
      const bs = Math.floor(r.dataIn.length / range.blocks)
      for (const [i, d] of mine) if (d.length === bs) d.copy(r.dataIn, i * bs)
    }
    return r
  }

  /** The epoch's end (VM paused): the writes since the last cut, in order. */
  cut(epoch: number): BufferedWrite[] {
    const w = this.current
    this.current = []
    this.pending.push({ epoch, writes: w })
    return w.map(({ cdb, data }) => ({ cdb, data }))
  }

  /** The backup acknowledged `epoch`: its writes and those before go to the disk, in order. */
  acked(epoch: number): Promise<void> {
    return this.enqueue(() => this.pending.length > 0 && this.pending[0].epoch <= epoch)
  }

  /**
   * The primary runs alone: every buffered write goes to the disk (those of epochs the backup may
   * have applied too: the same data at the same blocks, before anything newer), then commands pass
   * — to `to` from now on, if given (a follower's disk opened for writing as it goes live).
   */
  direct(to?: ScsiPath): Promise<void> {
    if (to) this.disk = to
    if (this.current.length) this.pending.push({ epoch: Infinity, writes: this.current })
    this.current = []
    this.alone = true
    return this.enqueue(() => this.pending.length > 0)
  }

  /**
   * Forgets every buffered write (a colo secondary taking the primary's state: the disk as the
   * primary wrote it is the truth). Only before write-through begins (no `acked`, no `direct`).
   */
  drop(): void {
    this.overlay.clear()
    this.current = []
    this.pending.length = 0
  }

  private enqueue(due: () => boolean): Promise<void> {
    this.chain = this.chain.then(async () => {
      while (due() && !this.failed) {
        const e = this.pending[0]
        for (const w of e.writes) {
          const r = await this.disk.execute(w.cdb, w.data, 0).catch((err: Error) => ({ status: -1, err }))
          if (r.status !== GOOD) {
            this.failed = new Error(`writing epoch ${e.epoch} through to the disk failed (status ${r.status}${'err' in r ? `: ${r.err.message}` : ''})`)
            return
          }
        }
        this.pending.shift()
        if (e.epoch !== Infinity) this.writtenThrough = e.epoch
        const last = e.writes.length ? e.writes[e.writes.length - 1].n : 0
        for (const [lba, b] of this.overlay) if (b.n <= last) this.overlay.delete(lba)
      }
    })
    return this.chain
  }
}

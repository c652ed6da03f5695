import { createHash } from 'node:crypto'
import { PAGE_SHIFT, PAGE_SIZE, type Memory } from '../../vm/memory.js'
import type { Machine } from '../../vm/machine.js'
import { decodeState, encodeState, type VmState } from '../../vm/state.js'
import { FtProtocolError } from '../protocol.js'
import { DiffBases, DiffCandidates, PageHistory, applyDiff, changedSegments } from './diff.js'
import { RecordWriter, decodeRecords, popcount } from './epoch-codec.js'

/**
 * The epoch machinery of checkpoint FT, reusable by any mode that syncs a backup from a paused
 * primary (checkpoint/SPEC.md "The epoch API"):
 *
 * - primary: `EpochCapture.take(m)` with the VM paused takes the pages dirty since the last take
 *   and the device state, copies the hot pages (PageHistory) into its arena and arms the others
 *   copy-on-write; after `m.resume()`, `TakenEpoch.stream()` yields the epoch's STATE payloads
 *   (the cold pages read while the VM runs), then `hash`/`instret` make its STATE_END.
 * - backup: `EpochApplier.accept(payload)` per STATE, `end(instret, hash)` at STATE_END applies
 *   the epoch to its memory image at once and whole (a partial epoch is never applied).
 */

/** STATE_END's hash of an epoch (TakenEpoch.hash) */
export function epochHash(epoch: number, device: Buffer): Buffer {
  const n = Buffer.alloc(8)
  n.writeDoubleLE(epoch)
  return createHash('sha256').update(n).update(device).digest()
}

/** pages per arena slab */
const SLAB_PAGES = 1024

/** Page copies for one epoch at a time: the hot pages copied in the stop, the cold ones the guest wrote first. Reused across epochs. */
class PageArena {
  private slabs: Buffer[] = [Buffer.allocUnsafe(SLAB_PAGES * PAGE_SIZE)]
  private used = 0
  /** page → slot + 1 in this epoch (0: none) */
  private readonly slot: Uint32Array
  private readonly touched: number[] = []

  constructor(pages: number) {
    this.slot = new Uint32Array(pages)
  }

  copy(mem: Memory, p: number): void {
    const i = this.used++
    const s = Math.floor(i / SLAB_PAGES)
    if (s === this.slabs.length) this.slabs.push(Buffer.allocUnsafe(SLAB_PAGES * PAGE_SIZE))
    const from = p << PAGE_SHIFT
    this.slabs[s].set(mem.bytes.subarray(from, from + PAGE_SIZE), (i % SLAB_PAGES) * PAGE_SIZE)
    this.slot[p] = i + 1
    this.touched.push(p)
  }

  get(p: number): Uint8Array | null {
    const s = this.slot[p]
    if (!s) return null
    const i = s - 1
    const at = (i % SLAB_PAGES) * PAGE_SIZE
    return this.slabs[Math.floor(i / SLAB_PAGES)].subarray(at, at + PAGE_SIZE)
  }

  reset(): void {
    for (const p of this.touched) this.slot[p] = 0
    this.touched.length = 0
    this.used = 0
  }
}

/** Figures of one epoch, as the primary saw it. */
export interface EpochFigures {
  epoch: number
  instret: number
  /** pages dirty in the epoch */
  dirty: number
  /** pages copied during the stop (hot) */
  stopped: number
  /** pages sent after the VM resumed (cold) */
  running: number
  /** cold pages the guest wrote before they were sent (copied on its first write) */
  cowCopies: number
  /** pages sent as diffs, and unchanged pages not sent */
  diffs: number
  same: number
  /** bytes of STATE payload */
  bytes: number
  /** what the pages would have cost whole */
  wholeBytes: number
}

export interface CaptureOptions {
  /** diffs for the pages the backup's feedback names (default true) */
  diff?: boolean
  /** the hot/cold split (default true: the modification history; false: every page cold) */
  history?: boolean
}

/** An epoch taken from a paused VM, to be streamed while it runs on. */
export interface TakenEpoch {
  readonly epoch: number
  readonly instret: number
  readonly state: VmState
  /** the STATE payloads (≤ 1 MiB each), reading the cold pages as it goes; between two payloads the VM runs */
  stream(between?: () => Promise<void>): AsyncGenerator<Buffer>
  /**
   * STATE_END's hash: SHA-256 of the epoch number (f64) and the encoded device state — the epoch's
   * identity (each frame has its own CRC; hashing every page cost the primary a tenth of its time)
   */
  readonly hash: Buffer
  readonly figures: EpochFigures
  /** the VM is going away: the copy-on-write hook off, the rest not streamed */
  abandon(): void
}

/** The primary's side of epochs (see the module). */
export class EpochCapture {
  private readonly arena: PageArena
  private readonly history: PageHistory
  readonly bases = new DiffBases()
  private epoch = 0
  private open: { abandon(): void } | null = null

  constructor(
    private readonly mem: Memory,
    private readonly o: CaptureOptions = {},
  ) {
    this.arena = new PageArena(mem.pages)
    this.history = new PageHistory(mem.pages)
  }

  get pages(): number {
    return this.mem.pages
  }

  /** epochs taken */
  get taken(): number {
    return this.epoch
  }

  /** The backup's diff candidates (a FEEDBACK payload's pages). */
  feedback(pages: number[]): void {
    if (this.o.diff !== false) this.bases.feedback(pages)
  }

  /**
   * With the VM paused: the epoch's dirty pages and device state; `writes` (the epoch's disk
   * writes, in order) and `writtenThrough` go in its first payload. The previous epoch must be
   * streamed (or abandoned) first.
   */
  take(m: Machine, o: { writes?: { cdb: Buffer; data: Buffer }[]; writtenThrough?: number } = {}): TakenEpoch {
    if (this.open) throw new Error('EpochCapture.take: the previous epoch is still being streamed')
    const mem = this.mem
    const dirty = mem.readAndClearDirty()
    const state = m.saveState()
    const epoch = ++this.epoch
    this.history.observe(dirty)
    const arena = this.arena
    arena.reset()
    const cold: number[] = []
    const hot: number[] = []
    for (const p of dirty) {
      if (this.o.history !== false && this.history.hot(p)) {
        arena.copy(mem, p)
        hot.push(p)
      } else cold.push(p)
    }
    let cowCopies = 0
    mem.armFirstWrite((p) => {
      arena.copy(mem, p)
      cowCopies++
    }, cold)
    const w = new RecordWriter()
    const device = encodeState(state)
    w.epoch(epoch, o.writtenThrough ?? 0)
    w.device(device)
    for (const x of o.writes ?? []) w.write(x.cdb, x.data)
    const digest = epochHash(epoch, device)
    const figures: EpochFigures = { epoch, instret: state.instret, dirty: dirty.length, stopped: hot.length, running: cold.length, cowCopies: 0, diffs: 0, same: 0, bytes: 0, wholeBytes: dirty.length * PAGE_SIZE }
    let closed = false
    const close = () => {
      if (closed) return
      closed = true
      mem.disarmFirstWrite()
      arena.reset()
      this.open = null
    }
    this.open = { abandon: close }
    const bases = this.bases
    const emit = (p: number, cur: Uint8Array) => {
      const d = bases.encode(p, cur)
      if (d === 'same') figures.same++
      else if (d === 'whole') w.page(p, cur)
      else {
        figures.diffs++
        w.diff(p, d.mask, d.segments)
      }
    }
    const taken: TakenEpoch = {
      epoch,
      instret: state.instret,
      state,
      hash: digest,
      figures,
      abandon: close,
      async *stream(between) {
        try {
          // the hot pages first: already copied
          for (const p of hot) emit(p, arena.get(p)!)
          for (let i = 0; i < cold.length; i++) {
            if (closed) return
            const p = cold[i]
            // read synchronously: RAM is the epoch's page while still armed, else the arena has it
            const copy = arena.get(p)
            if (copy) emit(p, copy)
            else {
              mem.disarmPage(p)
              emit(p, mem.bytes.subarray(p << PAGE_SHIFT, (p + 1) << PAGE_SHIFT))
            }
            if (i % 64 === 63) {
              yield* w.take()
              await between?.()
            }
          }
          if (closed) return
          figures.cowCopies = cowCopies
          figures.bytes = w.bytes
          yield* w.take(true)
        } finally {
          close()
        }
      },
    }
    return taken
  }

  /** Ends any epoch being streamed (the VM is going away or the peer is gone). */
  abandon(): void {
    this.open?.abandon()
  }
}

/** A complete epoch, applied on the backup. */
export interface AppliedEpoch {
  epoch: number
  instret: number
  writtenThrough: number
  /** the VM state without memory (memory is the applier's image) */
  state: VmState
  /** the epoch's disk writes, in order */
  writes: { cdb: Buffer; data: Buffer }[]
  pages: number
  diffs: number
}

/**
 * The backup's side of epochs (see the module): applies each complete epoch to `image` (guest
 * memory, as the primary's was at the epoch's end). Feeds the diff candidates as it goes.
 */
export class EpochApplier {
  private staged: { epoch: number; writtenThrough: number; device: Buffer | null; pages: Map<number, { data?: Buffer; mask?: bigint; segments?: Buffer }>; writes: { cdb: Buffer; data: Buffer }[] } | null = null
  private last = 0
  readonly candidates: DiffCandidates
  private readonly pages: number

  constructor(readonly image: Uint8Array) {
    this.pages = image.length / PAGE_SIZE
    this.candidates = new DiffCandidates(this.pages)
  }

  /** the last complete epoch applied (0: none) */
  get epoch(): number {
    return this.last
  }

  /** One STATE payload. A FtProtocolError when it is not a valid part of the next epoch. */
  accept(payload: Buffer): void {
    const records = decodeRecords(payload, this.pages)
    for (const r of records) {
      if (r.kind === 'epoch') {
        if (this.staged) throw new FtProtocolError('BadPayload', `checkpoint epoch ${r.epoch} begins inside epoch ${this.staged.epoch}`)
        if (r.epoch !== this.last + 1) throw new FtProtocolError('BadPayload', `checkpoint epoch ${r.epoch} follows epoch ${this.last}`)
        this.staged = { epoch: r.epoch, writtenThrough: r.writtenThrough, device: null, pages: new Map(), writes: [] }
        continue
      }
      const s = this.staged
      if (!s) throw new FtProtocolError('BadPayload', `a checkpoint ${r.kind} record before its epoch's EPOCH record`)
      if (r.kind === 'device') s.device = r.state
      else if (r.kind === 'write') s.writes.push(r)
      else if (s.pages.has(r.page)) throw new FtProtocolError('BadPayload', `page ${r.page} twice in epoch ${s.epoch}`)
      else s.pages.set(r.page, r.kind === 'page' ? { data: r.data } : { mask: r.mask, segments: r.segments })
    }
    if (!this.staged) throw new FtProtocolError('BadPayload', 'a checkpoint STATE payload outside an epoch')
  }

  /** STATE_END: checks the epoch and applies it whole. */
  end(instret: number, hash: Buffer): AppliedEpoch {
    const s = this.staged
    this.staged = null
    if (!s) throw new FtProtocolError('BadPayload', 'STATE_END outside a checkpoint epoch')
    if (!s.device) throw new FtProtocolError('BadPayload', `checkpoint epoch ${s.epoch} has no device state`)
    if (!epochHash(s.epoch, s.device).equals(hash)) throw new FtProtocolError('BadPayload', `checkpoint epoch ${s.epoch}: STATE_END's hash is not its epoch's`)
    let state: VmState
    try {
      state = decodeState(s.device, `checkpoint epoch ${s.epoch}'s device state`)
    } catch (e) {
      throw new FtProtocolError('BadPayload', (e as Error).message)
    }
    if (state.instret !== instret || state.memoryBytes !== this.image.length) throw new FtProtocolError('BadPayload', `checkpoint epoch ${s.epoch}: its state (instruction ${state.instret}, ${state.memoryBytes} bytes) does not match STATE_END (${instret}) or this VM`)
    let diffs = 0
    for (const [p, x] of s.pages) {
      const page = this.image.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)
      if (x.data) {
        this.candidates.observe(p, popcount(changedSegments(page, x.data)))
        page.set(x.data)
      } else {
        diffs++
        this.candidates.observe(p, popcount(x.mask!))
        applyDiff(page, x.mask!, x.segments!)
      }
    }
    this.last = s.epoch
    return { epoch: s.epoch, instret, writtenThrough: s.writtenThrough, state, writes: s.writes, pages: s.pages.size, diffs }
  }
}

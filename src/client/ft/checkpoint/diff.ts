import { SEGMENT, SEGMENTS, popcount } from './epoch-codec.js'

/**
 * Page diffs with the backup's feedback (checkpoint/SPEC "Diffs"): the backup compares each page it
 * receives with its previous copy in 64-byte segments; a page whose change stayed at most
 * SMALL_SEGMENTS segments for STREAK_EPOCHS epochs in a row becomes a candidate; the primary sends
 * a candidate as the segments that changed since the copy it last sent, when no more than
 * DIFF_MAX_SEGMENTS changed (else the whole page, which the backup judges again).
 */
export const SMALL_SEGMENTS = 8
export const STREAK_EPOCHS = 3
export const DIFF_MAX_SEGMENTS = 32

const WORDS = SEGMENT / 4

const words = (b: Uint8Array) => new Int32Array(b.buffer, b.byteOffset, b.length >> 2)

/** The mask of the 64-byte segments where `a` and `b` (two pages, 4-byte aligned) differ. */
export function changedSegments(a: Uint8Array, b: Uint8Array): bigint {
  const x = words(a)
  const y = words(b)
  let mask = 0n
  for (let s = 0; s < SEGMENTS; s++) {
    const o = s * WORDS
    for (let i = o; i < o + WORDS; i++) {
      if (x[i] !== y[i]) {
        mask |= 1n << BigInt(s)
        break
      }
    }
  }
  return mask
}

/** The changed segments of `cur` against `prev`, or null when none or more than `max` changed. */
export function diffPage(prev: Uint8Array, cur: Uint8Array, max = DIFF_MAX_SEGMENTS): { mask: bigint; segments: Buffer } | null {
  const mask = changedSegments(prev, cur)
  const n = popcount(mask)
  if (n === 0 || n > max) return null
  const segments = Buffer.allocUnsafe(n * SEGMENT)
  let at = 0
  for (let s = 0; s < SEGMENTS; s++) {
    if (mask & (1n << BigInt(s))) {
      segments.set(cur.subarray(s * SEGMENT, (s + 1) * SEGMENT), at)
      at += SEGMENT
    }
  }
  return { mask, segments }
}

/** Writes a diff's segments into `page` (4 KiB). */
export function applyDiff(page: Uint8Array, mask: bigint, segments: Uint8Array): void {
  let at = 0
  for (let s = 0; s < SEGMENTS; s++) {
    if (mask & (1n << BigInt(s))) {
      page.set(segments.subarray(at, at + SEGMENT), s * SEGMENT)
      at += SEGMENT
    }
  }
}

/**
 * The backup's side: per page, how many epochs in a row its change stayed small. `observe` each
 * page an epoch brings (the count of changed segments); `candidates()` is the set to feed back.
 */
export class DiffCandidates {
  private readonly streak: Uint8Array
  private readonly set = new Set<number>()
  /** the set changed since the last `take()` */
  changed = false

  constructor(pages: number) {
    this.streak = new Uint8Array(pages)
  }

  observe(page: number, segmentsChanged: number): void {
    if (segmentsChanged <= SMALL_SEGMENTS) {
      if (this.streak[page] < 255) this.streak[page]++
      if (this.streak[page] >= STREAK_EPOCHS && !this.set.has(page)) {
        this.set.add(page)
        this.changed = true
      }
    } else {
      this.streak[page] = 0
      if (this.set.delete(page)) this.changed = true
    }
  }

  get size(): number {
    return this.set.size
  }

  /** FEEDBACK's payload: u32 count, then that many u32 page numbers, ascending */
  take(): Buffer {
    this.changed = false
    const pages = [...this.set].sort((a, b) => a - b)
    const b = Buffer.alloc(4 + 4 * pages.length)
    b.writeUInt32LE(pages.length)
    pages.forEach((p, i) => b.writeUInt32LE(p, 4 + 4 * i))
    return b
  }
}

/** A FEEDBACK payload's pages, checked (the FtProtocolError's code is the caller's). */
export function decodeFeedback(b: Buffer, pages: number): number[] | string {
  if (b.length < 4) return 'FEEDBACK shorter than its count'
  const n = b.readUInt32LE(0)
  if (b.length !== 4 + 4 * n) return `FEEDBACK of ${b.length} bytes for ${n} pages`
  const out: number[] = []
  for (let i = 0; i < n; i++) {
    const p = b.readUInt32LE(4 + 4 * i)
    if (p >= pages) return `FEEDBACK names page ${p} of ${pages}`
    out.push(p)
  }
  return out
}

/**
 * The primary's side: the copy of each candidate page as last sent, which the next diff is taken
 * against. A page leaves the candidates (and its copy is dropped) when the backup's feedback
 * no longer names it.
 */
export class DiffBases {
  private readonly bases = new Map<number, Buffer>()
  private candidates = new Set<number>()

  feedback(pages: number[]): void {
    this.candidates = new Set(pages)
    for (const p of this.bases.keys()) if (!this.candidates.has(p)) this.bases.delete(p)
  }

  get size(): number {
    return this.candidates.size
  }

  /**
   * The page as it is to be sent: a diff against its base when it is a candidate with a base and
   * few segments changed; 'same' when nothing changed; else 'whole'. A candidate's base becomes `cur`.
   */
  encode(page: number, cur: Uint8Array): { mask: bigint; segments: Buffer } | 'same' | 'whole' {
    if (!this.candidates.has(page)) return 'whole'
    const base = this.bases.get(page)
    let out: { mask: bigint; segments: Buffer } | 'same' | 'whole' = 'whole'
    if (base) {
      const mask = changedSegments(base, cur)
      out = mask === 0n ? 'same' : (diffPage(base, cur) ?? 'whole')
      base.set(cur)
    } else this.bases.set(page, Buffer.from(cur))
    return out
  }
}

/**
 * The modification history (ft-architecture S2): per page, a shift register of the last 8 epochs
 * it was dirty in. A page dirty in at least HOT_OF_LAST of the HISTORY_EPOCHS epochs before this
 * one is hot: it is likely written again soon after the VM resumes, so it is copied during the stop
 * instead of being armed copy-on-write.
 */
export const HISTORY_EPOCHS = 4
export const HOT_OF_LAST = 2

export class PageHistory {
  private readonly bits: Uint8Array
  constructor(pages: number) {
    this.bits = new Uint8Array(pages)
  }

  /** this epoch's dirty pages: ages every page's history by one epoch */
  observe(dirty: readonly number[]): void {
    const b = this.bits
    for (let p = 0; p < b.length; p++) b[p] = (b[p] << 1) & 0xff
    for (const p of dirty) b[p] |= 1
  }

  /** hot by the epochs before the last `observe` */
  hot(page: number): boolean {
    let h = (this.bits[page] >> 1) & ((1 << HISTORY_EPOCHS) - 1)
    let n = 0
    for (; h; h &= h - 1) n++
    return n >= HOT_OF_LAST
  }
}

import { defineStruct } from '../../../disk-formats/struct.js'
import { PAGE_SIZE } from '../../vm/memory.js'
import { FtProtocolError } from '../protocol.js'

/**
 * The records an epoch's STATE payloads carry (checkpoint/SPEC section "Epoch records"). A STATE
 * payload is whole records, back to back; an epoch is its STATE payloads, then STATE_END.
 */
export const REC = { EPOCH: 1, DEVICE: 2, PAGE: 3, DIFF: 4, WRITE: 5 } as const

/** bytes of one diff segment: a page is 64 of them, one bit each in a DIFF record's mask */
export const SEGMENT = 64
export const SEGMENTS = PAGE_SIZE / SEGMENT

/** EPOCH: first record of an epoch */
export const EpochRec = defineStruct({
  kind: { offset: 0, type: 'u8' },
  reserved: { offset: 1, type: { bytes: 7 } },
  epoch: { offset: 8, type: 'f64' },
  /** every disk write of epochs up to this one is on the shared disk (the primary wrote it through) */
  writtenThrough: { offset: 16, type: 'f64' },
})
/** DEVICE: the VM state without memory (vm SPEC.md §VM state encoding), `length` bytes follow */
export const DeviceRec = defineStruct({
  kind: { offset: 0, type: 'u8' },
  reserved: { offset: 1, type: { bytes: 3 } },
  length: { offset: 4, type: 'u32' },
})
/** PAGE: a whole 4 KiB page follows */
export const PageRec = defineStruct({
  kind: { offset: 0, type: 'u8' },
  reserved: { offset: 1, type: { bytes: 3 } },
  page: { offset: 4, type: 'u32' },
})
/** DIFF: the segments of `mask` (bit i: bytes 64i … 64i+63), in order, follow */
export const DiffRec = defineStruct({
  kind: { offset: 0, type: 'u8' },
  reserved: { offset: 1, type: { bytes: 3 } },
  page: { offset: 4, type: 'u32' },
  mask: { offset: 8, type: 'u64' },
})
/** WRITE: a disk write the guest made in the epoch: its CDB (padded to 16), then `length` bytes of data */
export const WriteRec = defineStruct({
  kind: { offset: 0, type: 'u8' },
  cdbLength: { offset: 1, type: 'u8' },
  reserved: { offset: 2, type: 'u16' },
  length: { offset: 4, type: 'u32' },
  cdb: { offset: 8, type: { bytes: 16 } },
})

export type EpochRecord =
  | { kind: 'epoch'; epoch: number; writtenThrough: number }
  | { kind: 'device'; state: Buffer }
  | { kind: 'page'; page: number; data: Buffer }
  | { kind: 'diff'; page: number; mask: bigint; segments: Buffer }
  | { kind: 'write'; cdb: Buffer; data: Buffer }

export const popcount = (mask: bigint): number => {
  let n = 0
  for (let m = mask; m; m &= m - 1n) n++
  return n
}

const bad = (what: string) => new FtProtocolError('BadPayload', `checkpoint epoch: ${what}`)

/** The records of one STATE payload, checked against a VM of `pages` pages. Copies what it keeps. */
export function decodeRecords(p: Buffer, pages: number): EpochRecord[] {
  const out: EpochRecord[] = []
  let at = 0
  const need = (n: number, what: string) => {
    if (at + n > p.length) throw bad(`a ${what} record runs past its STATE payload (${p.length - at} of ${n} bytes)`)
  }
  const page = (n: number) => {
    if (n >= pages) throw bad(`page ${n} is beyond the VM's ${pages} pages`)
    return n
  }
  while (at < p.length) {
    switch (p[at]) {
      case REC.EPOCH: {
        need(EpochRec.size, 'EPOCH')
        const r = EpochRec.decode(p, at)
        if (!(Number.isSafeInteger(r.epoch) && r.epoch >= 1 && Number.isSafeInteger(r.writtenThrough) && r.writtenThrough >= 0 && r.writtenThrough < r.epoch)) throw bad(`EPOCH ${r.epoch} (written through ${r.writtenThrough}) is out of range`)
        out.push({ kind: 'epoch', epoch: r.epoch, writtenThrough: r.writtenThrough })
        at += EpochRec.size
        break
      }
      case REC.DEVICE: {
        need(DeviceRec.size, 'DEVICE')
        const n = DeviceRec.get(p, 'length', at)
        at += DeviceRec.size
        need(n, 'DEVICE')
        out.push({ kind: 'device', state: Buffer.from(p.subarray(at, at + n)) })
        at += n
        break
      }
      case REC.PAGE: {
        need(PageRec.size + PAGE_SIZE, 'PAGE')
        const n = page(PageRec.get(p, 'page', at))
        at += PageRec.size
        out.push({ kind: 'page', page: n, data: Buffer.from(p.subarray(at, at + PAGE_SIZE)) })
        at += PAGE_SIZE
        break
      }
      case REC.DIFF: {
        need(DiffRec.size, 'DIFF')
        const n = page(DiffRec.get(p, 'page', at))
        const mask = DiffRec.getBig(p, 'mask', at)
        if (mask === 0n) throw bad(`DIFF of page ${n} changes no segment`)
        const len = popcount(mask) * SEGMENT
        at += DiffRec.size
        need(len, 'DIFF')
        out.push({ kind: 'diff', page: n, mask, segments: Buffer.from(p.subarray(at, at + len)) })
        at += len
        break
      }
      case REC.WRITE: {
        need(WriteRec.size, 'WRITE')
        const r = WriteRec.decode(p, at)
        if (r.cdbLength < 6 || r.cdbLength > 16) throw bad(`WRITE with a ${r.cdbLength}-byte CDB`)
        at += WriteRec.size
        need(r.length, 'WRITE')
        out.push({ kind: 'write', cdb: r.cdb.subarray(0, r.cdbLength), data: Buffer.from(p.subarray(at, at + r.length)) })
        at += r.length
        break
      }
      default:
        throw bad(`unknown record kind ${p[at]} at byte ${at}`)
    }
  }
  return out
}

/**
 * Builds STATE payloads of whole records, each at most `limit` bytes (a record larger than the
 * limit goes alone in its payload): `take()` hands over the full ones.
 */
export class RecordWriter {
  private parts: Buffer[] = []
  private size = 0
  private done: Buffer[] = []
  bytes = 0

  constructor(private readonly limit = 1 << 20) {}

  private add(head: Buffer, body?: Uint8Array): void {
    const n = head.length + (body?.length ?? 0)
    if (this.size > 0 && this.size + n > this.limit) this.cut()
    this.parts.push(head)
    if (body) this.parts.push(Buffer.from(body.buffer, body.byteOffset, body.length))
    this.size += n
    this.bytes += n
  }

  epoch(epoch: number, writtenThrough: number): void {
    this.add(EpochRec.encode({ kind: REC.EPOCH, reserved: Buffer.alloc(7), epoch, writtenThrough }))
  }
  device(state: Buffer): void {
    this.add(DeviceRec.encode({ kind: REC.DEVICE, reserved: Buffer.alloc(3), length: state.length }), state)
  }
  /** `data` is copied now (the caller may reuse it) */
  page(page: number, data: Uint8Array): void {
    this.add(PageRec.encode({ kind: REC.PAGE, reserved: Buffer.alloc(3), page }), Buffer.from(data))
  }
  diff(page: number, mask: bigint, segments: Buffer): void {
    const head = Buffer.alloc(DiffRec.size)
    head[0] = REC.DIFF
    DiffRec.set(head, 'page', page)
    DiffRec.setBig(head, 'mask', mask)
    this.add(head, segments)
  }
  write(cdb: Buffer, data: Buffer): void {
    const c = Buffer.alloc(16)
    cdb.copy(c)
    this.add(WriteRec.encode({ kind: REC.WRITE, cdbLength: cdb.length, reserved: 0, length: data.length, cdb: c }), data)
  }

  private cut(): void {
    if (this.size === 0) return
    this.done.push(Buffer.concat(this.parts, this.size))
    this.parts = []
    this.size = 0
  }

  /** the payloads filled so far; `all`: the last, partly filled one too */
  take(all = false): Buffer[] {
    if (all) this.cut()
    const d = this.done
    this.done = []
    return d
  }
}

import type { Decoded, FieldTable, Struct } from '../../disk-formats/struct.js'

/**
 * The byte stream a VM's state is saved to (SPEC.md §VM state). Each device writes its registers
 * as one field table (so a register added to the table is saved with it) and its variable parts
 * (queues, requests) as counted, length-prefixed items. Little-endian throughout.
 */
export class StateWriter {
  private readonly parts: Buffer[] = []
  private length = 0

  private push(b: Buffer): void {
    this.parts.push(b)
    this.length += b.length
  }

  struct<T extends FieldTable>(s: Struct<T>, value: Decoded<T>): void {
    this.push(s.encode(value, Buffer.alloc(s.size)))
  }

  u32(n: number): void {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(n >>> 0)
    this.push(b)
  }

  /** u32 length, then the bytes (absent: length 0xffffffff) */
  bytes(b: Uint8Array | null | undefined): void {
    if (!b) return this.u32(0xffffffff)
    this.u32(b.length)
    this.push(Buffer.from(b.buffer, b.byteOffset, b.length))
  }

  /** u32 count, then each item as `each` writes it */
  list<T>(items: readonly T[], each: (w: StateWriter, item: T) => void): void {
    this.u32(items.length)
    for (const it of items) each(this, it)
  }

  /** a section: 4-character tag, u32 length, then what `body` writes */
  section(tag: string, body: (w: StateWriter) => void): void {
    const inner = new StateWriter()
    body(inner)
    const head = Buffer.alloc(8)
    head.write(tag.padEnd(4).slice(0, 4), 0, 'latin1')
    head.writeUInt32LE(inner.length, 4)
    this.push(head)
    for (const p of inner.parts) this.push(p)
  }

  finish(): Buffer {
    return Buffer.concat(this.parts, this.length)
  }
}

/** A saved state that cannot be read back: cut short, or not what this Tandem writes. */
export class StateError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'StateError'
  }
}

export class StateReader {
  private at = 0

  constructor(
    private readonly buf: Buffer,
    private readonly what = 'the VM state',
  ) {}

  private take(n: number): Buffer {
    if (n < 0 || this.at + n > this.buf.length) throw new StateError(`${this.what} is cut short at byte ${this.at} (needs ${n} more, has ${this.buf.length - this.at})`)
    const b = this.buf.subarray(this.at, this.at + n)
    this.at += n
    return b
  }

  struct<T extends FieldTable>(s: Struct<T>): Decoded<T> {
    return s.decode(this.take(s.size))
  }

  u32(): number {
    return this.take(4).readUInt32LE(0)
  }

  bytes(): Buffer | null {
    const n = this.u32()
    return n === 0xffffffff ? null : Buffer.from(this.take(n))
  }

  /** at most `max` items (a bound on what a damaged state could make us allocate) */
  list<T>(max: number, each: (r: StateReader) => T): T[] {
    const n = this.u32()
    if (n > max) throw new StateError(`${this.what}: a list of ${n} items where at most ${max} fit`)
    const out: T[] = []
    for (let i = 0; i < n; i++) out.push(each(this))
    return out
  }

  section<T>(tag: string, body: (r: StateReader) => T): T {
    const head = this.take(8)
    const got = head.toString('latin1', 0, 4)
    if (got !== tag.padEnd(4).slice(0, 4)) throw new StateError(`${this.what}: section '${got}' where '${tag}' belongs`)
    const inner = new StateReader(this.take(head.readUInt32LE(4)), `${this.what} (section ${tag})`)
    const v = body(inner)
    if (inner.at !== inner.buf.length) throw new StateError(`${this.what}: section ${tag} has ${inner.buf.length - inner.at} bytes more than its fields`)
    return v
  }

  /** a section that may be absent: its value, or undefined when the next section (or the end) is another */
  optionalSection<T>(tag: string, body: (r: StateReader) => T): T | undefined {
    if (this.buf.length - this.at < 8 || this.buf.toString('latin1', this.at, this.at + 4) !== tag.padEnd(4).slice(0, 4)) return undefined
    return this.section(tag, body)
  }

  get done(): boolean {
    return this.at === this.buf.length
  }
}

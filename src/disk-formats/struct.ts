import { StorageError } from './errors.js'

/**
 * A binary structure declared once as a table of fields; yields encode, decode and size
 * (DESIGN §11). Plain integer fields are little-endian (VMDK, the lock region); the `be` ones are
 * big-endian (network order: NBD, iSCSI). `u24be` is iSCSI's three-byte DataSegmentLength; `f64`
 * a little-endian IEEE 754 double (the VM event log's instruction count).
 */
export type IntType = 'u8' | 'u16' | 'u32' | 'u64' | 'u16be' | 'u24be' | 'u32be' | 'u64be'
export type NumberType = IntType | 'f64'
export type FieldType = NumberType | { bytes: number }

export type FieldTable = Record<string, { offset: number; type: FieldType }>

type FieldValue<T extends FieldType> = T extends NumberType ? number : Buffer

export type Decoded<T extends FieldTable> = { [K in keyof T]: FieldValue<T[K]['type']> }

function width(t: FieldType): number {
  switch (t) {
    case 'u8':
      return 1
    case 'u16':
    case 'u16be':
      return 2
    case 'u24be':
      return 3
    case 'u32':
    case 'u32be':
      return 4
    case 'u64':
    case 'u64be':
    case 'f64':
      return 8
    default:
      return t.bytes
  }
}

/** The names of a table's 64-bit fields (those `getBig`/`setBig` take). */
export type U64Fields<T extends FieldTable> = { [K in keyof T]: T[K]['type'] extends 'u64' | 'u64be' ? K : never }[keyof T]

export interface Struct<T extends FieldTable> {
  readonly fields: T
  /** bytes covered by the fields (the encoded buffer may be padded larger) */
  readonly size: number
  decode(buf: Buffer, at?: number): Decoded<T>
  encode(value: Decoded<T>, into?: Buffer, at?: number): Buffer
  /**
   * One field of the structure at `at`, without decoding the rest (hot paths: a wire header per
   * request). The caller has checked that the buffer holds the structure.
   */
  get<K extends keyof T>(buf: Buffer, name: K, at?: number): FieldValue<T[K]['type']>
  set<K extends keyof T>(buf: Buffer, name: K, value: FieldValue<T[K]['type']>, at?: number): void
  /** A 64-bit field exactly, all 64 bits (magic numbers, opaque cookies). */
  getBig(buf: Buffer, name: U64Fields<T>, at?: number): bigint
  setBig(buf: Buffer, name: U64Fields<T>, value: bigint, at?: number): void
}

type Reader = (buf: Buffer, o: number) => number | Buffer
type Writer = (buf: Buffer, o: number, v: number | Buffer) => void

/** u64 values as numbers: exact up to 2^53, U64_TOO_LARGE above. */
const saturate = (v: bigint): number => (v > BigInt(Number.MAX_SAFE_INTEGER) ? U64_TOO_LARGE : Number(v))
const unsaturate = (v: number): bigint => (v === U64_TOO_LARGE ? 0xffffffffffffffffn : BigInt(v))

function reader(t: FieldType): Reader {
  switch (t) {
    case 'u8':
      return (b, o) => b.readUInt8(o)
    case 'u16':
      return (b, o) => b.readUInt16LE(o)
    case 'u32':
      return (b, o) => b.readUInt32LE(o)
    case 'u64':
      return (b, o) => saturate(b.readBigUInt64LE(o))
    case 'u16be':
      return (b, o) => b.readUInt16BE(o)
    case 'u24be':
      return (b, o) => b.readUIntBE(o, 3)
    case 'u32be':
      return (b, o) => b.readUInt32BE(o)
    case 'u64be':
      return (b, o) => saturate(b.readBigUInt64BE(o))
    case 'f64':
      return (b, o) => b.readDoubleLE(o)
    default: {
      const n = t.bytes
      return (b, o) => Buffer.from(b.subarray(o, o + n))
    }
  }
}

function writer(t: FieldType): Writer {
  switch (t) {
    case 'u8':
      return (b, o, v) => void b.writeUInt8(v as number, o)
    case 'u16':
      return (b, o, v) => void b.writeUInt16LE(v as number, o)
    case 'u32':
      return (b, o, v) => void b.writeUInt32LE(v as number, o)
    case 'u64':
      return (b, o, v) => void b.writeBigUInt64LE(unsaturate(v as number), o)
    case 'u16be':
      return (b, o, v) => void b.writeUInt16BE(v as number, o)
    case 'u24be':
      return (b, o, v) => void b.writeUIntBE(v as number, o, 3)
    case 'u32be':
      return (b, o, v) => void b.writeUInt32BE(v as number, o)
    case 'u64be':
      return (b, o, v) => void b.writeBigUInt64BE(unsaturate(v as number), o)
    case 'f64':
      return (b, o, v) => void b.writeDoubleLE(v as number, o)
    default: {
      const n = t.bytes
      return (b, o, v) => void (v as Buffer).copy(b, o, 0, n)
    }
  }
}

export function defineStruct<T extends FieldTable>(fields: T, padTo = 0): Struct<T> {
  let size = 0
  for (const f of Object.values(fields)) size = Math.max(size, f.offset + width(f.type))
  const total = Math.max(size, padTo)
  const list = Object.entries(fields).map(([name, f]) => ({ name, offset: f.offset, type: f.type, read: reader(f.type), write: writer(f.type) }))
  const byName = new Map(list.map((f) => [f.name as keyof T, f]))
  const field = (name: keyof T) => byName.get(name)!
  const big = (name: keyof T) => {
    const f = field(name)
    if (f.type !== 'u64' && f.type !== 'u64be') throw new TypeError(`field '${String(name)}' is not 64-bit`)
    return f
  }
  return {
    fields,
    size,
    decode(buf, at = 0) {
      if (buf.length < at + size) {
        throw new StorageError('Corrupt', `structure truncated: need ${size} bytes, have ${buf.length - at}`)
      }
      const out: Record<string, number | Buffer> = {}
      for (const f of list) out[f.name] = f.read(buf, at + f.offset)
      return out as Decoded<T>
    },
    encode(value, into, at = 0) {
      const buf = into ?? Buffer.alloc(total)
      for (const f of list) f.write(buf, at + f.offset, (value as Record<string, number | Buffer>)[f.name])
      return buf
    },
    get(buf, name, at = 0) {
      const f = field(name)
      return f.read(buf, at + f.offset) as FieldValue<T[typeof name]['type']>
    },
    set(buf, name, value, at = 0) {
      const f = field(name)
      f.write(buf, at + f.offset, value)
    },
    getBig(buf, name, at = 0) {
      const f = big(name)
      return f.type === 'u64' ? buf.readBigUInt64LE(at + f.offset) : buf.readBigUInt64BE(at + f.offset)
    },
    setBig(buf, name, value, at = 0) {
      const f = big(name)
      if (f.type === 'u64') buf.writeBigUInt64LE(value, at + f.offset)
      else buf.writeBigUInt64BE(value, at + f.offset)
    },
  }
}

/**
 * Stands for any u64 above Number.MAX_SAFE_INTEGER. VMDK uses exactly one such value,
 * 0xFFFFFFFFFFFFFFFF (GD_AT_END); anything else that large is out of bounds for a file anyway.
 */
export const U64_TOO_LARGE = Number.MAX_SAFE_INTEGER + 1

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

/** The decoded value of a declared structure: `StructValue<typeof Header>`. */
export type StructValue<S> = S extends Struct<infer T> ? Decoded<T> : never

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
  /** Writes only the fields given into `into` (a header whose other fields stay as they are). */
  assign(into: Buffer, value: Partial<Decoded<T>>, at?: number): Buffer
}

type Field = { offset: number; type: FieldType }

/**
 * One field of `buf` (a struct at `at`). A hot path reads the few fields it needs this way, with
 * no decoded object. A `bytes` field is copied out; a u64 is exact up to 2^53 and U64_TOO_LARGE above.
 */
export function readField<F extends Field>(buf: Buffer, f: F, at = 0): FieldValue<F['type']> {
  const o = at + f.offset
  let v: number | Buffer
  switch (f.type) {
    case 'u8':
      v = buf.readUInt8(o)
      break
    case 'u32be':
      v = buf.readUInt32BE(o)
      break
    case 'u16':
      v = buf.readUInt16LE(o)
      break
    case 'u32':
      v = buf.readUInt32LE(o)
      break
    case 'u16be':
      v = buf.readUInt16BE(o)
      break
    case 'u24be':
      v = buf.readUIntBE(o, 3)
      break
    case 'f64':
      v = buf.readDoubleLE(o)
      break
    case 'u64':
    case 'u64be': {
      const big = f.type === 'u64' ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o)
      v = big > BigInt(Number.MAX_SAFE_INTEGER) ? U64_TOO_LARGE : Number(big)
      break
    }
    default:
      v = Buffer.from(buf.subarray(o, o + f.type.bytes))
  }
  return v as FieldValue<F['type']>
}

/** Writes one field of `buf` (a struct at `at`). */
export function writeField<F extends Field>(buf: Buffer, f: F, v: FieldValue<F['type']>, at = 0): void {
  const o = at + f.offset
  switch (f.type) {
    case 'u8':
      buf.writeUInt8(v as number, o)
      break
    case 'u32be':
      buf.writeUInt32BE(v as number, o)
      break
    case 'u16':
      buf.writeUInt16LE(v as number, o)
      break
    case 'u32':
      buf.writeUInt32LE(v as number, o)
      break
    case 'u16be':
      buf.writeUInt16BE(v as number, o)
      break
    case 'u24be':
      buf.writeUIntBE(v as number, o, 3)
      break
    case 'f64':
      buf.writeDoubleLE(v as number, o)
      break
    case 'u64':
    case 'u64be': {
      const big = v === U64_TOO_LARGE ? 0xffffffffffffffffn : BigInt(v as number)
      if (f.type === 'u64') buf.writeBigUInt64LE(big, o)
      else buf.writeBigUInt64BE(big, o)
      break
    }
    default:
      ;(v as Buffer).copy(buf, o, 0, f.type.bytes)
  }
}

export function defineStruct<T extends FieldTable>(fields: T, padTo = 0): Struct<T> {
  let size = 0
  for (const f of Object.values(fields)) size = Math.max(size, f.offset + width(f.type))
  const total = Math.max(size, padTo)
  const entries = Object.entries(fields)
  const big = (name: keyof T) => {
    const f = fields[name]
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
      for (const [name, f] of entries) out[name] = readField(buf, f, at)
      return out as Decoded<T>
    },
    encode(value, into, at = 0) {
      const buf = into ?? Buffer.alloc(total)
      for (const [name, f] of entries) writeField(buf, f, (value as Record<string, number | Buffer>)[name], at)
      return buf
    },
    assign(into, value, at = 0) {
      for (const name in value) writeField<Field>(into, fields[name], (value as Record<string, number | Buffer>)[name], at)
      return into
    },
    get(buf, name, at = 0) {
      return readField(buf, fields[name], at) as FieldValue<T[typeof name]['type']>
    },
    set(buf, name, value, at = 0) {
      writeField<Field>(buf, fields[name], value, at)
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

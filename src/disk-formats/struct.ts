import { StorageError } from './errors.js'

/**
 * A binary structure declared once as a table of fields; yields encode, decode and size
 * (DESIGN §11). Plain integer fields are little-endian (VMDK, the lock region); the `be` ones are
 * big-endian (network order: NBD, iSCSI). `u24be` is iSCSI's three-byte DataSegmentLength.
 */
export type IntType = 'u8' | 'u16' | 'u32' | 'u64' | 'u16be' | 'u24be' | 'u32be' | 'u64be'
export type FieldType = IntType | { bytes: number }

export type FieldTable = Record<string, { offset: number; type: FieldType }>

type FieldValue<T extends FieldType> = T extends IntType ? number : Buffer

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
      return 8
    default:
      return t.bytes
  }
}

export interface Struct<T extends FieldTable> {
  readonly fields: T
  /** bytes covered by the fields (the encoded buffer may be padded larger) */
  readonly size: number
  decode(buf: Buffer, at?: number): Decoded<T>
  encode(value: Decoded<T>, into?: Buffer, at?: number): Buffer
  /** Writes only the fields given into `into` (a header whose other fields stay as they are). */
  assign(into: Buffer, value: Partial<Decoded<T>>, at?: number): Buffer
}

type Field = { offset: number; type: FieldType }

/**
 * One field of `buf` (a struct at `at`). A hot path reads the few fields it needs this way, with
 * no decoded object. A `bytes` field is copied out.
 */
export function readField<F extends Field>(buf: Buffer, f: F, at = 0): FieldValue<F['type']> {
  const o = at + f.offset
  switch (f.type) {
    case 'u8':
      return buf.readUInt8(o) as FieldValue<F['type']>
    case 'u32be':
      return buf.readUInt32BE(o) as FieldValue<F['type']>
    case 'u16':
      return buf.readUInt16LE(o) as FieldValue<F['type']>
    case 'u32':
      return buf.readUInt32LE(o) as FieldValue<F['type']>
    case 'u16be':
      return buf.readUInt16BE(o) as FieldValue<F['type']>
    case 'u24be':
      return buf.readUIntBE(o, 3) as FieldValue<F['type']>
    case 'u64':
    case 'u64be': {
      // exact up to 2^53; anything above saturates to U64_TOO_LARGE
      const v = f.type === 'u64' ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o)
      return (v > BigInt(Number.MAX_SAFE_INTEGER) ? U64_TOO_LARGE : Number(v)) as FieldValue<F['type']>
    }
    default:
      return Buffer.from(buf.subarray(o, o + f.type.bytes)) as FieldValue<F['type']>
  }
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
  }
}

/**
 * Stands for any u64 above Number.MAX_SAFE_INTEGER. VMDK uses exactly one such value,
 * 0xFFFFFFFFFFFFFFFF (GD_AT_END); anything else that large is out of bounds for a file anyway.
 */
export const U64_TOO_LARGE = Number.MAX_SAFE_INTEGER + 1

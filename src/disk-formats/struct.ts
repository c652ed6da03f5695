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

export interface Struct<T extends FieldTable> {
  readonly fields: T
  /** bytes covered by the fields (the encoded buffer may be padded larger) */
  readonly size: number
  decode(buf: Buffer, at?: number): Decoded<T>
  encode(value: Decoded<T>, into?: Buffer, at?: number): Buffer
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
      for (const [name, f] of entries) {
        const o = at + f.offset
        switch (f.type) {
          case 'u8':
            out[name] = buf.readUInt8(o)
            break
          case 'u16':
            out[name] = buf.readUInt16LE(o)
            break
          case 'u32':
            out[name] = buf.readUInt32LE(o)
            break
          case 'u16be':
            out[name] = buf.readUInt16BE(o)
            break
          case 'u24be':
            out[name] = buf.readUIntBE(o, 3)
            break
          case 'u32be':
            out[name] = buf.readUInt32BE(o)
            break
          case 'f64':
            out[name] = buf.readDoubleLE(o)
            break
          case 'u64':
          case 'u64be': {
            // Values above 2^53 (e.g. GD_AT_END) decode as Infinity-free approximations are unsafe;
            // keep them exact where they fit and saturate to MAX_SAFE_INTEGER+1 otherwise.
            const v = f.type === 'u64' ? buf.readBigUInt64LE(o) : buf.readBigUInt64BE(o)
            out[name] = v > BigInt(Number.MAX_SAFE_INTEGER) ? U64_TOO_LARGE : Number(v)
            break
          }
          default:
            out[name] = Buffer.from(buf.subarray(o, o + f.type.bytes))
        }
      }
      return out as Decoded<T>
    },
    encode(value, into, at = 0) {
      const buf = into ?? Buffer.alloc(total)
      for (const [name, f] of entries) {
        const o = at + f.offset
        const v = (value as Record<string, number | Buffer>)[name]
        switch (f.type) {
          case 'u8':
            buf.writeUInt8(v as number, o)
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
          case 'u32be':
            buf.writeUInt32BE(v as number, o)
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
      return buf
    },
  }
}

/**
 * Stands for any u64 above Number.MAX_SAFE_INTEGER. VMDK uses exactly one such value,
 * 0xFFFFFFFFFFFFFFFF (GD_AT_END); anything else that large is out of bounds for a file anyway.
 */
export const U64_TOO_LARGE = Number.MAX_SAFE_INTEGER + 1

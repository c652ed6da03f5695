/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as iSCSI digests and sanlock use.
 * Slicing-by-8 (Kounavis and Berry, "A Systematic Approach to Building High Performance
 * Software-Based CRC Generators", 2005): table k maps a byte to its CRC contribution k bytes
 * further on, so eight bytes cost eight lookups and one step.
 */
/** The CRC of buf[from, to) (the whole buffer by default), continuing `crc`. */
export type Crc32c = (buf: Uint8Array, crc?: number, from?: number, to?: number) => number

/**
 * Builds the tables and returns the CRC function. Self-contained — it refers to nothing outside
 * its own body — so that a worker thread can run it from its source text (crc-worker.ts).
 */
export function makeCrc32c(): Crc32c {
  const t = new Int32Array(8 * 256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    t[n] = c
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 8; k++) {
      const prev = t[(k - 1) * 256 + n]
      t[k * 256 + n] = (prev >>> 8) ^ t[prev & 0xff]
    }
  }
  return function crc32c(buf: Uint8Array, crc = 0, from = 0, to = buf.length): number {
    let c = ~crc
    let i = from
    const n = to
    for (const end = n - ((n - i) & 7); i < end; i += 8) {
      const a = c ^ (buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24))
      c =
        t[1792 + (a & 0xff)] ^
        t[1536 + ((a >>> 8) & 0xff)] ^
        t[1280 + ((a >>> 16) & 0xff)] ^
        t[1024 + (a >>> 24)] ^
        t[768 + buf[i + 4]] ^
        t[512 + buf[i + 5]] ^
        t[256 + buf[i + 6]] ^
        t[buf[i + 7]]
    }
    for (; i < n; i++) c = t[(c ^ buf[i]) & 0xff] ^ (c >>> 8)
    return ~c >>> 0
  }
}

export const crc32c: Crc32c = makeCrc32c()

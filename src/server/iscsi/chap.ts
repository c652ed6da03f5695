import { createHash } from 'node:crypto'

/** CHAP response (RFC 1994 §4.1): MD5 over identifier, secret and challenge. Both sides use it. */
export function chapResponse(id: number, secret: string, challenge: Buffer): Buffer {
  return createHash('md5').update(Buffer.from([id])).update(secret, 'utf8').update(challenge).digest()
}

/** A CHAP binary value: "0x" hex or "0b" base64 (RFC 7143 §6.1); null when malformed. */
export function chapBinary(v: string | undefined): Buffer | null {
  if (!v) return null
  if (/^0x[0-9a-fA-F]+$/.test(v) && v.length % 2 === 0) return Buffer.from(v.slice(2), 'hex')
  if (/^0b[A-Za-z0-9+/=]+$/.test(v)) return Buffer.from(v.slice(2), 'base64')
  return null
}

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'

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

/** The secrets of a target that requires CHAP; with `mutual*`, the target proves itself in turn. */
export interface ChapSecrets {
  user: string
  secret: string
  mutualUser?: string
  mutualSecret?: string
}

/** Why the initiator failed CHAP (the login answers "authentication failure"). */
export class ChapFailure extends Error {}

/**
 * The target's side of CHAP in the security stage (RFC 7143 §12.1.3): a challenge for CHAP_A,
 * a check of CHAP_N/CHAP_R, and an answer to the initiator's own challenge (mutual CHAP).
 */
export class ChapTarget {
  private sent: { id: number; challenge: Buffer } | null = null
  /** the initiator answered our challenge rightly */
  authenticated = false

  constructor(private readonly secrets: ChapSecrets) {}

  /** Takes one login request's keys (`get`), appends our keys to `reply`; throws ChapFailure. */
  step(get: (k: string) => string | undefined, reply: [string, string][]): void {
    const chap = this.secrets
    const algorithms = get('CHAP_A')
    if (algorithms !== undefined) {
      if (!algorithms.split(',').includes('5')) throw new ChapFailure(`no supported CHAP algorithm in '${algorithms}' (MD5, 5)`)
      this.sent = { id: randomBytes(1)[0], challenge: randomBytes(16) }
      reply.push(['CHAP_A', '5'], ['CHAP_I', String(this.sent.id)], ['CHAP_C', '0x' + this.sent.challenge.toString('hex')])
    }
    if (get('CHAP_R') === undefined) return
    const r = chapBinary(get('CHAP_R'))
    if (!this.sent || !r) throw new ChapFailure('CHAP_R without a challenge, or malformed')
    const want = chapResponse(this.sent.id, chap.secret, this.sent.challenge)
    if (get('CHAP_N') !== chap.user || r.length !== want.length || !timingSafeEqual(r, want)) throw new ChapFailure('wrong CHAP name or response')
    // mutual CHAP: the initiator challenges us in turn
    const ci = get('CHAP_I')
    const cc = chapBinary(get('CHAP_C'))
    if (ci !== undefined || cc) {
      if (!chap.mutualUser || !chap.mutualSecret) throw new ChapFailure('mutual CHAP asked, but no target secret is configured')
      if (!cc || !/^\d+$/.test(ci ?? '') || Number(ci) > 255) throw new ChapFailure('malformed mutual CHAP challenge')
      if (cc.equals(this.sent.challenge)) throw new ChapFailure('the initiator reflected our challenge')
      reply.push(['CHAP_N', chap.mutualUser], ['CHAP_R', '0x' + chapResponse(Number(ci), chap.mutualSecret, cc).toString('hex')])
    }
    this.authenticated = true
  }
}

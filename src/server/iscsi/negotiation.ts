/** Our own limits, declared at login. */
export const TARGET_MAX_RECV = 262144
const TARGET_MAX_BURST = 1048576
export const TARGET_FIRST_BURST = 262144

/** Operational values negotiated at login (RFC 7143 §13), with their defaults. */
export interface Params {
  /** what the initiator can receive: our Data-In size */
  maxRecvDataSegmentLength: number
  maxBurstLength: number
  firstBurstLength: number
  initialR2T: boolean
  immediateData: boolean
  /** CRC32C digests, in force from the first PDU after the login phase */
  headerDigest: boolean
  dataDigest: boolean
}

export const defaultParams = (): Params => ({
  maxRecvDataSegmentLength: 8192,
  maxBurstLength: 262144,
  firstBurstLength: 65536,
  initialR2T: true,
  immediateData: true,
  headerDigest: false,
  dataDigest: false,
})

/** Keys of the login that are not negotiated here (names, the session type, authentication). */
export const notNegotiated = (k: string) => ['InitiatorName', 'SessionType', 'TargetName', 'AuthMethod', 'InitiatorAlias'].includes(k) || k.startsWith('CHAP_')

/** Our answer to the initiator's offer `k=v`; what is agreed is recorded in `p`. */
export function negotiate(p: Params, k: string, v: string): string {
  const num = (max: number) => Math.min(Number(v) || 0, max)
  // the first of the initiator's choices that we support
  const digest = () => v.split(',').find((x) => x === 'None' || x === 'CRC32C')
  switch (k) {
    case 'HeaderDigest': {
      const pick = digest()
      p.headerDigest = pick === 'CRC32C'
      return pick ?? 'Reject'
    }
    case 'DataDigest': {
      const pick = digest()
      p.dataDigest = pick === 'CRC32C'
      return pick ?? 'Reject'
    }
    case 'MaxRecvDataSegmentLength':
      p.maxRecvDataSegmentLength = Math.max(512, Math.min(Number(v) || 8192, 16777215))
      return String(TARGET_MAX_RECV)
    case 'MaxBurstLength':
      p.maxBurstLength = num(TARGET_MAX_BURST)
      return String(p.maxBurstLength)
    case 'FirstBurstLength':
      p.firstBurstLength = num(TARGET_FIRST_BURST)
      return String(p.firstBurstLength)
    case 'InitialR2T':
      p.initialR2T = v === 'Yes' // OR: Yes if either says Yes; we are content with No
      return p.initialR2T ? 'Yes' : 'No'
    case 'ImmediateData':
      p.immediateData = v === 'Yes' // AND
      return p.immediateData ? 'Yes' : 'No'
    case 'MaxConnections':
      return '1'
    case 'MaxOutstandingR2T':
      return '1'
    case 'ErrorRecoveryLevel':
      return '0'
    case 'DataPDUInOrder':
    case 'DataSequenceInOrder':
      return 'Yes'
    case 'DefaultTime2Wait':
    case 'DefaultTime2Retain':
      return String(num(3600))
    case 'IFMarker':
    case 'OFMarker':
      return 'No'
    default:
      return 'NotUnderstood'
  }
}

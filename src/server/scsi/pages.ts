import type { CopyManager } from './extended-copy.js'
import { ATOMIC_ALIGNMENT, BLOCK, MAX_ATOMIC_BLOCKS, MAX_CAW_BLOCKS, MAX_TRANSFER_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS } from './limits.js'

/**
 * The data pages of INQUIRY (standard data, SPC-4 6.6.2; vital product data, SPC-4 7.8 and
 * SBC-3 6.6) and MODE SENSE (SPC-4 7.5). Callers check page codes against VPD_PAGES and MODE_PAGES.
 */

/** INQUIRY's names of the unit. */
export interface Identity {
  readonly vendor: string
  readonly product: string
  readonly revision: string
  readonly serial: string
  /** the NAA designation descriptor of VPD page 0x83 (binary, LU, NAA, 16 bytes) */
  readonly naa: Buffer
}

/** what the pages describe */
export interface Described {
  readonly identity: Identity
  readonly blocks: number
  readonly readOnly: boolean
  readonly copies: CopyManager
  /** EXTENDED COPY and RECEIVE COPY RESULTS with their service actions, for VPD page 0x8F */
  readonly copyCommands: readonly (readonly [number, readonly number[]])[]
}

export const VPD_PAGES = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2] as const
const CACHING = 0x08
const CONTROL = 0x0a
const ALL_PAGES = 0x3f
export const MODE_PAGES = [CACHING, CONTROL, ALL_PAGES] as const

const pad = (s: string, n: number) => Buffer.from(s.padEnd(n).slice(0, n), 'ascii')

/** A designation descriptor (binary, LU, NAA) of 16 bytes naming the unit by a hash of its serial. */
export function naaDesignator(hash: Buffer): Buffer {
  // NAA 6 (IEEE registered extended), locally administered OUI 0x02:00:00 plus the hash.
  const naa = Buffer.alloc(16)
  naa[0] = 0x60 | 0x02
  hash.copy(naa, 3, 0, 13)
  return Buffer.concat([Buffer.from([0x01, 0x03, 0x00, 16]), naa])
}

export function standardInquiry(id: Identity): Buffer {
  const d = Buffer.alloc(96)
  d[0] = 0x00 // direct-access block device
  d[2] = 0x06 // SPC-4
  d[3] = 0x12 // HISUP, response data format 2
  d[4] = d.length - 5
  d[5] = 0x08 // 3PC: third-party copy (EXTENDED COPY)
  d[7] = 0x02 // CMDQUE
  pad(id.vendor, 8).copy(d, 8)
  pad(id.product, 16).copy(d, 16)
  pad(id.revision, 4).copy(d, 32)
  // version descriptors (SPC-4 table 142): SAM-5, iSCSI, SPC-4, SBC-3
  ;[0x00a0, 0x0960, 0x0460, 0x04c0].forEach((v, i) => d.writeUInt16BE(v, 58 + i * 2))
  return d
}

/** A VPD page; `page` is one of VPD_PAGES. */
export function vpdPage(u: Described, page: (typeof VPD_PAGES)[number]): Buffer {
  const body = vpdBody(u, page)
  const h = Buffer.alloc(4)
  h[1] = page
  h.writeUInt16BE(body.length, 2)
  return Buffer.concat([h, body])
}

function vpdBody(u: Described, page: (typeof VPD_PAGES)[number]): Buffer {
  switch (page) {
    case 0x00:
      return Buffer.from(VPD_PAGES)
    case 0x80:
      return Buffer.from(u.identity.serial, 'ascii')
    case 0x8f:
      return u.copies.thirdPartyCopyVpd(u.copyCommands)
    case 0x83: {
      const t10id = Buffer.concat([pad(u.identity.vendor, 8), Buffer.from(u.identity.serial, 'ascii')])
      const t10 = Buffer.concat([Buffer.from([0x02, 0x01, 0x00, t10id.length]), t10id]) // ASCII, LU, T10 vendor id
      return Buffer.concat([u.identity.naa, t10])
    }
    case 0xb0: {
      const b = Buffer.alloc(0x3c)
      b[0] = 0x00 // WSNZ=0: WRITE SAME of zero blocks writes to the end of the medium
      b[1] = MAX_CAW_BLOCKS
      b.writeUInt16BE(128, 2) // optimal transfer granularity: one 64 KiB grain
      b.writeUInt32BE(MAX_TRANSFER_BLOCKS, 4)
      b.writeUInt32BE(2048, 8) // optimal transfer: 1 MiB
      b.writeUInt32BE(MAX_TRANSFER_BLOCKS, 16) // maximum unmap LBA count
      b.writeUInt32BE(MAX_UNMAP_DESCRIPTORS, 20)
      b.writeUInt32BE(128, 24) // optimal unmap granularity: a grain
      b.writeBigUInt64BE(BigInt(MAX_WRITE_SAME_BLOCKS), 32)
      b.writeUInt32BE(MAX_ATOMIC_BLOCKS, 40) // maximum atomic transfer length
      b.writeUInt32BE(ATOMIC_ALIGNMENT, 44) // atomic alignment
      b.writeUInt32BE(ATOMIC_ALIGNMENT, 48) // atomic transfer length granularity
      return b
    }
    case 0xb1: {
      const b = Buffer.alloc(0x3c)
      b.writeUInt16BE(1, 0) // non-rotating medium
      return b
    }
    case 0xb2: {
      const b = Buffer.alloc(4)
      b[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
      b[2] = 0x02 // thin provisioned
      return b
    }
  }
}

export interface ModeSense {
  six: boolean
  /** DBD: no block descriptor */
  dbd: boolean
  /** page control: 0 current, 1 changeable, 2 default (3, saved, is refused by the caller) */
  pc: number
  page: (typeof MODE_PAGES)[number]
}

/** MODE SENSE(6/10) parameter data: header, block descriptor unless DBD, the pages asked for. */
export function modeSense(u: Described, m: ModeSense): Buffer {
  const changeable = m.pc === 1
  const pages: Buffer[] = []
  if (m.page === CACHING || m.page === ALL_PAGES) {
    const p = Buffer.alloc(20)
    p[0] = CACHING
    p[1] = 18
    if (!changeable) p[2] = 0x04 // WCE: a write-back cache (flush is SYNCHRONIZE CACHE)
    pages.push(p)
  }
  if (m.page === CONTROL || m.page === ALL_PAGES) {
    const p = Buffer.alloc(12)
    p[0] = CONTROL
    p[1] = 10
    if (!changeable) p[2] = 0x02 // GLTSD
    if (!changeable) p[5] = 0x40 // TAS: a command aborted by another nexus (PREEMPT AND ABORT) answers TASK ABORTED
    pages.push(p)
  }
  const bd = Buffer.alloc(m.dbd ? 0 : 8)
  if (!m.dbd) {
    bd.writeUInt32BE(Math.min(u.blocks, 0xffffffff), 0)
    bd.writeUIntBE(BLOCK, 5, 3)
  }
  const body = Buffer.concat([bd, ...pages])
  const hdr = Buffer.alloc(m.six ? 4 : 8)
  const wp = u.readOnly ? 0x80 : 0
  if (m.six) {
    hdr[0] = hdr.length - 1 + body.length
    hdr[2] = wp | 0x10 // DPOFUA
    hdr[3] = bd.length
  } else {
    hdr.writeUInt16BE(hdr.length - 2 + body.length, 0)
    hdr[3] = wp | 0x10
    hdr.writeUInt16BE(bd.length, 6)
  }
  return Buffer.concat([hdr, body])
}

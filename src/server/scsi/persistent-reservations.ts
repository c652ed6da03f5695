import * as C from './constants.js'
import { invalidField, invalidParameter, parameterLength, SenseError } from './sense.js'

/** Reservation types (SPC-4 table 172). */
export const WRITE_EXCLUSIVE = 1
export const EXCLUSIVE_ACCESS = 3
export const WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 5
export const EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 6
export const WRITE_EXCLUSIVE_ALL_REGISTRANTS = 7
export const EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 8
const TYPES = new Set([1, 3, 5, 6, 7, 8])
const allRegistrants = (t: number) => t === WRITE_EXCLUSIVE_ALL_REGISTRANTS || t === EXCLUSIVE_ACCESS_ALL_REGISTRANTS
const registrantsOnly = (t: number) => t === WRITE_EXCLUSIVE_REGISTRANTS_ONLY || t === EXCLUSIVE_ACCESS_REGISTRANTS_ONLY
const exclusiveAccess = (t: number) => t === EXCLUSIVE_ACCESS || t === EXCLUSIVE_ACCESS_REGISTRANTS_ONLY || t === EXCLUSIVE_ACCESS_ALL_REGISTRANTS

export type Access = 'read' | 'write' | 'other'

export class Conflict extends Error {}

/** PERSISTENT RESERVE IN's CDB: service action and allocation length. */
export interface PrIn {
  sa: number
  alloc: number
}

/** PERSISTENT RESERVE OUT's CDB: service action, scope, type, parameter list length. */
export interface PrOut {
  sa: number
  scope: number
  type: number
  plen: number
}

/**
 * Persistent reservations of one logical unit, per I_T nexus (`name,i,0xISID`). They survive
 * nexus loss and LUN resets, unlike RESERVE(6). APTPL is not offered (PTPL_C = 0).
 */
export class PersistentReservations {
  private readonly keys = new Map<string, bigint>()
  private holder: string | null = null
  private type = 0
  private generation = 0

  /**
   * `notify(nexus, asc)`: a unit attention for another I_T nexus (preempted, released, cleared).
   * Settable: the reservations outlive a LogicalUnit that a target closes when its last session
   * ends, and the next LogicalUnit of the same disk takes them over.
   */
  constructor(public notify: (nexus: string, asc: C.AscName) => void = () => {}) {}

  get active(): boolean {
    return this.keys.size > 0 || this.holder !== null
  }

  private isHolder(nexus: string): boolean {
    if (!this.type) return false
    return allRegistrants(this.type) ? this.keys.has(nexus) : this.holder === nexus
  }

  /** Does a command of this kind from `nexus` conflict with the reservation (SPC-4 table 56)? */
  conflicts(nexus: string, access: Access): boolean {
    if (!this.type || access === 'other' || this.isHolder(nexus)) return false
    const registered = this.keys.has(nexus)
    if (registrantsOnly(this.type) || allRegistrants(this.type)) {
      if (registered) return false
      return access === 'write' || exclusiveAccess(this.type)
    }
    return access === 'write' || this.type === EXCLUSIVE_ACCESS
  }

  in({ sa, alloc }: PrIn): Buffer {
    let d: Buffer
    switch (sa) {
      case 0x00: {
        // READ KEYS
        const keys = [...this.keys.values()]
        d = Buffer.alloc(8 + 8 * keys.length)
        d.writeUInt32BE(this.generation, 0)
        d.writeUInt32BE(8 * keys.length, 4)
        keys.forEach((k, i) => d.writeBigUInt64BE(k, 8 + 8 * i))
        break
      }
      case 0x01: {
        // READ RESERVATION
        d = Buffer.alloc(this.type ? 24 : 8)
        d.writeUInt32BE(this.generation, 0)
        if (this.type) {
          d.writeUInt32BE(16, 4)
          d.writeBigUInt64BE(allRegistrants(this.type) ? 0n : this.keys.get(this.holder!) ?? 0n, 8)
          d[21] = this.type
        }
        break
      }
      case 0x02: {
        // REPORT CAPABILITIES
        d = Buffer.alloc(8)
        d.writeUInt16BE(8, 0)
        d[2] = 0x10 // CRH: RESERVE(6) conflicts while a persistent reservation exists
        d[3] = 0x80 // TMV: the type mask is valid
        d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02 // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
        d[5] = 0x01 // EX_AC_AR
        break
      }
      case 0x03: {
        // READ FULL STATUS
        const descs = [...this.keys.entries()].map(([nexus, key]) => {
          const tid = transportId(nexus)
          const b = Buffer.alloc(24 + tid.length)
          b.writeBigUInt64BE(key, 0)
          b[12] = 0x02 | (this.isHolder(nexus) ? 0x01 : 0) // ALL_TG_PT, R_HOLDER
          if (this.isHolder(nexus)) b[13] = this.type
          b.writeUInt16BE(1, 18) // relative target port identifier
          b.writeUInt32BE(tid.length, 20)
          tid.copy(b, 24)
          return b
        })
        const body = Buffer.concat(descs)
        d = Buffer.alloc(8)
        d.writeUInt32BE(this.generation, 0)
        d.writeUInt32BE(body.length, 4)
        d = Buffer.concat([d, body])
        break
      }
      default:
        throw invalidField(1)
    }
    return d.subarray(0, Math.min(d.length, alloc))
  }

  /**
   * PERSISTENT RESERVE OUT; a Conflict becomes RESERVATION CONFLICT status. Returns the I_T
   * nexuses whose registrations PREEMPT or PREEMPT AND ABORT removed (whose task sets PREEMPT AND
   * ABORT aborts: SPC-4, "Preempting persistent reservations and registration handling"), empty
   * for the other service actions.
   */
  out({ sa, scope, type, plen }: PrOut, data: Buffer, nexus: string): string[] {
    if (plen !== 24) throw parameterLength()
    if (data.length < 24) throw parameterLength()
    const key = data.readBigUInt64BE(0)
    const saKey = data.readBigUInt64BE(8)
    const flags = data[20]
    if (flags & 0x01) throw invalidParameter(20) // APTPL: persistence through power loss is not offered
    if (flags & 0x08) throw invalidParameter(20) // SPEC_I_PT
    const mine = this.keys.get(nexus)
    const needsType = sa === 0x01 || sa === 0x02 || sa === 0x04 || sa === 0x05
    if (needsType && (scope !== 0 || !TYPES.has(type))) throw invalidField(2)
    switch (sa) {
      case 0x00: // REGISTER
      case 0x06: {
        // REGISTER AND IGNORE EXISTING KEY
        if (sa === 0x00 && (mine ?? 0n) !== key) throw new Conflict()
        if (mine === undefined && saKey === 0n) return []
        if (saKey === 0n) this.unregister(nexus)
        else this.keys.set(nexus, saKey)
        this.generation++
        return []
      }
      case 0x01: {
        // RESERVE
        if (mine === undefined || mine !== key) throw new Conflict()
        if (!this.type) {
          this.holder = nexus
          this.type = type
          return []
        }
        if (this.isHolder(nexus) && this.type === type) return []
        throw new Conflict()
      }
      case 0x02: {
        // RELEASE
        if (mine === undefined || mine !== key) throw new Conflict()
        if (!this.type || !this.isHolder(nexus)) return []
        if (this.type !== type) throw new SenseError(C.ILLEGAL_REQUEST, 'INVALID_RELEASE_OF_PERSISTENT_RESERVATION')
        // registrants-only and all-registrants reservations: the other registrants are told (SPC-4 5.13.11.2)
        if (type >= 5) this.tellOthers(nexus, 'RESERVATIONS_RELEASED')
        this.holder = null
        this.type = 0
        return []
      }
      case 0x03: {
        // CLEAR
        if (mine === undefined || mine !== key) throw new Conflict()
        this.tellOthers(nexus, 'RESERVATIONS_PREEMPTED')
        this.keys.clear()
        this.holder = null
        this.type = 0
        this.generation++
        return []
      }
      case 0x04:
      case 0x05: {
        // PREEMPT (AND ABORT)
        if (mine === undefined || mine !== key) throw new Conflict()
        if (this.type && allRegistrants(this.type) && saKey === 0n) {
          const preempted = [...this.keys.keys()].filter((n) => n !== nexus)
          for (const n of preempted) this.preempt(n)
          this.holder = nexus
          this.type = type
          this.generation++
          return preempted
        }
        if (saKey === 0n) throw invalidParameter(8)
        const holderKey = this.type && !allRegistrants(this.type) ? this.keys.get(this.holder!) : undefined
        const victims = [...this.keys.entries()].filter(([, k]) => k === saKey).map(([n]) => n)
        if (holderKey !== undefined && holderKey === saKey) {
          const preempted = victims.filter((n) => n !== nexus)
          for (const n of preempted) this.preempt(n)
          this.holder = nexus
          this.type = type
          this.generation++
          return preempted
        }
        if (victims.length === 0) throw new Conflict()
        for (const n of victims) {
          this.unregister(n)
          if (n !== nexus) this.notify(n, 'REGISTRATIONS_PREEMPTED')
        }
        this.generation++
        return victims
      }
      default:
        throw invalidField(1)
    }
  }

  private preempt(nexus: string): void {
    this.keys.delete(nexus)
    this.notify(nexus, 'REGISTRATIONS_PREEMPTED')
  }

  private tellOthers(nexus: string, asc: C.AscName): void {
    for (const n of this.keys.keys()) if (n !== nexus) this.notify(n, asc)
  }

  private unregister(nexus: string): void {
    this.keys.delete(nexus)
    if (!this.type) return
    if (allRegistrants(this.type)) {
      if (this.keys.size === 0) {
        this.holder = null
        this.type = 0
      }
    } else if (this.holder === nexus) {
      this.holder = null
      this.type = 0
    }
  }
}

/** iSCSI TransportID, format 01: name ",i,0x" ISID, NUL-terminated, padded to 4 (SPC-4 7.6.4.6). */
function transportId(nexus: string): Buffer {
  const name = Buffer.from(nexus + '\0', 'utf8')
  const len = Math.ceil(name.length / 4) * 4
  const b = Buffer.alloc(4 + len)
  b[0] = 0x40 | 0x05
  b.writeUInt16BE(len, 2)
  name.copy(b, 4)
  return b
}

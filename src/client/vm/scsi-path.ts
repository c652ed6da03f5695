import { IQN_PREFIX } from '../../server/datastore/names.js'
import { createHash } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import type { LogicalUnit, ScsiResult } from '../../server/scsi/index.js'
import type { IscsiInitiator } from '../transport/iscsi/index.js'

export type { ScsiResult }

/**
 * How the VM's SCSI HBA reaches its disk: the guest's CDBs, unchanged, and their outcome
 * (status, data-in, sense). An in-process LogicalUnit (logicalUnitPath) or a session with a
 * target (initiatorPath), where the guest's reservations, COMPARE AND WRITE and the access list
 * act on the real LU.
 */
export interface ScsiPath {
  /** capacity in the LU's logical blocks (the HBA's capacity register) */
  readonly blocks: number
  /**
   * `dataOut` for a command that writes; `dataInLength`: the bytes the guest's buffer takes;
   * `req`: which of the guest's requests it is (the HBA passes it; a fault-tolerant pair's paths use it)
   */
  execute(cdb: Buffer, dataOut: Buffer | null, dataInLength: number, req?: DiskRequestInfo): Promise<ScsiResult>
}

/** A guest disk request as the HBA numbers it. */
export interface DiskRequestInfo {
  /** its number: the HBA's submitted count before it (u32, wraps) */
  seq: number
  /** the instruction count at which the guest submitted it */
  at: number
}

const READ_OPCODES = new Set([0x08, 0x28, 0xa8, 0x88])
const WRITE_OPCODES = new Set([0x0a, 0x2a, 0xaa, 0x8a, 0x2e, 0xae, 0x8e, 0x41, 0x93, 0x89])

/**
 * The blocks a READ or WRITE-type CDB addresses (READ/WRITE 6, 10, 12, 16, WRITE AND VERIFY, WRITE
 * SAME, COMPARE AND WRITE), or null for any other command.
 */
export function mediumRange(cdb: Buffer): { write: boolean; lba: number; blocks: number } | null {
  const op = cdb[0]
  const write = WRITE_OPCODES.has(op)
  if (!write && !READ_OPCODES.has(op)) return null
  if (op === 0x08 || op === 0x0a) {
    if (cdb.length < 6) return null
    return { write, lba: ((cdb[1] & 0x1f) << 16) | (cdb[2] << 8) | cdb[3], blocks: cdb[4] === 0 ? 256 : cdb[4] }
  }
  const group = op >> 5
  if (cdb.length < (group === 4 ? 16 : group === 5 ? 12 : 10)) return null
  if (op === 0x89) return { write, lba: Number(cdb.readBigUInt64BE(2)), blocks: cdb[13] }
  if (group === 4) return { write, lba: Number(cdb.readBigUInt64BE(2)), blocks: cdb.readUInt32BE(10) }
  if (group === 5) return { write, lba: cdb.readUInt32BE(2), blocks: cdb.readUInt32BE(6) }
  return { write, lba: cdb.readUInt32BE(2), blocks: cdb.readUInt16BE(7) }
}

/** A VM's own iSCSI name is this plus its name (DESIGN §8: the per-VM storage identity). */
export const VM_IQN_PREFIX = `${IQN_PREFIX}vm:`
/** The identity of a VM run with neither --name nor --initiator-name. */
export const ANONYMOUS_VM_IQN = `${IQN_PREFIX}vm`

/** `iqn.2026-11.local.tandem:vm:<name>`; the name in the characters an iSCSI name allows (RFC 3722). */
export function vmInitiatorName(name: string): string {
  if (!/^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$/.test(name)) {
    throw new StorageError('InvalidArgument', `invalid VM name '${name}' (1 to 64 of a-z, 0-9, '.', '-'; it becomes the iSCSI name ${VM_IQN_PREFIX}<name>)`)
  }
  return VM_IQN_PREFIX + name
}

/** An iSCSI name as RFC 7143 §4.2.7 writes them: iqn., eui. or naa., at most 223 bytes, lowercase. */
export function checkInitiatorName(iqn: string): string {
  if (Buffer.byteLength(iqn) > 223 || !/^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[a-z0-9.:-]*)?|eui\.[0-9a-f]{16}|naa\.[0-9a-f]{16}([0-9a-f]{16})?)$/.test(iqn)) {
    throw new StorageError('InvalidArgument', `invalid iSCSI initiator name '${iqn}' (e.g. ${VM_IQN_PREFIX}vm1: lowercase, iqn.YYYY-MM.domain[:string], at most 223 bytes)`)
  }
  return iqn
}

/**
 * The ISID of a VM's session (RFC 7143 §11.12.5, type 2 "random": T=10, A, B and C from a hash
 * of the initiator name, D = `qualifier`). Derived only from the VM's identity, so its I_T
 * nexus, and with it the persistent reservations the guest made, are the same from any host.
 * Qualifier 1 is the running VM; another role of the same VM (an FT backup) takes another.
 */
export function vmIsid(iqn: string, qualifier = 1): Buffer {
  const h = createHash('sha256').update(iqn).digest()
  const isid = Buffer.alloc(6)
  isid[0] = 0x80 | (h[0] & 0x3f)
  h.copy(isid, 1, 1, 4)
  isid.writeUInt16BE(qualifier & 0xffff, 4)
  return isid
}

/** The I_T nexus name a target gives a session (`name,i,0xISID`, SPC-4 7.6.4.6). */
export function nexusName(iqn: string, isid: Buffer): string {
  return `${iqn},i,0x${isid.toString('hex')}`
}

/** An in-process LU, as seen from one I_T nexus. */
export function logicalUnitPath(lu: LogicalUnit, nexus: string): ScsiPath {
  return {
    get blocks() {
      return lu.blocks
    },
    execute: (cdb, dataOut) => lu.execute(cdb, dataOut, nexus),
  }
}

/** An iSCSI session: each CDB goes to the target as it is (a lost session rejects). */
export function initiatorPath(ini: IscsiInitiator): ScsiPath {
  return {
    get blocks() {
      return Math.floor(ini.size / ini.blockSize)
    },
    execute: async (cdb, dataOut, dataInLength) => {
      const r = await ini.execute(cdb, dataOut, dataInLength)
      return { status: r.status, ...(r.data.length ? { dataIn: r.data } : {}), ...(r.sense.length ? { sense: r.sense } : {}) }
    },
  }
}

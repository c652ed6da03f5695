import { StorageError } from '../../disk-formats/errors.js'
import * as S from '../../server/scsi/constants.js'
import { WRITE_EXCLUSIVE_REGISTRANTS_ONLY } from '../../server/scsi/persistent-reservations.js'
import { statusError } from '../transport/iscsi/index.js'
import type { ScsiPath } from '../vm/scsi-path.js'

/**
 * The storage fence of an FT pair (ft-architecture.md §1.3, §1.4 step 2): both roles register a
 * persistent-reservation key for their own I_T nexus of the shared LU (the VM's IQN, ISID
 * qualifier 1 and 2: vmIsid); the live one holds WRITE EXCLUSIVE – REGISTRANTS ONLY, and the side
 * that goes live takes it with PREEMPT AND ABORT of the other's key. When that answers GOOD, the
 * target has waited for or aborted every command of the preempted nexus (SPC-4 5.13.11.2.5), so no
 * write of a deposed primary lands after it; its later writes get RESERVATION CONFLICT, its reads
 * still work. Reservations do not survive a restart of the target (no APTPL): the lock record's
 * generation stays the authority.
 */

/** The reservation type the pair uses: others may read, only registrants write (SPC-4 table 172). */
export const FENCE_TYPE = WRITE_EXCLUSIVE_REGISTRANTS_ONLY

/** A unit attention reports an event (e.g. REGISTRATIONS PREEMPTED), not a failure: sent again this often. */
const UNIT_ATTENTION_RETRIES = 4

/** A PERSISTENT RESERVE command that did not end GOOD; `conflict`: RESERVATION CONFLICT (this nexus lacks the registration or the reservation). */
export class FenceError extends StorageError {
  constructor(
    message: string,
    cause: StorageError,
    readonly status: number,
    readonly senseKey: number,
    readonly asc: number,
    readonly ascq: number,
  ) {
    super(cause.code, message, undefined, { cause })
  }
  get conflict(): boolean {
    return this.status === S.RESERVATION_CONFLICT
  }
}

/** The reservation state of the LU as READ KEYS and READ RESERVATION report it. */
export interface Reservation {
  /** PRgeneration: bumped by every registration change (SPC-4 6.13.2) */
  generation: number
  /** every registered key (one per registered I_T nexus) */
  keys: bigint[]
  /** the reservation holder's key and the type, or null when there is no reservation */
  holder: { key: bigint; type: number } | null
}

/** PERSISTENT RESERVE OUT (SPC-4 6.14.1): 10-byte CDB, a 24-byte basic parameter list. */
export function persistentReserveOutCdb(sa: number, type: number): Buffer {
  const cdb = Buffer.alloc(10)
  cdb[0] = S.PERSISTENT_RESERVE_OUT
  cdb[1] = sa & 0x1f
  cdb[2] = type & 0x0f // SCOPE 0: LU_SCOPE
  cdb.writeUInt32BE(24, 5)
  return cdb
}

/** The basic PERSISTENT RESERVE OUT parameter list (SPC-4 6.14.3): RESERVATION KEY, SERVICE ACTION RESERVATION KEY; no APTPL, no SPEC_I_PT. */
export function persistentReserveOutParameters(key: bigint, saKey: bigint): Buffer {
  const p = Buffer.alloc(24)
  p.writeBigUInt64BE(key, 0)
  p.writeBigUInt64BE(saKey, 8)
  return p
}

/** PERSISTENT RESERVE IN (SPC-4 6.13.1). */
export function persistentReserveInCdb(sa: number, alloc: number): Buffer {
  const cdb = Buffer.alloc(10)
  cdb[0] = S.PERSISTENT_RESERVE_IN
  cdb[1] = sa & 0x1f
  cdb.writeUInt16BE(alloc, 7)
  return cdb
}

const SA_NAMES: Record<number, string> = {
  [S.PRO_REGISTER_AND_IGNORE_EXISTING_KEY]: 'REGISTER AND IGNORE EXISTING KEY',
  [S.PRO_RESERVE]: 'RESERVE',
  [S.PRO_PREEMPT_AND_ABORT]: 'PREEMPT AND ABORT',
  [S.PRI_READ_KEYS | 0x100]: 'READ KEYS',
  [S.PRI_READ_RESERVATION | 0x100]: 'READ RESERVATION',
}

const hexKey = (k: bigint) => `0x${k.toString(16)}`

function checkKey(what: string, key: bigint): void {
  // key 0 is "no key": registering it unregisters (SPC-4 5.13.7)
  if (key <= 0n || key >= 1n << 64n) throw new StorageError('InvalidArgument', `${what} ${key} is not a reservation key (1 … 2^64 − 1)`)
}

/** Runs one PERSISTENT RESERVE command; a unit attention is consumed and the command sent again. */
async function run(path: ScsiPath, cdb: Buffer, out: Buffer | null, dataIn: number, what: string): Promise<Buffer> {
  for (let attempt = 0; ; attempt++) {
    const r = await path.execute(cdb, out, dataIn)
    if (r.status === S.GOOD) return r.dataIn ?? Buffer.alloc(0)
    const e = statusError(cdb[0], { status: r.status, sense: r.sense ?? Buffer.alloc(0) })
    if (e.senseKey === S.UNIT_ATTENTION && attempt < UNIT_ATTENTION_RETRIES) continue
    const name = SA_NAMES[(cdb[1] & 0x1f) | (cdb[0] === S.PERSISTENT_RESERVE_IN ? 0x100 : 0)] ?? `service action 0x${cdb[1].toString(16)}`
    const why = r.status === S.RESERVATION_CONFLICT ? 'RESERVATION CONFLICT (this I_T nexus is not registered under that key, or another holds the reservation)' : e.message
    throw new FenceError(`PERSISTENT RESERVE ${cdb[0] === S.PERSISTENT_RESERVE_IN ? 'IN' : 'OUT'} (${name}) ${what}: ${why}`, e, r.status, e.senseKey, e.asc, e.ascq)
  }
}

function out(path: ScsiPath, sa: number, type: number, key: bigint, saKey: bigint, what: string): Promise<Buffer> {
  return run(path, persistentReserveOutCdb(sa, type), persistentReserveOutParameters(key, saKey), 0, what)
}

/** Registers `key` for this path's I_T nexus, replacing any key it had (REGISTER AND IGNORE EXISTING KEY). */
export async function register(path: ScsiPath, key: bigint): Promise<void> {
  checkKey('key', key)
  await out(path, S.PRO_REGISTER_AND_IGNORE_EXISTING_KEY, 0, 0n, key, `of key ${hexKey(key)}`)
}

/**
 * Registers `key` and reserves the LU (FENCE_TYPE) for this path's I_T nexus. Already holding it
 * is success. Throws FenceError (`conflict`) when another nexus holds the reservation.
 */
export async function registerAndReserve(path: ScsiPath, key: bigint): Promise<void> {
  await register(path, key)
  await out(path, S.PRO_RESERVE, FENCE_TYPE, key, 0n, `under key ${hexKey(key)}`)
}

/**
 * Takes the LU for this path's I_T nexus under `key` whoever held it before: registers, then
 * reserves, or preempts and aborts a holder under another key (a pair's earlier generation that
 * crashed or stopped without giving it back). Only for the holder of the VM's lock at a new generation.
 */
export async function takeOver(path: ScsiPath, key: bigint): Promise<void> {
  await register(path, key)
  const r = await readReservation(path)
  if (r.holder && r.holder.key !== key) await preemptAndAbort(path, key, r.holder.key)
  else if (!r.holder) await out(path, S.PRO_RESERVE, FENCE_TYPE, key, 0n, `under key ${hexKey(key)}`)
}

/** Removes this nexus's registration under `key` (and with it a reservation it holds): REGISTER with service action key 0. */
export async function unregister(path: ScsiPath, key: bigint): Promise<void> {
  checkKey('key', key)
  await out(path, S.PRO_REGISTER, 0, key, 0n, `of key ${hexKey(key)} (unregister)`)
}

/** The LU's registered keys and reservation (READ KEYS, READ RESERVATION). */
export async function readReservation(path: ScsiPath): Promise<Reservation> {
  // a key list of 8 bytes a registrant: 64 KiB − 8 holds 8191 keys, more than any LU here has
  const keys = await run(path, persistentReserveInCdb(S.PRI_READ_KEYS, 0xffff), null, 0xffff, 'of the LU')
  const res = await run(path, persistentReserveInCdb(S.PRI_READ_RESERVATION, 24), null, 24, 'of the LU')
  if (keys.length < 8 || res.length < 8) throw new StorageError('IoError', `PERSISTENT RESERVE IN: ${Math.min(keys.length, res.length)} bytes of data, at least 8 expected`)
  const n = Math.min(keys.readUInt32BE(4), keys.length - 8) >> 3
  return {
    generation: res.readUInt32BE(0),
    keys: Array.from({ length: n }, (_, i) => keys.readBigUInt64BE(8 + 8 * i)),
    holder: res.readUInt32BE(4) >= 16 && res.length >= 24 ? { key: res.readBigUInt64BE(8), type: res[21] & 0x0f } : null,
  }
}

/**
 * Takes the reservation (FENCE_TYPE) from the holder of `victimKey` by PREEMPT AND ABORT, for this
 * path's I_T nexus registered under `myKey`: on return this nexus holds the reservation, no nexus
 * is registered under `victimKey`, and no command of a preempted nexus will still change the
 * medium. Idempotent: a preemption already done (e.g. sent again after a lost connection) is
 * success, and with no reservation to preempt it reserves. Throws FenceError when `myKey` is not
 * this nexus's registration (it was itself preempted) or a third key holds the reservation.
 */
export async function preemptAndAbort(path: ScsiPath, myKey: bigint, victimKey: bigint): Promise<void> {
  checkKey('key', myKey)
  checkKey('victim key', victimKey)
  if (myKey === victimKey) throw new StorageError('InvalidArgument', `the victim's key ${hexKey(victimKey)} is this nexus's own: the two roles need distinct keys`)
  const what = `of key ${hexKey(victimKey)} under key ${hexKey(myKey)}`
  try {
    await out(path, S.PRO_PREEMPT_AND_ABORT, FENCE_TYPE, myKey, victimKey, what)
  } catch (e) {
    // a conflict also answers a victim key no longer registered: judged by the state below
    if (!(e instanceof FenceError && e.conflict)) throw e
  }
  const r = await readReservation(path)
  if (!r.keys.includes(myKey)) throw new StorageError('Busy', `PREEMPT AND ABORT ${what}: key ${hexKey(myKey)} is not registered (this I_T nexus was preempted itself)`)
  if (r.keys.includes(victimKey)) throw new StorageError('Busy', `PREEMPT AND ABORT ${what}: key ${hexKey(victimKey)} is still registered`)
  if (r.holder?.key === myKey && r.holder.type === FENCE_TYPE) return
  // no reservation was held (the victim only registered): take it
  await out(path, S.PRO_RESERVE, FENCE_TYPE, myKey, 0n, `under key ${hexKey(myKey)} after preempting ${hexKey(victimKey)} (${r.holder ? `key ${hexKey(r.holder.key)} holds it` : 'no holder'})`)
}

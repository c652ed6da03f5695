import type { Logger } from 'pino'
import { StorageError } from '../../disk-formats/errors.js'
import { readField } from '../../disk-formats/struct.js'
import { ProtocolError } from '../net/tcp-service.js'
import type { LogicalUnit } from '../scsi/index.js'
import { header, LoginRequest, LoginResponse } from './bhs.js'
import { ChapFailure, ChapTarget, type ChapSecrets } from './chap.js'
import { defaultParams, negotiate, notNegotiated, TARGET_MAX_RECV, type Params } from './negotiation.js'
import * as P from './pdu.js'

/** What the connection needs from the target: names, access checks, logical units. */
export interface TargetDirectory {
  /** targets this initiator may see (SendTargets) */
  visibleTargets(initiator: string): Promise<string[]>
  /**
   * A target this initiator may log in to, or an error reason for the login response. Nothing is
   * opened until `open()`, which the login calls once it is complete (after authentication).
   * `name` (the disk) labels the export's metrics.
   */
  findTarget(iqn: string, initiator: string): Promise<TargetEntry | { refused: 'not-found' | 'not-authorized' }>
  portal: string
  /**
   * A normal session `key` (initiator name, ISID, target) completes its login: an earlier session
   * of the same key is ended first, its commands finished (RFC 7143 §6.3.5, session
   * reinstatement), so nothing the old one was running lands after the new one starts.
   */
  reinstate?(key: string, conn: Reinstatable): Promise<void>
  /** the session `key` of `conn` has ended */
  ended?(key: string, conn: Reinstatable): void
}

/** A connection a newer session of the same key can end: resolves once its commands have finished. */
export interface Reinstatable {
  end(): Promise<void>
}

export interface TargetEntry {
  name: string
  chap?: ChapSecrets
  /** Opens the disk's LU; throws a StorageError (NotFound when the disk has gone since `findTarget`). */
  open(): Promise<{ lu: LogicalUnit; release(): Promise<void> }>
}

export type OpenTarget = { name: string; lu: LogicalUnit; release(): Promise<void> }

/** The login's side of the connection. */
export interface LoginIo {
  read(): Promise<P.Pdu>
  /** Sends a response with StatSN, ExpCmdSN and MaxCmdSN filled in; StatSN advances. */
  respond(b: Buffer, data: Buffer): void
  /** The first request's numbers: StatSN starts at its ExpStatSN, ExpCmdSN at its CmdSN. */
  start(statSN: number, expCmdSN: number): void
}

/** A completed login. */
export interface Session {
  initiator: string
  /** the I_T nexus: initiator name and ISID (reservations belong to a nexus, not a name) */
  nexus: string
  discovery: boolean
  /** a normal session's target, opened */
  target: OpenTarget | null
  params: Params
  /** a normal session's key for reinstatement (initiator name, ISID, target) */
  key: string | null
}

/** Login status classes, and the details of class Initiator Error (RFC 7143 §11.13.5). */
const CLASS = { initiatorError: 0x02, targetError: 0x03 } as const
const DETAIL = { authenticationFailure: 0x01, authorizationFailure: 0x02, notFound: 0x03, missingParameter: 0x07 } as const

const rq = LoginRequest.fields

/**
 * The login phase (RFC 7143 §6): SecurityNegotiation (AuthMethod None or CHAP, which a target
 * with secrets requires) and LoginOperationalNegotiation, one connection per session. The LU is
 * opened only once the login is complete, so a login left half-way holds nothing open. A refused
 * or malformed login is answered by a login response with its status, then ProtocolError.
 */
export async function login(io: LoginIo, dir: TargetDirectory, log: Logger, self: Reinstatable): Promise<Session> {
  const s: Session = { initiator: '', nexus: '', discovery: false, target: null, params: defaultParams(), key: null }
  let entry: TargetEntry | null = null
  let chap: ChapTarget | null = null
  let first = true
  for (;;) {
    const { bhs, data } = await io.read()
    if (P.opcodeOf(bhs) !== P.LOGIN_REQUEST) throw new ProtocolError(`expected a Login Request, got opcode 0x${P.opcodeOf(bhs).toString(16)}`)
    const flags = P.flagsOf(bhs)
    const transit = (flags & 0x80) !== 0
    const csg = (flags >> 2) & 3
    const nsg = flags & 3
    const respond = (transit: boolean, cls: number, detail: number, keys: [string, string][], tsih = 0) => {
      const b = LoginResponse.assign(header(P.LOGIN_RESPONSE, (transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0)), {
        isid: readField(bhs, rq.isid),
        tsih,
        initiatorTaskTag: P.ittOf(bhs),
        statusClass: cls,
        statusDetail: detail,
      })
      io.respond(b, P.encodeText(keys))
    }
    const refuse = (detail: number, why: string, cls: number = CLASS.initiatorError): never => {
      respond(false, cls, detail, [])
      throw new ProtocolError(why)
    }
    if (first) io.start(readField(bhs, rq.expStatSN), readField(bhs, rq.cmdSN))
    if (flags & 0x40) refuse(0x00, 'login text continuation is not supported')
    let keys: [string, string][] = []
    try {
      keys = P.parseText(data)
    } catch (e) {
      refuse(0x00, (e as Error).message)
    }
    const get = (k: string) => keys.find(([x]) => x === k)?.[1]
    const reply: [string, string][] = []
    if (first) {
      const name = get('InitiatorName')
      if (!name) refuse(DETAIL.missingParameter, 'login without InitiatorName')
      s.initiator = name!
      s.nexus = `${name},i,0x${readField(bhs, rq.isid).toString('hex')}`
      s.discovery = get('SessionType') === 'Discovery'
      if (!s.discovery) {
        const tn = get('TargetName')
        if (!tn) refuse(DETAIL.missingParameter, 'normal session login without TargetName')
        const t = await dir.findTarget(tn!, s.initiator)
        if ('refused' in t) refuse(t.refused === 'not-found' ? DETAIL.notFound : DETAIL.authorizationFailure, `target '${tn}' ${t.refused} for '${name}'`)
        else entry = t
        if (entry?.chap) chap = new ChapTarget(entry.chap)
        reply.push(['TargetPortalGroupTag', '1'])
      }
      first = false
    }
    const authFail = (why: string): never => refuse(DETAIL.authenticationFailure, `authentication failed for '${s.initiator}': ${why}`)
    if (csg !== 0 && chap && !chap.authenticated) authFail('CHAP is required but the security stage was skipped')
    if (csg === 0) {
      const offered = get('AuthMethod')
      if (offered !== undefined) {
        const methods = offered.split(',')
        const want = chap ? 'CHAP' : 'None'
        if (!methods.includes(want)) authFail(chap ? `CHAP required, offered '${offered}'` : `no acceptable AuthMethod in '${offered}'`)
        reply.push(['AuthMethod', want])
      }
      try {
        chap?.step(get, reply)
      } catch (e) {
        if (e instanceof ChapFailure) authFail(e.message)
        throw e
      }
    }
    for (const [k, v] of keys) if (!notNegotiated(k)) reply.push([k, negotiate(s.params, k, v)])
    // declare our own limits once, when leaving operational negotiation
    if (csg === 1 && transit && nsg === 3 && !keys.some(([k]) => k === 'MaxRecvDataSegmentLength')) reply.push(['MaxRecvDataSegmentLength', String(TARGET_MAX_RECV)])
    // no leaving the security stage before CHAP is done
    const may = transit && !(csg === 0 && chap && !chap.authenticated)
    const done = may && nsg === 3
    if (done && entry) {
      s.key = `${s.nexus} ${entry.name}`
      await dir.reinstate?.(s.key, self)
    }
    if (done && entry) s.target = await openTarget(entry, log, (gone) => refuse(gone ? DETAIL.notFound : 0x00, `target '${entry!.name}' ${gone ? 'no longer exists' : 'cannot be opened'}`, gone ? CLASS.initiatorError : CLASS.targetError))
    respond(may, 0, 0, reply, done ? 1 : 0)
    if (done) return s
  }
}

/**
 * Opens the target's LU at the end of the login, when the initiator is authenticated. A disk
 * that has gone since is Not Found; one that cannot be opened (corrupt, broken chain) is a
 * Target Error, with the reason logged.
 */
async function openTarget(entry: TargetEntry, log: Logger, refuse: (gone: boolean) => never): Promise<OpenTarget> {
  try {
    return { name: entry.name, ...(await entry.open()) }
  } catch (e) {
    const gone = e instanceof StorageError && e.code === 'NotFound'
    if (!gone) log.warn({ target: entry.name, err: e instanceof Error ? e.message : String(e) }, 'iscsi: target cannot be opened')
    return refuse(gone)
  }
}

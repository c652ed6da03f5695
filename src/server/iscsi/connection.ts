import { randomBytes, timingSafeEqual } from 'node:crypto'
import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import type { ExportTally, Metrics } from '../metrics.js'
import type { ByteQueue } from '../net/byte-queue.js'
import { poller } from '../net/poll.js'
import { ProtocolError, socketQueue } from '../net/tcp-service.js'
import * as S from '../scsi/constants.js'
import { dataOutLength, mediumReadLength, metricsClass, SenseError, senseData, type LogicalUnit } from '../scsi/index.js'
import * as P from './pdu.js'
import { MemoryBudget } from './memory-budget.js'
import { crc32c } from '../../disk-formats/crc32c.js'
import { StorageError } from '../../disk-formats/errors.js'
import { chapBinary, chapResponse } from './chap.js'


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
  reinstate?(key: string, conn: IscsiConnection): Promise<void>
  /** the session `key` of `conn` has ended */
  ended?(key: string, conn: IscsiConnection): void
}

export interface TargetEntry {
  name: string
  chap?: ChapSecrets
  /** Opens the disk's LU; throws a StorageError (NotFound when the disk has gone since `findTarget`). */
  open(): Promise<{ lu: LogicalUnit; release(): Promise<void> }>
}

export interface ChapSecrets {
  user: string
  secret: string
  mutualUser?: string
  mutualSecret?: string
}

/** Negotiated values (RFC 7143 §13) with their defaults. */
interface Params {
  maxRecvDataSegmentLength: number // what the initiator can receive: our Data-In size
  maxBurstLength: number
  firstBurstLength: number
  initialR2T: boolean
  immediateData: boolean
}

/** Our own limits, declared at login. */
const TARGET_MAX_RECV = 262144
const TARGET_MAX_BURST = 1048576
const TARGET_FIRST_BURST = 262144

/*
 * Memory per connection. A client that sends commands and never reads their replies (or never
 * sends the data its writes announce) makes the connection hold at most CONNECTION_MEMORY_BOUND:
 * - DATA_BUDGET: data buffers of the commands being run (a write's data-out, what a read or
 *   verify reads from the disk) plus replies queued on the socket. A command waits for its bytes
 *   before it runs (a write: before its R2T); while the budget is exceeded by queued replies, no
 *   further request is read.
 * - RECEIVE_QUEUE: bytes received and not yet parsed (the socket is paused beyond it).
 * - per command admitted (CMD_WINDOW in the CmdSN window, MAX_IMMEDIATE immediate ones): the PDU
 *   it came in and its unsolicited data, at most TARGET_FIRST_BURST (= MaxRecvDataSegmentLength).
 * MaxCmdSN advances as commands complete, not as they arrive, so a well-behaved initiator is
 * throttled by the window; a command outside it is silently ignored (RFC 7143 §4.2.2.1), and an
 * immediate command over MAX_IMMEDIATE is rejected (reason "too many immediate commands").
 */
export const CMD_WINDOW = 64
export const MAX_IMMEDIATE = 8
/** The LU's maximum transfer (32 MiB, VPD B0): the largest command fits the budget alone. */
const DATA_BUDGET = 32 << 20
const RECEIVE_QUEUE = 8 << 20
/**
 * 32 + 8 + 72 × 0.25 = 58 MiB: "under 64 MiB per connection" (README, iSCSI). Not counted: a
 * command needing more than the whole budget (ORWRITE, or VERIFY with BYTCHK 3, of over 16 MiB)
 * waits until it has the budget to itself, then may use up to twice it.
 */
export const CONNECTION_MEMORY_BOUND = DATA_BUDGET + RECEIVE_QUEUE + (CMD_WINDOW + MAX_IMMEDIATE) * TARGET_FIRST_BURST
/** Largest data-out buffer a command may ask for: the LU's maximum transfer; it must fit DATA_BUDGET. */
const MAX_EXPECTED_DATA = DATA_BUDGET
/** Data segments at least this long are written without being copied into one buffer with their header. */
const LARGE_SEGMENT = 32 * 1024

/**
 * Write buffers are reused: a 1 MiB Buffer per command, allocated and collected at hundreds per
 * second, costs more than the copy into it (GC of external memory). A buffer from the pool holds
 * an earlier command's bytes, so it is used only when every byte will be overwritten first:
 * immediate data, then Data-Out strictly in order (DataPDUInOrder=Yes), or the command fails.
 */
const pool = new Map<number, Buffer[]>()
const POOL_PER_SIZE = 32
/** The pool is shared by every connection; its bytes are bounded, whatever sizes clients use. */
const POOL_BYTES = 64 << 20
let pooled = 0
function writeBuffer(size: number): Buffer {
  const b = pool.get(size)?.pop()
  if (!b) return Buffer.allocUnsafe(size)
  pooled -= b.length
  return b
}
function recycle(b: Buffer): void {
  if (b.length < 64 * 1024 || b.length > 4 << 20 || pooled + b.length > POOL_BYTES) return
  let list = pool.get(b.length)
  if (!list) pool.set(b.length, (list = []))
  if (list.length < POOL_PER_SIZE) {
    list.push(b)
    pooled += b.length
  }
}

/** Where data that is not used is read to be dropped (shared: nobody reads it back). */
const DISCARD = Buffer.allocUnsafe(TARGET_MAX_RECV)

/** Requests that carry a CmdSN (RFC 7143 §4.2.2.1); Data-Out and SNACK do not. */
const NUMBERED = new Set([P.NOP_OUT, P.SCSI_COMMAND, P.TASK_MGMT_REQUEST, P.TEXT_REQUEST, P.LOGOUT_REQUEST])

/** ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR: the command's data failed its digest. */
const crcErrorSense = () => senseData(new SenseError(S.ABORTED_COMMAND, 'PROTOCOL_SERVICE_CRC_ERROR'))

interface PendingWrite {
  buf: Buffer
  received: number
  ttt: number
  /** DataSN expected next in the current sequence (unsolicited burst or one R2T) */
  dataSN: number
  /** the write cannot complete: a sequence error, or a Data-Out with a bad data digest */
  failed: false | 'sequence' | 'digest'
  done: () => void
}

/**
 * One iSCSI connection (one connection per session, ErrorRecoveryLevel 0): login with
 * SecurityNegotiation (AuthMethod None) and LoginOperationalNegotiation, discovery by
 * SendTargets, SCSI Command/Response, Data-In, immediate and unsolicited data, R2T/Data-Out,
 * NOP, Task Management, Logout; anything else gets a Reject. A malformed PDU closes this
 * connection only.
 */
export class IscsiConnection {
  private readonly q: ByteQueue
  private readonly isClosed: () => boolean
  private statSN = 0
  private expCmdSN = 0
  private initiator = ''
  private nexus = ''
  private joined = false
  private discovery = false
  /** the target named at login; its LU is opened when the login completes (`target`) */
  private entry: TargetEntry | null = null
  private target: { name: string; lu: LogicalUnit; release(): Promise<void> } | null = null
  /** This connection's requests to its export, for /metrics. */
  private tally: ExportTally | null = null
  /** CHAP state of the login: the challenge we sent, and whether the initiator has answered it */
  private chapSent: { id: number; challenge: Buffer } | null = null
  private authenticated = false
  /** CRC32C header and data digests, as negotiated; in force from the first PDU after the login phase */
  private headerDigest = false
  private dataDigest = false
  private digestsOn = false
  private dataDigestsOn = false
  private fullFeaturePhase = false
  private params: Params = { maxRecvDataSegmentLength: 8192, maxBurstLength: 262144, firstBurstLength: 65536, initialR2T: true, immediateData: true }
  private readonly pending = new Map<number, PendingWrite>()
  private nextTTT = 1
  private readonly tasks = new Set<Promise<void>>()
  /** SCSI commands in the CmdSN window (not immediate) whose status is not yet sent */
  private running = 0
  /** immediate SCSI commands (outside the window) still running */
  private immediates = 0
  private readonly budget: MemoryBudget
  /** The connection is ending (its loop has stopped): no command starts or waits any more. */
  private ending = false
  /** The last command arrived with no other in flight (queue depth 1: see net/poll.ts). */
  private alone = true
  /** the session's key once its login completed (see TargetDirectory.reinstate) */
  private sessionKey: string | null = null
  private finished!: Promise<void>

  constructor(
    private readonly sock: Socket,
    private readonly dir: TargetDirectory,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    const s = socketQueue(sock, RECEIVE_QUEUE)
    this.q = s.q
    this.isClosed = s.closed
    this.budget = new MemoryBudget(DATA_BUDGET, () => (sock.writableNeedDrain ? sock.writableLength : 0))
    sock.on('drain', () => this.budget.drained())
    sock.on('close', () => this.budget.close())
  }

  /** `established`: called once the login is complete (ends its time limit). */
  run(established: () => void = () => {}): Promise<void> {
    return (this.finished = this.serve(established))
  }

  /** Ends the connection (a newer session reinstates this one): resolves once its commands have finished. */
  end(): Promise<void> {
    this.sock.destroy()
    return this.finished
  }

  private async serve(established: () => void): Promise<void> {
    try {
      await this.login()
      established()
      if (this.target) {
        this.target.lu.nexusJoined(this.nexus)
        this.joined = true
      }
      this.metrics.connections.inc({ protocol: 'iscsi' })
      try {
        await this.fullFeature()
      } finally {
        this.metrics.connections.dec({ protocol: 'iscsi' })
      }
    } catch (e) {
      if (!(e instanceof ProtocolError)) this.log.warn({ err: e }, 'iscsi: connection failed')
      else if (!this.isClosed()) {
        this.metrics.protocolErrors.inc({ protocol: 'iscsi' })
        this.log.info({ peer: this.sock.remoteAddress, reason: e.message }, 'iscsi: closing connection')
      }
    } finally {
      // commands waiting for data or room end without running
      this.ending = true
      for (const p of this.pending.values()) p.done()
      this.budget.close()
      await Promise.allSettled([...this.tasks])
      if (this.joined) this.target?.lu.nexusLost(this.nexus)
      if (this.sessionKey !== null) this.dir.ended?.(this.sessionKey, this)
      this.tally?.close()
      await this.target?.release()
      this.target = null
      // what was queued (a login reject, a Reject) still goes out; then the connection closes
      if (this.corked) this.uncork()
      this.sock.end()
      setTimeout(() => this.sock.destroy(), 1000).unref()
    }
  }

  private async readPdu(): Promise<P.Pdu> {
    const bhs = await this.q.read(P.BHS)
    const ahsLen = P.ahsLengthOf(bhs)
    const dlen = P.dataLengthOf(bhs)
    // Our declared MaxRecvDataSegmentLength bounds every data segment (login text is smaller still).
    if (dlen > TARGET_MAX_RECV) throw new ProtocolError(`data segment of ${dlen} bytes exceeds MaxRecvDataSegmentLength ${TARGET_MAX_RECV}`)
    const ahs = ahsLen ? await this.q.read(ahsLen) : Buffer.alloc(0)
    if (this.digestsOn) {
      const got = (await this.q.read(4)).readUInt32LE(0)
      const want = crc32c(ahsLen ? Buffer.concat([bhs, ahs]) : bhs)
      // the header cannot be trusted, so neither can the framing: the connection ends (§7.8)
      if (got !== want) throw new ProtocolError(`header digest error (got 0x${got.toString(16)}, computed 0x${want.toString(16)})`)
    }
    let data: Buffer
    let direct = false
    const pad = (4 - (dlen % 4)) % 4
    const dataOut = dlen && P.opcodeOf(bhs) === P.SCSI_DATA_OUT
    const w = dataOut ? this.pending.get(P.ittOf(bhs)) : undefined
    // decided once, here: the window only widens until the loop takes this PDU
    const ignored = this.ignored(bhs)
    if (ignored || (dataOut && !w)) {
      // data nobody will use (a request outside the window, a Data-Out for no task) is read
      // into a scratch buffer and dropped, so a flood of it allocates nothing
      const skip = dlen ? dlen + pad + (this.dataDigestsOn ? 4 : 0) : 0
      for (let left = skip; left > 0; left -= DISCARD.length) await this.q.readInto(DISCARD, 0, Math.min(left, DISCARD.length))
      return { bhs, ahs, data: Buffer.alloc(0), ignored }
    }
    const offset = w ? bhs.readUInt32BE(40) : 0
    if (w && offset === w.received && offset + dlen <= w.buf.length) {
      // a Data-Out's payload goes straight into its command's buffer (dataOut() checks the rest)
      await this.q.readInto(w.buf, offset, dlen)
      data = w.buf.subarray(offset, offset + dlen)
      direct = true
    } else data = dlen ? await this.q.read(dlen) : Buffer.alloc(0)
    const padding = pad ? await this.q.read(pad) : null
    if (this.dataDigestsOn && dlen) {
      // covers the data segment and its padding (RFC 7143 §11.1); a bad one costs this PDU only
      const got = (await this.q.read(4)).readUInt32LE(0)
      const want = padding ? crc32c(padding, crc32c(data)) : crc32c(data)
      if (got !== want) return { bhs, ahs, data, digestError: true }
    }
    return { bhs, ahs, data, direct }
  }

  private send(bhs: Buffer, data: Buffer = Buffer.alloc(0)): void {
    if (this.isClosed() || this.sock.destroyed) return
    // a queue-depth-1 initiator (its last command came alone, nothing else is in flight): its next
    // command is likely to follow this reply closely
    if (this.alone && this.tasks.size <= 1) poller.expectNext()
    bhs.writeUIntBE(data.length, 5, 3)
    const parts = [bhs]
    if (this.digestsOn) {
      const d = Buffer.alloc(4)
      d.writeUInt32LE(crc32c(bhs))
      parts.push(d)
    }
    if (data.length) {
      const body = P.padded(data)
      parts.push(body)
      if (this.dataDigestsOn) {
        const d = Buffer.alloc(4)
        d.writeUInt32LE(crc32c(body))
        parts.push(d)
      }
    }
    // Every PDU produced while this turn of the event loop runs goes out in one writev: at
    // queue depth > 1 many commands complete together, and one send costs less than many.
    if (!this.corked) {
      this.corked = true
      this.sock.cork()
      process.nextTick(this.uncork)
    }
    if (parts.length === 1) this.sock.write(bhs)
    else if (data.length < LARGE_SEGMENT) this.sock.write(Buffer.concat(parts))
    else for (const p of parts) this.sock.write(p) // a large segment is not copied
  }

  private corked = false
  private readonly uncork = () => {
    this.corked = false
    if (!this.sock.destroyed) this.sock.uncork()
  }

  /**
   * Fills StatSN/ExpCmdSN/MaxCmdSN at 24/28/32; advances StatSN when `advance`. MaxCmdSN leaves
   * room for CMD_WINDOW running commands: it moves when one completes (its status PDU carries
   * it), never backwards, and equals ExpCmdSN - 1 (a closed window) when all are running.
   */
  private seq(b: Buffer, advance = true): Buffer {
    b.writeUInt32BE(advance ? this.statSN++ >>> 0 : this.statSN >>> 0, 24)
    b.writeUInt32BE(this.expCmdSN >>> 0, 28)
    b.writeUInt32BE((this.expCmdSN + CMD_WINDOW - this.running - 1) >>> 0, 32)
    return b
  }

  /** Is CmdSN within [ExpCmdSN, MaxCmdSN] (serial arithmetic, RFC 1982)? */
  private inWindow(cmdSN: number): boolean {
    return ((cmdSN - this.expCmdSN) >>> 0) < CMD_WINDOW - this.running
  }

  /** A request in full feature phase that is silently ignored: not immediate, and its CmdSN outside the window (§4.2.2.1). */
  private ignored(bhs: Buffer): boolean {
    return this.fullFeaturePhase && !P.immediateOf(bhs) && NUMBERED.has(P.opcodeOf(bhs)) && !this.inWindow(bhs.readUInt32BE(24))
  }

  // ---- login ----------------------------------------------------------------------------

  private loginResponse(req: Buffer, transit: boolean, csg: number, nsg: number, cls: number, detail: number, keys: [string, string][], tsih = 0): void {
    const b = P.bhs(P.LOGIN_RESPONSE, (transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0), 0)
    req.copy(b, 8, 8, 14) // ISID
    b.writeUInt16BE(tsih, 14)
    b.writeUInt32BE(P.ittOf(req), 16)
    this.seq(b)
    b[36] = cls
    b[37] = detail
    this.send(b, P.encodeText(keys))
  }

  private async login(): Promise<void> {
    let first = true
    for (;;) {
      const { bhs, data } = await this.readPdu()
      if (P.opcodeOf(bhs) !== P.LOGIN_REQUEST) throw new ProtocolError(`expected a Login Request, got opcode 0x${P.opcodeOf(bhs).toString(16)}`)
      const transit = (bhs[1] & 0x80) !== 0
      const csg = (bhs[1] >> 2) & 3
      const nsg = bhs[1] & 3
      if (first) {
        this.statSN = bhs.readUInt32BE(28)
        this.expCmdSN = bhs.readUInt32BE(24)
      }
      if (bhs[1] & 0x40) {
        this.loginResponse(bhs, false, csg, nsg, 0x02, 0x00, [])
        throw new ProtocolError('login text continuation is not supported')
      }
      let keys: [string, string][]
      try {
        keys = P.parseText(data)
      } catch (e) {
        this.loginResponse(bhs, false, csg, nsg, 0x02, 0x00, [])
        throw new ProtocolError((e as Error).message)
      }
      const get = (k: string) => keys.find(([x]) => x === k)?.[1]
      const reply: [string, string][] = []
      if (first) {
        const name = get('InitiatorName')
        if (!name) {
          this.loginResponse(bhs, false, csg, nsg, 0x02, 0x07, []) // missing parameter
          throw new ProtocolError('login without InitiatorName')
        }
        // the I_T nexus: initiator name and ISID (reservations belong to a nexus, not a name)
        this.initiator = name
        this.nexus = `${name},i,0x${bhs.subarray(8, 14).toString('hex')}`
        this.discovery = get('SessionType') === 'Discovery'
        if (!this.discovery) {
          const tn = get('TargetName')
          if (!tn) {
            this.loginResponse(bhs, false, csg, nsg, 0x02, 0x07, [])
            throw new ProtocolError('normal session login without TargetName')
          }
          const t = await this.dir.findTarget(tn, name)
          if ('refused' in t) {
            this.loginResponse(bhs, false, csg, nsg, 0x02, t.refused === 'not-found' ? 0x03 : 0x02, [])
            throw new ProtocolError(`target '${tn}' ${t.refused} for '${name}'`)
          }
          this.entry = t
          reply.push(['TargetPortalGroupTag', '1'])
        }
        first = false
      }
      const chap = this.entry?.chap
      const authFail = (why: string): never => {
        this.loginResponse(bhs, false, csg, nsg, 0x02, 0x01, []) // authentication failure
        throw new ProtocolError(`authentication failed for '${this.initiator}': ${why}`)
      }
      if (csg !== 0 && chap && !this.authenticated) authFail('CHAP is required but the security stage was skipped')
      if (csg === 0) {
        const offered = get('AuthMethod')
        if (offered !== undefined) {
          const methods = offered.split(',')
          if (chap) {
            if (!methods.includes('CHAP')) authFail(`CHAP required, offered '${offered}'`)
            reply.push(['AuthMethod', 'CHAP'])
          } else {
            if (!methods.includes('None')) authFail(`no acceptable AuthMethod in '${offered}'`)
            reply.push(['AuthMethod', 'None'])
          }
        }
        if (chap && get('CHAP_A') !== undefined) {
          if (!get('CHAP_A')!.split(',').includes('5')) authFail(`no supported CHAP algorithm in '${get('CHAP_A')}' (MD5, 5)`)
          this.chapSent = { id: randomBytes(1)[0], challenge: randomBytes(16) }
          reply.push(['CHAP_A', '5'], ['CHAP_I', String(this.chapSent.id)], ['CHAP_C', '0x' + this.chapSent.challenge.toString('hex')])
        }
        if (chap && get('CHAP_R') !== undefined) {
          const r = chapBinary(get('CHAP_R'))
          if (!this.chapSent || !r) authFail('CHAP_R without a challenge, or malformed')
          const want = chapResponse(this.chapSent!.id, chap.secret, this.chapSent!.challenge)
          if (get('CHAP_N') !== chap.user || r!.length !== want.length || !timingSafeEqual(r!, want)) authFail('wrong CHAP name or response')
          // mutual CHAP: the initiator challenges us in turn
          const ci = get('CHAP_I')
          const cc = chapBinary(get('CHAP_C'))
          if (ci !== undefined || cc) {
            if (!chap.mutualUser || !chap.mutualSecret) authFail('mutual CHAP asked, but no target secret is configured')
            if (!cc || !/^\d+$/.test(ci ?? '') || Number(ci) > 255) authFail('malformed mutual CHAP challenge')
            if (cc!.equals(this.chapSent!.challenge)) authFail('the initiator reflected our challenge')
            reply.push(['CHAP_N', chap.mutualUser!], ['CHAP_R', '0x' + chapResponse(Number(ci), chap.mutualSecret!, cc!).toString('hex')])
          }
          this.authenticated = true
        }
      }
      for (const [k, v] of keys) {
        if (['InitiatorName', 'SessionType', 'TargetName', 'AuthMethod', 'InitiatorAlias'].includes(k) || k.startsWith('CHAP_')) continue
        reply.push([k, this.negotiate(k, v)])
      }
      if (csg === 1 && transit && nsg === 3) {
        // declare our own limits once, when leaving operational negotiation
        if (!keys.some(([k]) => k === 'MaxRecvDataSegmentLength')) reply.push(['MaxRecvDataSegmentLength', String(TARGET_MAX_RECV)])
      }
      // no leaving the security stage before CHAP is done
      const may = transit && !(csg === 0 && chap && !this.authenticated)
      const done = may && nsg === 3
      if (done && this.entry) {
        this.sessionKey = `${this.nexus} ${this.entry.name}`
        await this.dir.reinstate?.(this.sessionKey, this)
        await this.openTarget(this.entry, bhs, csg, nsg)
      }
      this.loginResponse(bhs, may, csg, nsg, 0, 0, reply, done ? 1 : 0)
      if (done) {
        this.digestsOn = this.headerDigest
        this.dataDigestsOn = this.dataDigest
        this.fullFeaturePhase = true
        return
      }
    }
  }

  /**
   * Opens the target's LU at the end of the login, when the initiator is authenticated: a login
   * left half-way holds nothing open. A disk that has gone since is Not Found; one that cannot
   * be opened (corrupt, broken chain) is a Target Error, with the reason logged.
   */
  private async openTarget(entry: TargetEntry, bhs: Buffer, csg: number, nsg: number): Promise<void> {
    try {
      this.target = { name: entry.name, ...(await entry.open()) }
    } catch (e) {
      const gone = e instanceof StorageError && e.code === 'NotFound'
      if (!gone) this.log.warn({ target: entry.name, err: e instanceof Error ? e.message : String(e) }, 'iscsi: target cannot be opened')
      this.loginResponse(bhs, false, csg, nsg, gone ? 0x02 : 0x03, gone ? 0x03 : 0x00, [])
      throw new ProtocolError(`target '${entry.name}' ${gone ? 'no longer exists' : 'cannot be opened'}`)
    }
  }

  private negotiate(k: string, v: string): string {
    const num = (max: number) => Math.min(Number(v) || 0, max)
    switch (k) {
      case 'HeaderDigest': {
        // the first of the initiator's choices that we support
        const pick = v.split(',').find((x) => x === 'None' || x === 'CRC32C')
        this.headerDigest = pick === 'CRC32C'
        return pick ?? 'Reject'
      }
      case 'DataDigest': {
        const pick = v.split(',').find((x) => x === 'None' || x === 'CRC32C')
        this.dataDigest = pick === 'CRC32C'
        return pick ?? 'Reject'
      }
      case 'MaxRecvDataSegmentLength':
        this.params.maxRecvDataSegmentLength = Math.max(512, Math.min(Number(v) || 8192, 16777215))
        return String(TARGET_MAX_RECV)
      case 'MaxBurstLength':
        this.params.maxBurstLength = num(TARGET_MAX_BURST)
        return String(this.params.maxBurstLength)
      case 'FirstBurstLength':
        this.params.firstBurstLength = num(TARGET_FIRST_BURST)
        return String(this.params.firstBurstLength)
      case 'InitialR2T':
        this.params.initialR2T = v === 'Yes' // OR: Yes if either says Yes; we are content with No
        return this.params.initialR2T ? 'Yes' : 'No'
      case 'ImmediateData':
        this.params.immediateData = v === 'Yes' // AND
        return this.params.immediateData ? 'Yes' : 'No'
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

  // ---- full feature phase ----------------------------------------------------------------

  private async fullFeature(): Promise<void> {
    for (;;) {
      // replies the client does not read: read no further request until they drain
      if (this.budget.used > this.budget.limit) await this.budget.room()
      const pdu = await this.readPdu()
      const op = P.opcodeOf(pdu.bhs)
      if (pdu.digestError) {
        this.dataDigestError(pdu)
        continue
      }
      if (pdu.ignored) continue
      if (NUMBERED.has(op) && !P.immediateOf(pdu.bhs)) this.expCmdSN = (pdu.bhs.readUInt32BE(24) + 1) >>> 0
      switch (op) {
        case P.NOP_OUT:
          this.nop(pdu)
          break
        case P.SCSI_COMMAND: {
          if (this.discovery || !this.target) {
            this.reject(pdu.bhs, P.REJECT_PROTOCOL_ERROR)
            break
          }
          const windowed = !P.immediateOf(pdu.bhs)
          if (!windowed && this.immediates >= MAX_IMMEDIATE) {
            this.reject(pdu.bhs, P.REJECT_IMMEDIATE_COMMAND)
            break
          }
          this.alone = this.tasks.size === 0
          // a command in the window holds its slot until its status is sent (see `seq`)
          if (windowed) this.running++
          else this.immediates++
          const task = this.command(pdu, windowed).catch((e) => {
            this.log.error({ err: e }, 'iscsi: command failed')
            if (windowed) this.running--
          })
          this.tasks.add(task)
          void task.finally(() => {
            this.tasks.delete(task)
            if (!windowed) this.immediates--
          })
          break
        }
        case P.SCSI_DATA_OUT:
          this.dataOut(pdu)
          break
        case P.TEXT_REQUEST:
          await this.text(pdu)
          break
        case P.TASK_MGMT_REQUEST:
          this.taskManagement(pdu)
          break
        case P.LOGOUT_REQUEST: {
          await Promise.allSettled([...this.tasks])
          const b = P.bhs(P.LOGOUT_RESPONSE, 0x80, 0)
          b.writeUInt32BE(P.ittOf(pdu.bhs), 16)
          this.seq(b)
          this.send(b)
          this.sock.end()
          return
        }
        default:
          this.reject(pdu.bhs, P.REJECT_COMMAND_NOT_SUPPORTED)
      }
    }
  }

  /**
   * A PDU whose data digest is wrong (RFC 7143 §7.8) is answered by a Reject and discarded. At
   * ErrorRecoveryLevel 0 the command it belongs to ends: a Data-Out fails its write, and a
   * command's immediate data fails the command, both with PROTOCOL SERVICE CRC ERROR.
   */
  private dataDigestError(pdu: P.Pdu): void {
    this.metrics.protocolErrors.inc({ protocol: 'iscsi' })
    this.log.info({ peer: this.sock.remoteAddress, opcode: P.opcodeOf(pdu.bhs) }, 'iscsi: data digest error')
    this.reject(pdu.bhs, P.REJECT_DIGEST_ERROR)
    const op = P.opcodeOf(pdu.bhs)
    if (op === P.SCSI_DATA_OUT) {
      const w = this.pending.get(P.ittOf(pdu.bhs))
      if (w) {
        w.failed = 'digest'
        if (P.finalOf(pdu.bhs)) w.done()
      }
    } else if (op === P.SCSI_COMMAND) {
      // the CmdSN was used (one outside the window was ignored unread); the command ends here
      if (!P.immediateOf(pdu.bhs)) this.expCmdSN = (pdu.bhs.readUInt32BE(24) + 1) >>> 0
      this.response(P.ittOf(pdu.bhs), S.CHECK_CONDITION, crcErrorSense(), 0, 0, false)
    }
  }

  private gone(): boolean {
    return this.ending || this.isClosed()
  }

  private get lu(): LogicalUnit | null {
    return this.target?.lu ?? null
  }

  private reject(bhs: Buffer, reason: number): void {
    const b = P.bhs(P.REJECT, 0x80, 0)
    b[2] = reason
    b.writeUInt32BE(P.RESERVED_TAG, 16)
    this.seq(b)
    b.writeUInt32BE(0, 36) // DataSN/R2TSN
    this.send(b, Buffer.from(bhs))
  }

  private nop(pdu: P.Pdu): void {
    const itt = P.ittOf(pdu.bhs)
    if (itt === P.RESERVED_TAG) return // a ping answering our NOP-In (we send none) or a one-way ping
    const b = P.bhs(P.NOP_IN, 0x80, 0)
    pdu.bhs.copy(b, 8, 8, 16) // LUN
    b.writeUInt32BE(itt, 16)
    b.writeUInt32BE(P.RESERVED_TAG, 20)
    this.seq(b, false)
    this.send(b, pdu.data.subarray(0, Math.min(pdu.data.length, this.params.maxRecvDataSegmentLength)))
  }

  private async text(pdu: P.Pdu): Promise<void> {
    let keys: [string, string][] = []
    try {
      keys = P.parseText(pdu.data)
    } catch {
      this.reject(pdu.bhs, P.REJECT_INVALID_PDU_FIELD)
      return
    }
    const reply: [string, string][] = []
    for (const [k, v] of keys) {
      if (k === 'SendTargets') {
        const all = await this.dir.visibleTargets(this.initiator)
        const names = v === 'All' || v === '' ? all : all.filter((n) => n === v)
        for (const n of names) reply.push(['TargetName', n], ['TargetAddress', `${this.dir.portal},1`])
      } else reply.push([k, 'NotUnderstood'])
    }
    const b = P.bhs(P.TEXT_RESPONSE, 0x80, 0)
    b.writeUInt32BE(P.ittOf(pdu.bhs), 16)
    b.writeUInt32BE(P.RESERVED_TAG, 20)
    this.seq(b)
    this.send(b, P.encodeText(reply))
  }

  private taskManagement(pdu: P.Pdu): void {
    const fn = pdu.bhs[1] & 0x7f
    const b = P.bhs(P.TASK_MGMT_RESPONSE, 0x80, 0)
    b.writeUInt32BE(P.ittOf(pdu.bhs), 16)
    // ABORT TASK of a task no longer here: "task does not exist"; everything else completes
    // (tasks are short and finish on their own; resets need no state beyond reservations).
    b[2] = fn === 1 && !this.pending.has(pdu.bhs.readUInt32BE(20)) ? 1 : fn >= 1 && fn <= 8 ? 0 : 5
    if (fn === 5) this.lu?.reset('lun')
    else if (fn === 6 || fn === 7) this.lu?.reset('target') // TARGET WARM/COLD RESET
    this.seq(b)
    this.send(b)
  }

  private dataOut(pdu: P.Pdu): void {
    const itt = P.ittOf(pdu.bhs)
    const w = this.pending.get(itt)
    const offset = pdu.bhs.readUInt32BE(40)
    if (!w) {
      this.reject(pdu.bhs, P.REJECT_PROTOCOL_ERROR)
      return
    }
    const dataSN = pdu.bhs.readUInt32BE(36)
    // DataPDUInOrder=Yes: each PDU continues where the last one ended; anything else (or data
    // past the expected length, or past FirstBurstLength before the first R2T) fails the command
    if (dataSN !== w.dataSN || offset !== w.received || offset + pdu.data.length > w.buf.length) {
      // ErrorRecoveryLevel 0: a sequence error fails the command (no SNACK recovery)
      w.failed = 'sequence'
      this.reject(pdu.bhs, P.REJECT_PROTOCOL_ERROR)
      if (P.finalOf(pdu.bhs)) w.done()
      return
    }
    w.dataSN++
    if (!pdu.direct) pdu.data.copy(w.buf, offset)
    w.received += pdu.data.length
    if (P.finalOf(pdu.bhs) && w.received >= w.buf.length) w.done()
    else if (P.finalOf(pdu.bhs)) w.done() // end of this burst: the command loop sends the next R2T
  }

  /**
   * Runs a SCSI command and sends its status (a SCSI Response, the last Data-In, or a Reject).
   * `windowed`: it holds a CmdSN window slot, freed by the PDU that carries its status.
   */
  private async command(pdu: P.Pdu, windowed: boolean): Promise<void> {
    const { bhs } = pdu
    const itt = P.ittOf(bhs)
    const read = (bhs[1] & 0x40) !== 0
    const write = (bhs[1] & 0x20) !== 0
    const edtl = bhs.readUInt32BE(20)
    const cdb = Buffer.from(bhs.subarray(32, 48))
    const lu = this.target!.lu
    const t0 = process.hrtime.bigint()
    if (bhs.readBigUInt64BE(8) !== 0n) {
      // only LUN 0 exists
      const sense = Buffer.alloc(18)
      sense[0] = 0x70
      sense[2] = S.ILLEGAL_REQUEST
      sense[7] = 10
      sense[12] = 0x25
      this.response(itt, S.CHECK_CONDITION, sense, 0, 0, windowed)
      this.account(cdb[0], t0, S.CHECK_CONDITION, 0, 0)
      return
    }
    if (write && edtl > MAX_EXPECTED_DATA) {
      if (windowed) this.running--
      this.reject(bhs, P.REJECT_INVALID_PDU_FIELD)
      return
    }
    // Bytes this command holds in the budget, taken at once: its data-out buffer and what the LU
    // reads. One needing more than the whole budget (ORWRITE, or VERIFY with BYTCHK 3, of over
    // 16 MiB) waits until it has the budget to itself.
    const need = Math.min(DATA_BUDGET, (write ? edtl : 0) + mediumReadLength(cdb))
    // Unsolicited Data-Out follows the command (InitialR2T=No, F clear) whether or not there is
    // room: it is taken into a buffer of at most FirstBurstLength, and the rest waits.
    const unsolicited = write && edtl > 0 && !this.params.initialR2T && !(bhs[1] & 0x80)
    let held = 0
    try {
      let room = need === 0 || this.budget.tryTake(need)
      if (!room && !unsolicited) {
        await this.budget.take(need)
        room = true
      }
      if (room) held = need
      if (this.gone()) return
      let dataOut: Buffer | null = null
      if (write && edtl > 0) {
        const immediate = pdu.data.subarray(0, Math.min(pdu.data.length, edtl))
        if (room) dataOut = edtl >= 64 * 1024 ? writeBuffer(edtl) : Buffer.alloc(edtl)
        else dataOut = Buffer.alloc(Math.max(immediate.length, Math.min(edtl, this.params.firstBurstLength)))
        immediate.copy(dataOut)
        let have = immediate.length
        if (have < edtl) {
          const w: PendingWrite = { buf: dataOut, received: have, ttt: 0, dataSN: 0, failed: false, done: () => {} }
          this.pending.set(itt, w)
          try {
            if (unsolicited) {
              const until = Math.min(edtl, this.params.firstBurstLength)
              if (have < until) {
                await new Promise<void>((r) => (w.done = r))
                have = w.received
              }
            }
            if (!room && !w.failed && !this.gone()) {
              await this.budget.take(need)
              held = need
              room = true
              const full = edtl >= 64 * 1024 ? writeBuffer(edtl) : Buffer.alloc(edtl)
              w.buf.copy(full, 0, 0, w.received)
              w.buf = dataOut = full
            }
            let r2tsn = 0
            while (w.received < edtl && !this.gone() && !w.failed) {
              w.dataSN = 0 // each R2T starts a new data sequence
              const len = Math.min(this.params.maxBurstLength, edtl - w.received)
              const ttt = this.nextTTT++ >>> 0
              w.ttt = ttt
              const wait = new Promise<void>((r) => (w.done = r))
              const r2t = P.bhs(P.R2T, 0x80, 0)
              bhs.copy(r2t, 8, 8, 16)
              r2t.writeUInt32BE(itt, 16)
              r2t.writeUInt32BE(ttt, 20)
              this.seq(r2t, false)
              r2t.writeUInt32BE(r2tsn++, 36)
              r2t.writeUInt32BE(w.received, 40)
              r2t.writeUInt32BE(len, 44)
              this.send(r2t)
              await wait
            }
          } finally {
            this.pending.delete(itt)
          }
          if (this.gone()) return
          if (w.failed) {
            const sense = w.failed === 'digest' ? crcErrorSense() : senseData(new SenseError(S.ABORTED_COMMAND, 'DATA_PHASE_ERROR'))
            this.response(itt, S.CHECK_CONDITION, sense, 0, 0, windowed)
            this.account(cdb[0], t0, S.CHECK_CONDITION, 0, 0)
            return
          }
        }
      }
      if (!room) {
        // a write whose data all came unsolicited
        await this.budget.take(need)
        held = need
        if (this.gone()) return
      }
      // Residuals (RFC 7143 §11.4.5): compare the initiator's expected length with the SCSI
      // transfer length; on overflow only what both agree on is written.
      let execCdb: Buffer = cdb
      let flags = 0
      let residual = 0
      let written = dataOut?.length ?? 0
      if (write) {
        const need = dataOutLength(cdb)
        if (need) written = Math.min(written, need.bytes)
        if (need && need.bytes !== edtl) {
          if (edtl < need.bytes) {
            flags = 0x04
            residual = need.bytes - edtl
            if (need.shrink) execCdb = need.shrink(Math.floor(edtl / 512))
          } else {
            flags = 0x02
            residual = edtl - need.bytes
          }
        }
      }
      const res = await lu.execute(execCdb, dataOut, this.nexus)
      if (dataOut && dataOut.length >= 64 * 1024) recycle(dataOut)
      const dataIn = res.dataIn ?? Buffer.alloc(0)
      const ok = res.status === S.GOOD
      this.account(cdb[0], t0, res.status, ok && read ? Math.min(dataIn.length, edtl) : 0, ok ? written : 0)
      if (read && res.status !== S.CHECK_CONDITION && dataIn.length > 0 && edtl > 0) {
        this.dataIn(bhs, itt, dataIn, edtl, res.status, windowed)
        return
      }
      if (read && res.status !== S.CHECK_CONDITION) {
        if (dataIn.length > edtl) {
          flags = 0x04
          residual = dataIn.length - edtl
        } else if (dataIn.length < edtl) {
          flags = 0x02
          residual = edtl - dataIn.length
        }
      }
      this.response(itt, res.status, res.sense, flags, residual, windowed)
    } finally {
      if (held) this.budget.give(held)
    }
  }

  /** Data-In, the last one with the status; `slot`: the command's window slot is freed with it. */
  private dataIn(cmd: Buffer, itt: number, data: Buffer, edtl: number, status: number, slot: boolean): void {
    const over = data.length > edtl
    // the part sent of a longer result is copied, so the socket's queue holds no more than it counts
    const send = over ? Buffer.from(data.subarray(0, edtl)) : data
    const under = data.length < edtl
    const seg = this.params.maxRecvDataSegmentLength
    let sn = 0
    for (let off = 0; off < send.length || (off === 0 && send.length === 0); off += seg) {
      const chunk = send.subarray(off, Math.min(off + seg, send.length))
      const last = off + seg >= send.length
      const b = P.bhs(P.SCSI_DATA_IN, (last ? 0x80 | 0x01 | (over ? 0x04 : 0) | (under ? 0x02 : 0) : 0), 0)
      if (last) b[3] = status
      cmd.copy(b, 8, 8, 16)
      b.writeUInt32BE(itt, 16)
      b.writeUInt32BE(P.RESERVED_TAG, 20)
      if (last && slot) this.running--
      this.seq(b, last)
      b.writeUInt32BE(sn++, 36)
      b.writeUInt32BE(off, 40)
      if (last) b.writeUInt32BE(over ? data.length - edtl : under ? edtl - data.length : 0, 44)
      this.send(b, chunk)
      if (last) break
    }
  }

  /**
   * A command's metrics: its op class, its latency up to the LU's answer, an error for any
   * status but GOOD, the bytes read and written (DESIGN §7: /metrics, as the NBD exports).
   */
  private account(opcode: number, t0: bigint, status: number, read: number, written: number): void {
    this.tally ??= this.metrics.tally(this.target!.name, 'iscsi')
    this.tally.request(metricsClass(opcode), t0, status !== S.GOOD, read, written)
  }

  /** SCSI Response; `slot`: the command's window slot is freed with it. */
  private response(itt: number, status: number, sense: Buffer | undefined, flags: number, residual: number, slot: boolean): void {
    if (slot) this.running--
    const b = P.bhs(P.SCSI_RESPONSE, 0x80 | flags, 0)
    b[2] = 0 // command completed at target
    b[3] = status
    b.writeUInt32BE(itt, 16)
    this.seq(b)
    b.writeUInt32BE(residual, 44)
    let data = Buffer.alloc(0)
    if (sense) {
      data = Buffer.alloc(2 + sense.length)
      data.writeUInt16BE(sense.length, 0)
      sense.copy(data, 2)
    }
    this.send(b, data)
  }
}

import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import type { BlockDevice, Capabilities, Extent, WriteOptions, ZeroOptions } from '../../../disk-formats/block-device.js'
import { StorageError, type StorageErrorCode } from '../../../disk-formats/errors.js'
import { Basic, BHS_LENGTH, header } from '../../../server/iscsi/bhs.js'
import { writeField } from '../../../disk-formats/struct.js'
import { PduBatch, PduSplitter, type Digests } from '../../../server/iscsi/framing.js'
import * as P from '../../../server/iscsi/pdu.js'
import * as S from '../../../server/scsi/constants.js'
import { parseIscsiUri, type IscsiUri } from './uri.js'
import { chapBinary, chapResponse } from '../../../server/iscsi/chap.js'
import { realTimers, type Timers } from '../../../server/net/timers.js'
import { reconnect, reconnectPolicy, type ReconnectPolicy } from './recovery.js'
import { ABORT_TASK, escalate, LOGICAL_UNIT_RESET, TmfRequests, tmfRequest, type Escalating } from './task-mgmt.js'

export interface InitiatorOptions {
  /** our iSCSI name (default: iqn.2026-11.local.tandem:initiator) */
  initiatorName?: string
  /** CHAP; the URI's USER%PASSWORD are used when these are absent */
  chap?: { user: string; secret: string; mutualUser?: string; mutualSecret?: string }
  headerDigest?: boolean
  dataDigest?: boolean
  /** commands in flight at most (the target's window may allow fewer) */
  queueDepth?: number
  readOnly?: boolean
  /** login must finish within this many ms (default 10 000) */
  timeoutMs?: number
  /**
   * The session's ISID (6 bytes, RFC 7143 §11.12.5): with the initiator name it makes the I_T
   * nexus that reservations belong to. Fixed, the nexus is the same from any host and any process;
   * absent, a random one (type 2) kept for the initiator's life (reconnects reinstate its session).
   */
  isid?: Buffer
  /**
   * A command with no answer in this many ms is aborted, then the LU reset, then the connection
   * dropped and the session recovered (task-mgmt.ts `escalate`); 0: never. Default 30 000.
   */
  commandTimeoutMs?: number
  /** each task management request's own time limit (default 10 000 ms) */
  taskManagementTimeoutMs?: number
  /** times one command is sent at most after timeouts before it fails (default 3) */
  commandAttempts?: number
  /** logins after a lost connection (recovery.ts); `{ attempts: 0 }` turns recovery off */
  reconnect?: ReconnectPolicy
  timers?: Timers
}

/** The outcome of one SCSI command. */
export interface ScsiResult {
  status: number
  /** Data-In (truncated to what the target sent) */
  data: Buffer
  /** fixed or descriptor sense data when status is CHECK CONDITION */
  sense: Buffer
  residual: number
  /** times the command was sent: more than 1 after a lost connection, an abort or a unit attention */
  sent: number
}

/** A SCSI command that ended in CHECK CONDITION (or another bad status), with its sense. */
export class ScsiStatusError extends StorageError {
  constructor(
    code: StorageErrorCode,
    message: string,
    readonly status: number,
    readonly senseKey: number,
    readonly asc: number,
    readonly ascq: number,
    /** times the command was sent (as ScsiResult.sent) */
    readonly sent = 1,
  ) {
    super(code, message)
  }
}

export const DEFAULT_INITIATOR = 'iqn.2026-11.local.tandem:initiator'

/** Our receive limit (declared at login): Data-In segments are at most this long. */
const OUR_MAX_RECV = 262144
const OUR_MAX_BURST = 1 << 20
/** Bytes are received into a reused buffer this big (when no large Data-In segment is being placed). */
const RECV_CHUNK = 64 * 1024
/** The rest of a Data-In segment is received straight into its command's buffer when at least this much of it is missing. */
const DIRECT_MIN = 32 * 1024
/** Unit attentions queued per I_T nexus are few (reset, parameters, reservations): retries for one command. */
const UNIT_ATTENTION_RETRIES = 8
/** Largest single READ/WRITE we issue: bounded so one command's buffer stays modest. */
const MAX_TRANSFER = 8 << 20

interface Task {
  /** tag of the instance sent last (a new one each time it is sent) */
  itt: number
  cmdSN: number
  cdb: Buffer
  out: Buffer | null
  inBuf: Buffer | null
  inGot: number
  sent: number
  /** the command timer of the instance sent last */
  timer: unknown
  /** an ABORT TASK for it is in flight: an "aborted" answer is not its result */
  aborting: boolean
  /** `command`'s: a status but GOOD rejects (statusError); a UNIT ATTENTION sends it again */
  strict: boolean
  /** unit attentions it was sent again after */
  attentions: number
  resolve(r: ScsiResult): void
  reject(e: Error): void
}

const NO_DATA = Buffer.alloc(0)

/** Tags of instances given up (aborted, or sent again) whose late PDUs are dropped; bounded. */
const RETIRED_MAX = 4096

/** Serial number arithmetic (RFC 1982) on 32-bit sequence numbers: a <= b. */
const snLe = (a: number, b: number) => a === b || ((b - a) >>> 0) < 0x8000_0000

/**
 * An iSCSI initiator (RFC 7143; one connection per session, ErrorRecoveryLevel 0): login with
 * None, CHAP or mutual CHAP, CRC32C header and data digests, immediate and unsolicited data and
 * R2T/Data-Out, a command window (CmdSN up to the target's MaxCmdSN) and a queue depth.
 * `execute` is the raw SCSI path; the rest is a BlockDevice over READ/WRITE(16), SYNCHRONIZE
 * CACHE(16), WRITE SAME(16), UNMAP, GET LBA STATUS and COMPARE AND WRITE.
 *
 * A lost connection is recovered (recovery.ts): the session logs in again under the same ISID
 * and name (session reinstatement) and every command not answered is sent again, so a caller
 * sees each command answered once, or failed with SessionLostError once the target stays away.
 * A command with no answer in time goes through ABORT TASK, LOGICAL UNIT RESET, then a dropped
 * connection (task-mgmt.ts).
 */
export class IscsiInitiator implements BlockDevice, Escalating<Task> {
  size = 0
  blockSize = 512
  readonly readOnly: boolean
  private cmdSN = 1
  private expStatSN = 0
  private maxCmdSN = 1
  private nextItt = 1
  private readonly tasks = new Map<number, Task>()
  private readonly waiting: (() => void)[] = []
  private dead: Error | null = null
  /** the digests in force on the current connection (off during each login) */
  private readonly digests: Digests = { header: false, data: false }
  private splitter!: PduSplitter
  private readonly bhs = Buffer.alloc(BHS_LENGTH)
  private batch!: PduBatch
  /** the login's answers not yet read, and what ended the connection before the login did */
  private loginPdus: P.Pdu[] = []
  private loginError: StorageError | null = null
  private loginWake: (() => void) | null = null
  /** negotiated: what the target accepts per PDU, and per burst */
  private targetMaxRecv = 8192
  private maxBurst = 262144
  private firstBurst = 65536
  private immediateData = true
  private initialR2T = true
  private readonly lunBytes: Buffer
  private closing: Promise<void> | null = null
  /** thin provisioning (READ CAPACITY 16 LBPME): GET LBA STATUS answers */
  private thin = false
  /** the connection of the session; replaced by `establish` after a loss */
  private sock!: Socket
  private connected = false
  /** counts connections: a receive loop of an earlier one stops */
  private generation = 0
  /** the session's ISID, the same at every login (RFC 7143 §6.3.5: reinstatement) */
  private readonly isid: Buffer
  private readonly timers: Timers
  private readonly tmf: TmfRequests
  /** tasks given a tag and a CmdSN but not sent: the window was closed */
  private readonly backlog: Task[] = []
  private readonly retired = new Set<number>()
  /** commands whose timer fired, waiting for the escalation in progress */
  private readonly late = new Set<Task>()
  private escalating = false
  /** logins after a loss, and the ABORT TASK / LU RESET / drop steps taken (for tests and logs) */
  readonly recoveries = { reconnects: 0, aborts: 0, resets: 0, drops: 0 }

  private constructor(
    readonly uri: IscsiUri,
    private readonly opts: InitiatorOptions,
  ) {
    this.readOnly = opts.readOnly ?? false
    this.lunBytes = Buffer.alloc(8)
    this.lunBytes[1] = uri.lun // single-level LUN, peripheral addressing (SAM-5 §4.7)
    // one ISID for the initiator's life: a reconnect reinstates the same session (RFC 7143 §6.3.5)
    this.isid = opts.isid ? Buffer.from(opts.isid) : randomBytes(6)
    if (!opts.isid) this.isid[0] = 0x80 | (this.isid[0] & 0x3f) // type 2: random
    this.timers = opts.timers ?? realTimers
    this.tmf = new TmfRequests(this.timers)
  }

  static async connect(target: string | IscsiUri, opts: InitiatorOptions = {}): Promise<IscsiInitiator> {
    const uri = typeof target === 'string' ? parseIscsiUri(target) : target
    if (opts.isid && opts.isid.length !== 6) throw new StorageError('InvalidArgument', `an ISID is 6 bytes, not ${opts.isid.length}`)
    const ini = new IscsiInitiator(uri, opts)
    await ini.establish()
    try {
      await ini.readCapacity()
    } catch (e) {
      await ini.close().catch(() => undefined)
      throw e
    }
    return ini
  }

  get where(): string {
    return `${this.uri.host}:${this.uri.port}`
  }

  /** Opens a connection and logs in; the session is then in full feature phase on it. */
  async establish(): Promise<void> {
    const uri = this.uri
    const gen = ++this.generation
    // digests start after the login; each login negotiates them anew
    this.digests.header = this.digests.data = false
    this.loginPdus = []
    this.loginError = null
    const splitter = new PduSplitter(
      this.digests,
      OUR_MAX_RECV,
      (m) => new StorageError('IoError', `iSCSI: ${m}`),
      (bhs) => (P.opcodeOf(bhs) === P.SCSI_DATA_IN ? (this.tasks.get(P.ittOf(bhs))?.inBuf ?? null) : null),
      (pdu) => this.arrived(splitter, pdu),
    )
    // Bytes are received into one reused buffer, or, for the rest of a large Data-In segment,
    // straight into the command's buffer: no buffer per read, no copy of a large payload.
    const scratch = Buffer.allocUnsafe(RECV_CHUNK)
    const sock = connect({
      host: uri.host,
      port: uri.port,
      onread: {
        buffer: () => splitter.receiveInto(DIRECT_MIN, scratch),
        callback: (n: number, buf: Uint8Array) => this.received(gen, splitter, buf as Buffer, n),
      },
    })
    sock.setNoDelay(true)
    const where = this.where
    sock.on('end', () => this.ended(gen, new StorageError('IoError', `iSCSI ${where}: the target closed the connection`)))
    sock.on('close', () => this.ended(gen, new StorageError('IoError', `iSCSI ${where}: connection closed`)))
    sock.on('error', (e: NodeJS.ErrnoException) => this.ended(gen, new StorageError('IoError', `iSCSI ${where}: ${e.code ?? e.message}`, undefined, { cause: e })))
    this.sock = sock
    this.splitter = splitter
    this.batch = new PduBatch(sock, this.digests)
    const timeoutMs = this.opts.timeoutMs ?? 10_000
    const timer = this.timers.setTimeout(() => {
      this.ended(gen, new StorageError('IoError', `iSCSI ${where}: no login within ${timeoutMs} ms`))
      sock.destroy()
    }, timeoutMs)
    try {
      await this.login()
    } catch (e) {
      sock.destroy()
      throw e
    } finally {
      this.timers.clearTimeout(timer)
    }
    this.connected = true
    this.retired.clear()
    // what came after the last login answer is read with the digests negotiated
    this.parsing(gen, () => splitter.resume())
  }

  /** The owner closed the session: a recovery in progress gives up. */
  stopped(): boolean {
    return this.dead !== null
  }

  // ---- PDUs ----------------------------------------------------------------------------------

  /** Every PDU of one turn of the event loop goes out in one write (PduBatch): at a queue depth > 1 many commands are issued together. */
  private send(bhs: Buffer, data?: Buffer): void {
    this.batch.send(bhs, data)
  }

  /** A header for `send` of the hot path (commands, Data-Out): one reused buffer, as `send` copies it. */
  private header(opcode: number, flags: number): Buffer {
    const b = this.bhs.fill(0)
    writeField(b, Basic.fields.opcode, opcode)
    writeField(b, Basic.fields.flags, flags)
    return b
  }

  /** `n` bytes arrived in `buf` on connection `gen`; false stops reading (the connection is over). */
  private received(gen: number, splitter: PduSplitter, buf: Buffer, n: number): boolean {
    return this.parsing(gen, () => splitter.received(buf, n))
  }

  /** Runs `parse` (PDUs handed to `arrived`) on connection `gen`; a framing or protocol error ends it (false). */
  private parsing(gen: number, parse: () => void): boolean {
    if (gen !== this.generation) return false
    try {
      parse()
      return true
    } catch (e) {
      this.ended(gen, e instanceof StorageError ? e : new StorageError('IoError', `iSCSI: ${(e as Error).message}`))
      return false
    }
  }

  /** Connection `gen` ended (or its framing failed): a login waiting fails; a session in use is recovered. */
  private ended(gen: number, e: StorageError): void {
    if (gen !== this.generation) return
    if (this.connected) this.lost(e)
    else {
      this.loginError ??= e
      this.loginWake?.()
    }
  }

  /** A PDU of the current connection. During the login each is kept (copied) for `nextLoginPdu`, the rest held until it is read. */
  private arrived(splitter: PduSplitter, pdu: P.Pdu): void {
    if (splitter !== this.splitter) return
    if (!this.connected) {
      splitter.hold()
      this.loginPdus.push({ bhs: Buffer.from(pdu.bhs), ahs: NO_DATA, data: Buffer.from(pdu.data), digestError: pdu.digestError })
      this.loginWake?.()
      return
    }
    // a bad data digest ends the session (ErrorRecoveryLevel 0)
    if (pdu.digestError) throw new StorageError('IoError', 'iSCSI: data digest error')
    this.dispatch(pdu)
  }

  /** The target's next PDU during the login. */
  private async nextLoginPdu(): Promise<P.Pdu> {
    this.splitter.resume() // delivers what is held: one PDU at most, each holds the rest again
    while (!this.loginPdus.length) {
      if (this.loginError) throw this.loginError
      await new Promise<void>((r) => (this.loginWake = r))
      this.loginWake = null
    }
    const pdu = this.loginPdus.shift()!
    if (pdu.digestError) throw new StorageError('IoError', 'iSCSI: data digest error')
    return pdu
  }

  // ---- login (RFC 7143 §6) -------------------------------------------------------------------

  private async login(): Promise<void> {
    const isid = this.isid
    const name = this.opts.initiatorName ?? DEFAULT_INITIATOR
    const chap = this.opts.chap ?? (this.uri.user !== undefined ? { user: this.uri.user, secret: this.uri.password ?? '' } : undefined)
    let mutual: { id: number; challenge: Buffer } | null = null
    const itt = this.nextItt++
    const request = async (csg: number, nsg: number, transit: boolean, keys: [string, string][]): Promise<{ bhs: Buffer; keys: Map<string, string> }> => {
      const b = header(P.LOGIN_REQUEST | 0x40, (transit ? 0x80 : 0) | (csg << 2) | nsg)
      isid.copy(b, 8)
      b.writeUInt32BE(itt, 16)
      b.writeUInt32BE(this.cmdSN, 24)
      b.writeUInt32BE(this.expStatSN, 28)
      this.send(b, P.encodeText(keys))
      const r = await this.nextLoginPdu()
      if (P.opcodeOf(r.bhs) !== P.LOGIN_RESPONSE) throw new StorageError('IoError', `iSCSI login: unexpected PDU 0x${P.opcodeOf(r.bhs).toString(16)}`)
      const cls = r.bhs[36]
      const detail = r.bhs[37]
      if (cls !== 0) throw loginError(cls, detail, this.uri.target)
      this.expStatSN = (r.bhs.readUInt32BE(24) + 1) >>> 0
      this.maxCmdSN = r.bhs.readUInt32BE(32)
      return { bhs: r.bhs, keys: new Map(P.parseText(r.data)) }
    }
    // security stage
    const first: [string, string][] = [
      ['InitiatorName', name],
      ['SessionType', 'Normal'],
      ['TargetName', this.uri.target],
      ['AuthMethod', chap ? 'CHAP,None' : 'None'],
    ]
    let r = await request(0, 1, !chap, first)
    const method = r.keys.get('AuthMethod')
    if (chap && method === 'CHAP') {
      r = await request(0, 1, false, [['CHAP_A', '5']])
      const id = Number(r.keys.get('CHAP_I'))
      const challenge = chapBinary(r.keys.get('CHAP_C'))
      if (r.keys.get('CHAP_A') !== '5' || !Number.isInteger(id) || !challenge) throw new StorageError('IoError', 'iSCSI login: malformed CHAP challenge from the target')
      const answer: [string, string][] = [
        ['CHAP_N', chap.user],
        ['CHAP_R', '0x' + chapResponse(id, chap.secret, challenge).toString('hex')],
      ]
      if (chap.mutualUser !== undefined) {
        mutual = { id: randomBytes(1)[0], challenge: randomBytes(16) }
        answer.push(['CHAP_I', String(mutual.id)], ['CHAP_C', '0x' + mutual.challenge.toString('hex')])
      }
      r = await request(0, 1, true, answer)
      if (mutual) {
        const got = chapBinary(r.keys.get('CHAP_R'))
        const want = chapResponse(mutual.id, chap.mutualSecret ?? '', mutual.challenge)
        if (r.keys.get('CHAP_N') !== chap.mutualUser || !got || !got.equals(want)) {
          throw new StorageError('ReadOnly', `iSCSI login to ${this.uri.target}: the target failed mutual CHAP`)
        }
      }
    } else if (method !== 'None') throw new StorageError('Unsupported', `iSCSI login: the target wants AuthMethod '${method}'`)
    // operational stage: what we offer; the target's answers are read back below
    const offer: [string, string][] = [
      ['HeaderDigest', this.opts.headerDigest ? 'CRC32C,None' : 'None'],
      ['DataDigest', this.opts.dataDigest ? 'CRC32C,None' : 'None'],
      ['MaxRecvDataSegmentLength', String(OUR_MAX_RECV)],
      ['ErrorRecoveryLevel', '0'],
      ['InitialR2T', 'No'],
      ['ImmediateData', 'Yes'],
      ['MaxBurstLength', String(OUR_MAX_BURST)],
      ['FirstBurstLength', String(OUR_MAX_BURST)],
      ['MaxConnections', '1'],
      ['DataPDUInOrder', 'Yes'],
      ['DataSequenceInOrder', 'Yes'],
      ['DefaultTime2Wait', '0'],
      ['DefaultTime2Retain', '0'],
      ['MaxOutstandingR2T', '1'],
    ]
    let keys = new Map<string, string>()
    let transit = false
    for (let round = 0; round < 4 && !transit; round++) {
      r = await request(1, 3, true, round === 0 ? offer : [])
      for (const [k, v] of r.keys) keys.set(k, v)
      transit = (r.bhs[1] & 0x80) !== 0 && (r.bhs[1] & 0x03) === 3
    }
    if (!transit) throw new StorageError('IoError', 'iSCSI login: the target did not move to full feature phase')
    const num = (k: string, dflt: number) => (keys.has(k) ? Number(keys.get(k)) : dflt)
    this.digests.header = keys.get('HeaderDigest') === 'CRC32C'
    this.digests.data = keys.get('DataDigest') === 'CRC32C'
    this.targetMaxRecv = num('MaxRecvDataSegmentLength', 8192)
    this.maxBurst = Math.min(num('MaxBurstLength', 262144), OUR_MAX_BURST)
    this.firstBurst = Math.min(num('FirstBurstLength', 65536), this.maxBurst)
    this.immediateData = keys.get('ImmediateData') !== 'No'
    this.initialR2T = keys.get('InitialR2T') !== 'No'
    keys = new Map()
  }

  // ---- full feature phase --------------------------------------------------------------------

  /** One PDU of the target in full feature phase; a protocol error throws (the connection ends). */
  private dispatch(pdu: P.Pdu): void {
    this.window(pdu.bhs)
    switch (P.opcodeOf(pdu.bhs)) {
      case P.SCSI_DATA_IN:
        this.dataIn(pdu)
        break
      case P.SCSI_RESPONSE:
        this.response(pdu)
        break
      case P.R2T:
        this.r2t(pdu.bhs)
        break
      case P.NOP_IN:
        this.nopIn(pdu)
        break
      case P.REJECT: {
        const itt = pdu.data.length >= 20 ? pdu.data.readUInt32BE(16) : P.RESERVED_TAG
        this.finish(itt, new StorageError('IoError', `iSCSI: the target rejected a PDU (reason 0x${pdu.bhs[2].toString(16)})`))
        break
      }
      case P.TASK_MGMT_RESPONSE:
        this.tmf.answer(pdu.bhs)
        break
      case P.LOGOUT_RESPONSE:
      case 0x32: // asynchronous message: nothing we act on
        break
      default:
        throw new StorageError('IoError', `iSCSI: unexpected PDU opcode 0x${P.opcodeOf(pdu.bhs).toString(16)}`)
    }
  }

  /**
   * The connection is gone (closed, reset, a protocol error, or dropped by `escalate`): the
   * session is recovered and every command not answered sent again, or, when recovery is off or
   * fails, every one fails.
   */
  private lost(e: StorageError): void {
    if (!this.connected) return
    this.connected = false
    this.generation++
    this.sock.destroy()
    this.tmf.lost()
    for (const t of this.tasks.values()) this.timers.clearTimeout(t.timer)
    const policy = reconnectPolicy(this.opts.reconnect)
    if (this.dead || policy.attempts === 0) {
      this.fail(this.dead ?? e)
      return
    }
    reconnect(this, e, policy, this.timers).then(
      () => {
        if (this.dead) {
          this.connected = false
          this.generation++
          this.sock.destroy()
          this.fail(this.dead)
          return
        }
        this.recoveries.reconnects++
        this.reissue([...this.tasks.values()])
      },
      (err: Error) => this.fail(err instanceof StorageError ? err : e),
    )
  }

  /** Every command not answered fails with `e`; so does every later one. */
  private fail(e: Error): void {
    this.dead ??= e
    for (const t of this.tasks.values()) {
      this.timers.clearTimeout(t.timer)
      t.reject(this.dead)
    }
    this.tasks.clear()
    this.backlog.length = 0
    for (const w of this.waiting.splice(0)) w()
  }

  /** ExpCmdSN/MaxCmdSN from a target PDU: the window may open. */
  private window(bhs: Buffer): void {
    const op = P.opcodeOf(bhs)
    if (op === P.SCSI_RESPONSE || op === P.NOP_IN || op === P.R2T || op === P.SCSI_DATA_IN || op === P.TASK_MGMT_RESPONSE || op === P.LOGOUT_RESPONSE || op === P.REJECT) {
      const max = bhs.readUInt32BE(32)
      if (snLe(this.maxCmdSN, max)) this.maxCmdSN = max
      const statusPresent = op !== P.SCSI_DATA_IN || (bhs[1] & 0x01) !== 0
      if (statusPresent && op !== P.R2T) {
        const statSN = bhs.readUInt32BE(24)
        if (snLe(this.expStatSN, statSN)) this.expStatSN = (statSN + 1) >>> 0
      }
      this.wake()
    }
  }

  /** Sends what waited for the window: tasks sent again first, then new commands. */
  private wake(): void {
    while (this.backlog.length && this.connected && snLe(this.cmdSN, this.maxCmdSN)) this.transmit(this.backlog.shift()!)
    while (this.waiting.length && this.canSend()) this.waiting.shift()!()
  }

  private canSend(): boolean {
    return this.connected && !this.backlog.length && snLe(this.cmdSN, this.maxCmdSN) && this.tasks.size < (this.opts.queueDepth ?? 32)
  }

  /** A PDU for a tag given up: dropped (true); for no task at all: a protocol error. */
  private stale(itt: number, last: boolean): boolean {
    if (!this.retired.has(itt)) return false
    if (last) this.retired.delete(itt)
    return true
  }

  private dataIn(pdu: P.Pdu): void {
    const itt = P.ittOf(pdu.bhs)
    const t = this.tasks.get(itt)
    if (!t) {
      if (this.stale(itt, (pdu.bhs[1] & 0x01) !== 0)) return
      throw new StorageError('IoError', `iSCSI: Data-In for unknown task ${itt}`)
    }
    const off = pdu.bhs.readUInt32BE(40)
    if (!t.inBuf || off + pdu.data.length > t.inBuf.length) throw new StorageError('IoError', 'iSCSI: Data-In beyond the expected length')
    // placed: the data is in t.inBuf already (its buffer was the placement asked of the splitter)
    if (!pdu.direct) pdu.data.copy(t.inBuf, off)
    t.inGot = Math.max(t.inGot, off + pdu.data.length)
    if (pdu.bhs[1] & 0x01) {
      // status in the last Data-In (phase collapse)
      const residual = pdu.bhs[1] & 0x06 ? pdu.bhs.readUInt32BE(44) : 0
      this.complete(t, { status: pdu.bhs[3], data: gotOf(t), sense: NO_DATA, residual, sent: t.sent })
    }
  }

  private response(pdu: P.Pdu): void {
    const itt = P.ittOf(pdu.bhs)
    const t = this.tasks.get(itt)
    if (!t) {
      if (this.stale(itt, true)) return
      throw new StorageError('IoError', `iSCSI: response for unknown task ${itt}`)
    }
    if (pdu.bhs[2] !== 0) {
      this.finish(t.itt, new StorageError('IoError', `iSCSI: target failure (response 0x${pdu.bhs[2].toString(16)})`))
      return
    }
    let sense = NO_DATA
    if (pdu.data.length >= 2) sense = Buffer.from(pdu.data.subarray(2, 2 + pdu.data.readUInt16BE(0)))
    const residual = pdu.bhs[1] & 0x06 ? pdu.bhs.readUInt32BE(44) : 0
    this.complete(t, { status: pdu.bhs[3], data: t.inBuf ? gotOf(t) : NO_DATA, sense, residual, sent: t.sent })
  }

  private r2t(bhs: Buffer): void {
    const itt = P.ittOf(bhs)
    const t = this.tasks.get(itt)
    if (!t && this.stale(itt, false)) return
    if (!t || !t.out) throw new StorageError('IoError', 'iSCSI: R2T for a task with no data to send')
    const ttt = bhs.readUInt32BE(20)
    const off = bhs.readUInt32BE(40)
    const len = bhs.readUInt32BE(44)
    if (off + len > t.out.length) throw new StorageError('IoError', 'iSCSI: R2T beyond the command\'s data')
    this.dataOut(t, ttt, off, len)
  }

  /** Data-Out PDUs for [off, off+len) of the task's data, each at most the target's segment size. */
  private dataOut(t: Task, ttt: number, off: number, len: number): void {
    let sn = 0
    for (let at = 0; at < len; at += this.targetMaxRecv) {
      const n = Math.min(this.targetMaxRecv, len - at)
      const b = this.header(P.SCSI_DATA_OUT, at + n >= len ? 0x80 : 0)
      this.lunBytes.copy(b, 8)
      b.writeUInt32BE(t.itt, 16)
      b.writeUInt32BE(ttt, 20)
      b.writeUInt32BE(this.expStatSN, 28)
      b.writeUInt32BE(sn++, 36)
      b.writeUInt32BE(off + at, 40)
      this.send(b, t.out!.subarray(off + at, off + at + n))
    }
  }

  private nopIn(pdu: P.Pdu): void {
    const ttt = pdu.bhs.readUInt32BE(20)
    if (ttt === P.RESERVED_TAG) return // an answer to our ping, or an unsolicited notice
    const b = header(P.NOP_OUT | 0x40, 0x80)
    this.lunBytes.copy(b, 8)
    b.writeUInt32BE(P.RESERVED_TAG, 16)
    b.writeUInt32BE(ttt, 20)
    b.writeUInt32BE(this.cmdSN, 24)
    b.writeUInt32BE(this.expStatSN, 28)
    // the ping's data is a view of the receive buffer: the echo takes a copy
    this.send(b, pdu.data.length ? Buffer.from(pdu.data) : undefined)
  }

  private complete(t: Task, r: ScsiResult): void {
    // the answer of an instance being aborted that says so is no result: the abort's outcome decides
    if (t.aborting && (r.status === S.TASK_ABORTED || senseOf(r.sense).key === S.ABORTED_COMMAND)) return
    this.tasks.delete(t.itt)
    this.timers.clearTimeout(t.timer)
    if (t.strict && r.status !== S.GOOD) {
      const e = statusError(t.cdb[0], r, t.sent)
      // a UNIT ATTENTION (a reset, a changed parameter: SAM-5 §5.14) reports an event, not a failure of this command
      if (e.senseKey === S.UNIT_ATTENTION && t.attentions++ < UNIT_ATTENTION_RETRIES) this.issue(t)
      else t.reject(e)
    } else t.resolve(r)
    this.wake()
  }

  private finish(itt: number, e: Error): void {
    const t = this.tasks.get(itt)
    if (!t) return
    this.tasks.delete(itt)
    this.timers.clearTimeout(t.timer)
    t.reject(e)
    this.wake()
  }

  /** Gives the task a new tag and CmdSN and sends it, or queues it until the window opens. */
  private issue(t: Task): void {
    t.itt = this.nextItt
    this.nextItt = (this.nextItt + 1) >>> 0 || 1
    t.aborting = false
    this.tasks.set(t.itt, t)
    if (this.connected && !this.backlog.length && snLe(this.cmdSN, this.maxCmdSN)) this.transmit(t)
    else this.backlog.push(t)
  }

  /** The SCSI Command PDU of the task, its immediate and unsolicited data; starts its timer. */
  private transmit(t: Task): void {
    const outLen = t.out?.length ?? 0
    const inLen = t.inBuf?.length ?? 0
    t.inGot = 0
    t.sent++
    t.cmdSN = this.cmdSN
    this.cmdSN = (this.cmdSN + 1) >>> 0
    const flags = 0x80 | (inLen ? 0x40 : 0) | (outLen ? 0x20 : 0) | 0x01 // F, R, W, SIMPLE
    const immediate = this.immediateData && outLen ? Math.min(outLen, this.firstBurst, this.targetMaxRecv) : 0
    const b = this.header(P.SCSI_COMMAND, flags)
    this.lunBytes.copy(b, 8)
    b.writeUInt32BE(t.itt, 16)
    b.writeUInt32BE(outLen || inLen, 20)
    b.writeUInt32BE(t.cmdSN, 24)
    b.writeUInt32BE(this.expStatSN, 28)
    t.cdb.copy(b, 32)
    const ms = this.opts.commandTimeoutMs ?? 30_000
    if (ms > 0) {
      const itt = t.itt
      t.timer = this.timers.setTimeout(() => this.timedOut(t, itt), ms)
    }
    this.send(b, immediate ? t.out!.subarray(0, immediate) : undefined)
    // unsolicited data beyond the immediate part, up to FirstBurstLength (InitialR2T=No)
    if (outLen > immediate && !this.initialR2T) {
      const burst = Math.min(outLen, this.firstBurst)
      if (burst > immediate) this.dataOut(t, P.RESERVED_TAG, immediate, burst - immediate)
    }
  }

  /** Sends these tasks again, each under a new tag (a recovered session: all that were in flight). */
  private reissue(tasks: Task[]): void {
    for (const t of tasks) {
      this.tasks.delete(t.itt)
      this.timers.clearTimeout(t.timer)
    }
    for (const t of tasks) this.issue(t)
    this.wake()
  }

  // ---- timeouts and task management (task-mgmt.ts) -------------------------------------------

  private timedOut(t: Task, itt: number): void {
    if (this.tasks.get(itt) !== t || !this.connected) return
    this.late.add(t)
    if (this.escalating) return
    this.escalating = true
    void (async () => {
      while (this.late.size && this.connected) {
        const batch = [...this.late].filter((x) => this.tasks.get(x.itt) === x)
        this.late.clear()
        if (batch.length) await escalate(this, batch)
      }
    })().finally(() => (this.escalating = false))
  }

  private taskManagement(fn: number, ref: Task | null): Promise<number | null> {
    if (!this.connected) return Promise.resolve(null)
    const itt = this.nextItt
    this.nextItt = (this.nextItt + 1) >>> 0 || 1
    const b = tmfRequest({ fn, lun: this.lunBytes, itt, refItt: ref?.itt ?? P.RESERVED_TAG, refCmdSN: ref?.cmdSN ?? this.cmdSN, cmdSN: this.cmdSN, expStatSN: this.expStatSN })
    return this.tmf.request(itt, () => this.send(b), this.opts.taskManagementTimeoutMs ?? 10_000)
  }

  /** ABORT TASK (RFC 7143 §11.5.1) of a command in flight: the target's response code, null for none in time. */
  abortTask(t: Task): Promise<number | null> {
    if (this.tasks.get(t.itt) !== t) return Promise.resolve(0)
    this.recoveries.aborts++
    t.aborting = true
    return this.taskManagement(ABORT_TASK, t)
  }

  /** LOGICAL UNIT RESET of our LU: every task of every initiator on it is aborted (SAM-5 §7.7). */
  lunReset(): Promise<number | null> {
    this.recoveries.resets++
    return this.taskManagement(LOGICAL_UNIT_RESET, null)
  }

  outstanding(): Task[] {
    return [...this.tasks.values()]
  }

  /** Sends again those of `tasks` still unanswered; one sent `commandAttempts` times fails instead. */
  retry(tasks: Task[]): void {
    const again: Task[] = []
    for (const t of tasks) {
      if (this.tasks.get(t.itt) !== t) continue
      this.retired.add(t.itt)
      if (this.retired.size > RETIRED_MAX) this.retired.delete(this.retired.values().next().value!)
      if (t.sent >= (this.opts.commandAttempts ?? 3)) {
        this.finish(t.itt, new StorageError('IoError', `iSCSI ${this.where}: SCSI opcode 0x${t.cdb[0].toString(16)} got no answer in ${this.opts.commandTimeoutMs ?? 30_000} ms, ${t.sent} times`))
      } else again.push(t)
    }
    this.reissue(again)
  }

  dropConnection(why: string): void {
    this.recoveries.drops++
    this.lost(new StorageError('IoError', `iSCSI ${this.where}: ${why}`))
  }

  /**
   * Runs one SCSI command: `dataOut` for a write, `dataIn` bytes expected back for a read (or the
   * buffer they are to land in, its length expected: no copy).
   * Resolves with the status and sense as the target sent them (CHECK CONDITION is a result here,
   * not an error), once, whatever connections were lost and commands sent again meanwhile;
   * rejects with SessionLostError when the session cannot be recovered.
   */
  async execute(cdb: Buffer, dataOut: Buffer | null = null, dataIn: number | Buffer = 0): Promise<ScsiResult> {
    return this.submit(ownCdb(cdb), dataOut, inBufferOf(dataIn), false)
  }

  /**
   * `execute` (`strict`: `command`) of a 16-byte CDB the initiator holds (not copied) into the
   * Data-In buffer given: one promise per command, settled by the answer.
   */
  private submit(cdb16: Buffer, out: Buffer | null, inBuf: Buffer | null, strict: boolean): Promise<ScsiResult> {
    if (this.dead) return Promise.reject(this.dead)
    if (!this.canSend()) return this.submitLater(cdb16, out, inBuf, strict)
    return new Promise<ScsiResult>((resolve, reject) => {
      const t: Task = { itt: 0, cmdSN: 0, cdb: cdb16, out, inBuf, inGot: 0, sent: 0, timer: undefined, aborting: false, strict, attentions: 0, resolve, reject }
      this.issue(t)
    })
  }

  /** `submit` once the window and the queue depth allow. */
  private async submitLater(cdb16: Buffer, out: Buffer | null, inBuf: Buffer | null, strict: boolean): Promise<ScsiResult> {
    while (!this.dead && !this.canSend()) await new Promise<void>((r) => this.waiting.push(r))
    return this.submit(cdb16, out, inBuf, strict)
  }

  /**
   * `execute`, with any status but GOOD turned into a typed error carrying the sense. A UNIT
   * ATTENTION (a reset, a changed parameter: SAM-5 §5.14) reports an event, not a failure of
   * this command: it is consumed and the command sent again, a few times at most.
   */
  async command(cdb: Buffer, dataOut: Buffer | null = null, dataIn: number | Buffer = 0): Promise<ScsiResult> {
    return this.submit(ownCdb(cdb), dataOut, inBufferOf(dataIn), true)
  }

  // ---- BlockDevice ---------------------------------------------------------------------------

  private async readCapacity(): Promise<void> {
    const cdb = Buffer.alloc(16)
    cdb[0] = S.SERVICE_ACTION_IN_16
    cdb[1] = 0x10 // READ CAPACITY (16)
    cdb.writeUInt32BE(32, 10)
    const r = await this.command(cdb, null, 32)
    const last = r.data.readBigUInt64BE(0)
    this.blockSize = r.data.readUInt32BE(8)
    this.size = Number(last + 1n) * this.blockSize
    this.thin = (r.data[14] & 0x80) !== 0
  }

  private check(offset: number, length: number, writes: boolean): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new StorageError('InvalidArgument', `invalid request: offset ${offset}, length ${length}`)
    }
    if (offset % this.blockSize || length % this.blockSize) {
      throw new StorageError('InvalidArgument', `request ${offset}+${length} is not aligned to the ${this.blockSize}-byte blocks of ${this.uri.target}`)
    }
    if (offset + length > this.size) throw new StorageError('OutOfRange', `request ${offset}+${length} is beyond the end of the LU (${this.size} bytes)`)
    if (writes && this.readOnly) throw new StorageError('ReadOnly', `${this.uri.target} is opened read-only`)
  }

  private rw16(op: number, offset: number, length: number, fua = false): Buffer {
    const cdb = Buffer.alloc(16)
    cdb[0] = op
    if (fua) cdb[1] = 0x08
    const lba = offset / this.blockSize
    cdb.writeUInt32BE(Math.floor(lba / 0x1_0000_0000), 2)
    cdb.writeUInt32BE(lba >>> 0, 6)
    cdb.writeUInt32BE(length / this.blockSize, 10)
    return cdb
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length)
    await this.readInto(offset, length, out, 0)
    return out
  }

  /** ReadsInto: Data-In lands in `out` itself, at `at`. */
  async readInto(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    this.check(offset, length, false)
    if (at < 0 || at + length > out.length) throw new StorageError('InvalidArgument', `readInto: ${length} bytes at ${at} do not fit a ${out.length}-byte buffer`)
    if (length <= MAX_TRANSFER) {
      await this.submit(this.rw16(S.READ_16, offset, length), null, at === 0 && length === out.length ? out : out.subarray(at, at + length), true)
      return
    }
    const parts: Promise<unknown>[] = []
    for (let i = 0; i < length; i += MAX_TRANSFER) {
      const n = Math.min(MAX_TRANSFER, length - i)
      parts.push(this.submit(this.rw16(S.READ_16, offset + i, n), null, out.subarray(at + i, at + i + n), true))
    }
    await Promise.all(parts)
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true)
    if (data.length <= MAX_TRANSFER) {
      await this.submit(this.rw16(S.WRITE_16, offset, data.length, opts?.fua), data, null, true)
      return
    }
    const parts: Promise<unknown>[] = []
    for (let at = 0; at < data.length; at += MAX_TRANSFER) {
      const n = Math.min(MAX_TRANSFER, data.length - at)
      parts.push(this.submit(this.rw16(S.WRITE_16, offset + at, n, opts?.fua), data.subarray(at, at + n), null, true))
    }
    await Promise.all(parts)
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.check(offset, length, true)
    const block = Buffer.alloc(this.blockSize)
    // WRITE SAME(16) of one zero block; UNMAP bit when the range may be deallocated
    const maxBlocks = 0xffff_ffff
    for (let at = 0; at < length; ) {
      const blocks = Math.min(maxBlocks, (length - at) / this.blockSize)
      const cdb = this.rw16(S.WRITE_SAME_16, offset + at, blocks * this.blockSize)
      if (opts?.mayUnmap && this.thin) cdb[1] |= 0x08
      await this.command(cdb, block)
      at += blocks * this.blockSize
    }
  }

  async discard(offset: number, length: number): Promise<void> {
    this.check(offset, length, true)
    if (!this.thin || length === 0) return // advisory
    const param = Buffer.alloc(24)
    param.writeUInt16BE(22, 0)
    param.writeUInt16BE(16, 2)
    param.writeBigUInt64BE(BigInt(offset / this.blockSize), 8)
    param.writeUInt32BE(length / this.blockSize, 16)
    const cdb = Buffer.alloc(10)
    cdb[0] = S.UNMAP
    cdb.writeUInt16BE(param.length, 7)
    await this.command(cdb, param)
  }

  async flush(): Promise<void> {
    const cdb = Buffer.alloc(16)
    cdb[0] = S.SYNCHRONIZE_CACHE_16
    await this.command(cdb)
  }

  /** UNMAP deallocates on a thin LU; COMPARE AND WRITE is the lock storage's, not this device's. */
  capabilities(): Capabilities {
    return { discard: this.thin, compareAndWrite: false }
  }

  /** GET LBA STATUS on a thin LU (mapped = data; deallocated/anchored = zero hole); else all data. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length, false)
    const all: Extent[] = length ? [{ offset, length, data: true, zero: false, depth: 0, present: true }] : []
    if (!this.thin || length === 0) return all
    const out: Extent[] = []
    let at = offset
    const end = offset + length
    while (at < end) {
      const cdb = Buffer.alloc(16)
      cdb[0] = S.SERVICE_ACTION_IN_16
      cdb[1] = 0x12 // GET LBA STATUS
      cdb.writeBigUInt64BE(BigInt(at / this.blockSize), 2)
      cdb.writeUInt32BE(8 + 16 * 64, 10)
      const r = await this.execute(cdb, null, 8 + 16 * 64)
      if (r.status !== S.GOOD) return all // a target without GET LBA STATUS: everything is data
      const n = Math.min((r.data.readUInt32BE(0) - 4) / 16, (r.data.length - 8) / 16)
      if (n < 1) break
      for (let i = 0; i < n && at < end; i++) {
        const d = r.data.subarray(8 + i * 16)
        const lba = Number(d.readBigUInt64BE(0)) * this.blockSize
        const len = Math.min(d.readUInt32BE(8) * this.blockSize, end - lba)
        if (lba !== at || len <= 0) return out.length ? out : all
        const mapped = (d[12] & 0x0f) === 0
        out.push({ offset: at, length: len, data: mapped, zero: !mapped, depth: 0, present: true })
        at += len
      }
    }
    return out
  }

  /**
   * COMPARE AND WRITE (SBC-4 §5.3): atomically, if the blocks at `offset` hold `expected`, write
   * `data`. Resolves false on a miscompare (nothing written), true when written. A unit attention
   * means the command was not run: it is sent again (as by `command`).
   *
   * A command sent more than once (its connection lost, or aborted, before its answer came) may
   * have been carried out by an earlier instance, and the later one then miscompares against the
   * bytes it wrote itself. So a miscompare of a command sent again is checked by reading the blocks
   * back: holding `data`, it was written (the "ATS miscompare" check of VMFS). A different writer
   * that wrote the very same bytes meanwhile is taken for ours: a lock record names its holder and
   * generation, so two writers never write the same one.
   */
  async compareAndWrite(offset: number, expected: Buffer, data: Buffer): Promise<boolean> {
    this.check(offset, data.length, true)
    if (expected.length !== data.length) throw new StorageError('InvalidArgument', 'compareAndWrite: expected and data differ in length')
    const blocks = data.length / this.blockSize
    if (blocks > 255) throw new StorageError('InvalidArgument', 'compareAndWrite: at most 255 blocks')
    const cdb = Buffer.alloc(16)
    cdb[0] = S.COMPARE_AND_WRITE
    cdb.writeBigUInt64BE(BigInt(offset / this.blockSize), 2)
    cdb[13] = blocks
    try {
      await this.command(cdb, Buffer.concat([expected, data]))
      return true
    } catch (e) {
      if (!(e instanceof ScsiStatusError) || e.senseKey !== S.MISCOMPARE) throw e
      return e.sent > 1 && (await this.read(offset, data.length)).equals(data)
    }
  }

  /** Logs out (after the commands in flight are answered) and closes the connection. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      while (!this.dead && this.tasks.size) await new Promise<void>((r) => this.waiting.push(r))
      if (!this.dead && !this.connected) {
        // a recovery with nothing left to send: it stops at its next step
        this.dead = new StorageError('IoError', `iSCSI session to ${this.uri.target} is closed`)
      }
      if (!this.dead) {
        const b = header(P.LOGOUT_REQUEST | 0x40, 0x80)
        b.writeUInt32BE(this.nextItt++, 16)
        b.writeUInt32BE(this.cmdSN, 24)
        b.writeUInt32BE(this.expStatSN, 28)
        this.send(b)
        this.dead = new StorageError('IoError', `iSCSI session to ${this.uri.target} is closed`)
        const bye = setTimeout(() => this.sock.destroy(), 2000)
        await new Promise<void>((r) => (this.sock.destroyed ? r() : this.sock.once('close', () => r())))
        clearTimeout(bye)
      }
      this.sock.destroy()
    })())
  }
}

/** The Data-In a task received. */
const gotOf = (t: Task): Buffer => (t.inGot === t.inBuf!.length ? t.inBuf! : t.inBuf!.subarray(0, t.inGot))

/** A copy of a caller's CDB, in the 16 bytes of the command's header. */
function ownCdb(cdb: Buffer): Buffer {
  if (cdb.length > 16) throw new StorageError('InvalidArgument', `a ${cdb.length}-byte CDB needs an AHS (not supported)`)
  const cdb16 = Buffer.alloc(16)
  cdb.copy(cdb16)
  return cdb16
}

/** Where Data-In lands: the caller's buffer, a new one of that many bytes, or none. */
const inBufferOf = (dataIn: number | Buffer): Buffer | null => (typeof dataIn !== 'number' ? dataIn : dataIn ? Buffer.allocUnsafe(dataIn) : null)

const LOGIN_CLASSES: Record<number, string> = { 1: 'redirection', 2: 'initiator error', 3: 'target error' }

function loginError(cls: number, detail: number, target: string): StorageError {
  const what =
    cls === 2 && detail === 0x01
      ? 'authentication failed'
      : cls === 2 && detail === 0x02
        ? 'not authorized for this target'
        : cls === 2 && detail === 0x03
          ? 'no such target'
          : `${LOGIN_CLASSES[cls] ?? `class ${cls}`}, detail 0x${detail.toString(16)}`
  const code: StorageErrorCode = cls === 2 && detail === 0x03 ? 'NotFound' : cls === 2 ? 'ReadOnly' : 'IoError'
  return new StorageError(code, `iSCSI login to ${target} failed: ${what}`)
}

/** The one mapping from a bad SCSI status and its sense to a storage error (the client's edge). */
export function statusError(op: number, r: Pick<ScsiResult, 'status' | 'sense'>, sent = 1): ScsiStatusError {
  const { key, asc, ascq } = senseOf(r.sense)
  const code: StorageErrorCode =
    r.status === S.RESERVATION_CONFLICT
      ? 'Busy'
      : key === S.DATA_PROTECT
        ? 'ReadOnly'
        : key === S.ILLEGAL_REQUEST
          ? asc === 0x21
            ? 'OutOfRange'
            : asc === 0x20
              ? 'Unsupported'
              : 'InvalidArgument'
          : key === S.NOT_READY || key === S.UNIT_ATTENTION || key === S.ABORTED_COMMAND
            ? 'Busy'
            : 'IoError'
  const hex = (n: number) => n.toString(16).padStart(2, '0')
  return new ScsiStatusError(code, `SCSI opcode 0x${hex(op)}: status 0x${hex(r.status)}, sense key 0x${key.toString(16)}, ASC/ASCQ 0x${hex(asc)}/0x${hex(ascq)}`, r.status, key, asc, ascq, sent)
}

/** Sense key, ASC and ASCQ of fixed or descriptor sense data (zeros when there is none). */
function senseOf(s: Buffer): { key: number; asc: number; ascq: number } {
  if (s.length >= 14 && (s[0] & 0x7f) >= 0x70 && (s[0] & 0x7f) <= 0x71) return { key: s[2] & 0x0f, asc: s[12], ascq: s[13] }
  if (s.length >= 4 && (s[0] & 0x7f) >= 0x72) return { key: s[1] & 0x0f, asc: s[2], ascq: s[3] }
  return { key: 0, asc: 0, ascq: 0 }
}

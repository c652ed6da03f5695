import { randomBytes } from 'node:crypto'
import { connect, type Socket } from 'node:net'
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../../disk-formats/block-device.js'
import { StorageError, type StorageErrorCode } from '../../../disk-formats/errors.js'
import { readField, writeField } from '../../../disk-formats/struct.js'
import { ByteQueue } from '../../../server/net/byte-queue.js'
import * as P from '../../../server/iscsi/pdu.js'
import { DataIn, DataOut, FINAL, header, IMMEDIATE, LoginRequest, LoginResponse, LogoutRequest, NopIn, NopOut, R2t, Reject, ScsiCommand, ScsiResponse } from '../../../server/iscsi/bhs.js'
import { PduReader, writePdu, type Digests } from '../../../server/iscsi/framing.js'
import * as S from '../../../server/scsi/constants.js'
import { parseIscsiUri, type IscsiUri } from './uri.js'
import { chapBinary, chapResponse } from '../../../server/iscsi/chap.js'

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
}

/** The outcome of one SCSI command. */
export interface ScsiResult {
  status: number
  /** Data-In (truncated to what the target sent) */
  data: Buffer
  /** fixed or descriptor sense data when status is CHECK CONDITION */
  sense: Buffer
  residual: number
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
  ) {
    super(code, message)
  }
}

export const DEFAULT_INITIATOR = 'iqn.2026-11.local.tandem:initiator'

/** Our receive limit (declared at login): Data-In segments are at most this long. */
const OUR_MAX_RECV = 262144
const OUR_MAX_BURST = 1 << 20
/** Unit attentions queued per I_T nexus are few (reset, parameters, reservations): retries for one command. */
const UNIT_ATTENTION_RETRIES = 8
/** Largest single READ/WRITE we issue: bounded so one command's buffer stays modest. */
const MAX_TRANSFER = 8 << 20

interface Task {
  itt: number
  cdb: Buffer
  out: Buffer | null
  inBuf: Buffer | null
  inGot: number
  resolve(r: ScsiResult): void
  reject(e: Error): void
}

/** Data-In and SCSI Response flags: status present (Data-In), residual overflow or underflow */
const STATUS = 0x01
const RESIDUAL = 0x06
const NO_DATA = Buffer.alloc(0)

/** Serial number arithmetic (RFC 1982) on 32-bit sequence numbers: a <= b. */
const snLe = (a: number, b: number) => a === b || ((b - a) >>> 0) < 0x8000_0000

/**
 * An iSCSI initiator (RFC 7143; one connection per session, ErrorRecoveryLevel 0): login with
 * None, CHAP or mutual CHAP, CRC32C header and data digests, immediate and unsolicited data and
 * R2T/Data-Out, a command window (CmdSN up to the target's MaxCmdSN) and a queue depth.
 * `execute` is the raw SCSI path; the rest is a BlockDevice over READ/WRITE(16), SYNCHRONIZE
 * CACHE(16), WRITE SAME(16), UNMAP, GET LBA STATUS and COMPARE AND WRITE.
 */
export class IscsiInitiator implements BlockDevice {
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
  private readonly digests: Digests = { header: false, data: false }
  private readonly reader: PduReader
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

  private constructor(
    private readonly sock: Socket,
    private readonly q: ByteQueue,
    readonly uri: IscsiUri,
    private readonly opts: InitiatorOptions,
  ) {
    this.readOnly = opts.readOnly ?? false
    this.lunBytes = Buffer.alloc(8)
    this.lunBytes[1] = uri.lun // single-level LUN, peripheral addressing (SAM-5 §4.7)
    this.reader = new PduReader(q, this.digests, OUR_MAX_RECV, (m) => new StorageError('IoError', `iSCSI: ${m}`))
  }

  static async connect(target: string | IscsiUri, opts: InitiatorOptions = {}): Promise<IscsiInitiator> {
    const uri = typeof target === 'string' ? parseIscsiUri(target) : target
    const sock = connect({ host: uri.host, port: uri.port })
    sock.setNoDelay(true)
    const q = new ByteQueue(
      () => sock.pause(),
      () => sock.resume(),
      4 << 20,
    )
    const where = `${uri.host}:${uri.port}`
    sock.on('data', (d: Buffer) => q.push(d))
    sock.on('end', () => q.end(new StorageError('IoError', `iSCSI ${where}: the target closed the connection`)))
    sock.on('close', () => q.end(new StorageError('IoError', `iSCSI ${where}: connection closed`)))
    sock.on('error', (e: NodeJS.ErrnoException) => q.end(new StorageError('IoError', `iSCSI ${where}: ${e.code ?? e.message}`, undefined, { cause: e })))
    const ini = new IscsiInitiator(sock, q, uri, opts)
    const timeoutMs = opts.timeoutMs ?? 10_000
    const timer = setTimeout(() => {
      q.end(new StorageError('IoError', `iSCSI ${where}: no login within ${timeoutMs} ms`))
      sock.destroy()
    }, timeoutMs)
    try {
      await ini.login()
    } catch (e) {
      sock.destroy()
      throw e
    } finally {
      clearTimeout(timer)
    }
    void ini.receive()
    try {
      await ini.readCapacity()
    } catch (e) {
      await ini.close().catch(() => undefined)
      throw e
    }
    return ini
  }

  // ---- PDUs ----------------------------------------------------------------------------------

  private send(bhs: Buffer, data?: Buffer): void {
    this.sock.cork()
    writePdu(this.sock, bhs, data ?? NO_DATA, this.digests)
    this.sock.uncork()
  }

  /** The next PDU; a bad data digest ends the session (ErrorRecoveryLevel 0: the command cannot be trusted). */
  private async readPdu(into?: (bhs: Buffer) => Buffer | null): Promise<P.Pdu> {
    const pdu = await this.reader.read(into)
    if (pdu.digestError) throw new StorageError('IoError', 'iSCSI: data digest error')
    return pdu
  }

  // ---- login (RFC 7143 §6) -------------------------------------------------------------------

  private async login(): Promise<void> {
    const isid = randomBytes(6)
    isid[0] = 0x80 | (isid[0] & 0x3f) // type 2: random
    const name = this.opts.initiatorName ?? DEFAULT_INITIATOR
    const chap = this.opts.chap ?? (this.uri.user !== undefined ? { user: this.uri.user, secret: this.uri.password ?? '' } : undefined)
    let mutual: { id: number; challenge: Buffer } | null = null
    const itt = this.nextItt++
    const request = async (csg: number, nsg: number, transit: boolean, keys: [string, string][]): Promise<{ bhs: Buffer; keys: Map<string, string> }> => {
      const b = LoginRequest.assign(header(P.LOGIN_REQUEST | IMMEDIATE, (transit ? FINAL : 0) | (csg << 2) | nsg), { isid, initiatorTaskTag: itt, cmdSN: this.cmdSN, expStatSN: this.expStatSN })
      this.send(b, P.encodeText(keys))
      const r = await this.readPdu()
      if (P.opcodeOf(r.bhs) !== P.LOGIN_RESPONSE) throw new StorageError('IoError', `iSCSI login: unexpected PDU 0x${P.opcodeOf(r.bhs).toString(16)}`)
      const { statusClass, statusDetail, statSN, maxCmdSN } = LoginResponse.decode(r.bhs)
      if (statusClass !== 0) throw loginError(statusClass, statusDetail, this.uri.target)
      this.expStatSN = (statSN + 1) >>> 0
      this.maxCmdSN = maxCmdSN
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
      transit = (P.flagsOf(r.bhs) & FINAL) !== 0 && (P.flagsOf(r.bhs) & 0x03) === 3
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

  private async receive(): Promise<void> {
    try {
      for (;;) {
        const pdu = await this.readPdu((bhs) => {
          if (P.opcodeOf(bhs) !== P.SCSI_DATA_IN) return null
          return this.tasks.get(P.ittOf(bhs))?.inBuf ?? null
        })
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
            // the data segment is the rejected header
            const itt = pdu.data.length >= ScsiCommand.size ? P.ittOf(pdu.data) : P.RESERVED_TAG
            this.finish(itt, new StorageError('IoError', `iSCSI: the target rejected a PDU (reason 0x${readField(pdu.bhs, Reject.fields.reason).toString(16)})`))
            break
          }
          case P.LOGOUT_RESPONSE:
          case P.TASK_MGMT_RESPONSE:
          case 0x32: // asynchronous message: nothing we act on
            break
          default:
            throw new StorageError('IoError', `iSCSI: unexpected PDU opcode 0x${P.opcodeOf(pdu.bhs).toString(16)}`)
        }
      }
    } catch (e) {
      this.dead ??= e instanceof StorageError ? e : new StorageError('IoError', `iSCSI: ${(e as Error).message}`)
      for (const t of this.tasks.values()) t.reject(this.dead)
      this.tasks.clear()
      for (const w of this.waiting.splice(0)) w()
      this.sock.destroy()
    }
  }

  /** ExpCmdSN/MaxCmdSN from a target PDU: the window may open. */
  private window(bhs: Buffer): void {
    const op = P.opcodeOf(bhs)
    if (op === P.SCSI_RESPONSE || op === P.NOP_IN || op === P.R2T || op === P.SCSI_DATA_IN || op === P.TASK_MGMT_RESPONSE || op === P.LOGOUT_RESPONSE || op === P.REJECT) {
      // StatSN and MaxCmdSN are at the same place in every target PDU
      const max = readField(bhs, ScsiResponse.fields.maxCmdSN)
      if (snLe(this.maxCmdSN, max)) this.maxCmdSN = max
      const statusPresent = op !== P.SCSI_DATA_IN || (P.flagsOf(bhs) & STATUS) !== 0
      if (statusPresent && op !== P.R2T) {
        const statSN = readField(bhs, ScsiResponse.fields.statSN)
        if (snLe(this.expStatSN, statSN)) this.expStatSN = (statSN + 1) >>> 0
      }
      while (this.waiting.length && this.canSend()) this.waiting.shift()!()
    }
  }

  private canSend(): boolean {
    return snLe(this.cmdSN, this.maxCmdSN) && this.tasks.size < (this.opts.queueDepth ?? 32)
  }

  private dataIn(pdu: P.Pdu): void {
    const t = this.tasks.get(P.ittOf(pdu.bhs))
    if (!t) throw new StorageError('IoError', `iSCSI: Data-In for unknown task ${P.ittOf(pdu.bhs)}`)
    const off = readField(pdu.bhs, DataIn.fields.bufferOffset)
    if (!t.inBuf || off + pdu.data.length > t.inBuf.length) throw new StorageError('IoError', 'iSCSI: Data-In beyond the expected length')
    if (pdu.data.buffer !== t.inBuf.buffer || pdu.data.byteOffset !== t.inBuf.byteOffset + off) pdu.data.copy(t.inBuf, off)
    t.inGot = Math.max(t.inGot, off + pdu.data.length)
    const flags = P.flagsOf(pdu.bhs)
    if (flags & STATUS) {
      // status in the last Data-In (phase collapse)
      const residual = flags & RESIDUAL ? readField(pdu.bhs, DataIn.fields.residualCount) : 0
      this.complete(t, { status: readField(pdu.bhs, DataIn.fields.status), data: t.inBuf.subarray(0, t.inGot), sense: Buffer.alloc(0), residual })
    }
  }

  private response(pdu: P.Pdu): void {
    const t = this.tasks.get(P.ittOf(pdu.bhs))
    if (!t) throw new StorageError('IoError', `iSCSI: response for unknown task ${P.ittOf(pdu.bhs)}`)
    const { response, status, residualCount } = ScsiResponse.decode(pdu.bhs)
    if (response !== 0) {
      this.finish(t.itt, new StorageError('IoError', `iSCSI: target failure (response 0x${response.toString(16)})`))
      return
    }
    let sense = Buffer.alloc(0)
    if (pdu.data.length >= 2) sense = Buffer.from(pdu.data.subarray(2, 2 + pdu.data.readUInt16BE(0)))
    const residual = P.flagsOf(pdu.bhs) & RESIDUAL ? residualCount : 0
    this.complete(t, { status, data: t.inBuf ? t.inBuf.subarray(0, t.inGot) : Buffer.alloc(0), sense, residual })
  }

  private r2t(bhs: Buffer): void {
    const t = this.tasks.get(P.ittOf(bhs))
    if (!t || !t.out) throw new StorageError('IoError', 'iSCSI: R2T for a task with no data to send')
    const { targetTransferTag: ttt, bufferOffset: off, desiredDataTransferLength: len } = R2t.decode(bhs)
    if (off + len > t.out.length) throw new StorageError('IoError', 'iSCSI: R2T beyond the command\'s data')
    this.dataOut(t, ttt, off, len)
  }

  /** Data-Out PDUs for [off, off+len) of the task's data, each at most the target's segment size. */
  private dataOut(t: Task, ttt: number, off: number, len: number): void {
    let sn = 0
    for (let at = 0; at < len; at += this.targetMaxRecv) {
      const n = Math.min(this.targetMaxRecv, len - at)
      const b = header(P.SCSI_DATA_OUT, at + n >= len ? FINAL : 0)
      writeField(b, DataOut.fields.lun, this.lunBytes)
      writeField(b, DataOut.fields.initiatorTaskTag, t.itt)
      writeField(b, DataOut.fields.targetTransferTag, ttt)
      writeField(b, DataOut.fields.expStatSN, this.expStatSN)
      writeField(b, DataOut.fields.dataSN, sn++)
      writeField(b, DataOut.fields.bufferOffset, off + at)
      this.send(b, t.out!.subarray(off + at, off + at + n))
    }
  }

  private nopIn(pdu: P.Pdu): void {
    const ttt = readField(pdu.bhs, NopIn.fields.targetTransferTag)
    if (ttt === P.RESERVED_TAG) return // an answer to our ping, or an unsolicited notice
    const b = NopOut.assign(header(P.NOP_OUT | IMMEDIATE, FINAL), { lun: this.lunBytes, initiatorTaskTag: P.RESERVED_TAG, targetTransferTag: ttt, cmdSN: this.cmdSN, expStatSN: this.expStatSN })
    this.send(b, pdu.data.length ? pdu.data : undefined)
  }

  private complete(t: Task, r: ScsiResult): void {
    this.tasks.delete(t.itt)
    t.resolve(r)
    while (this.waiting.length && this.canSend()) this.waiting.shift()!()
  }

  private finish(itt: number, e: Error): void {
    const t = this.tasks.get(itt)
    if (!t) return
    this.tasks.delete(itt)
    t.reject(e)
  }

  /**
   * Runs one SCSI command: `dataOut` for a write, `dataInLength` bytes expected back for a read.
   * Resolves with the status and sense as the target sent them (CHECK CONDITION is a result here,
   * not an error); rejects with IoError when the session is lost.
   */
  async execute(cdb: Buffer, dataOut: Buffer | null = null, dataInLength = 0): Promise<ScsiResult> {
    if (cdb.length > 16) throw new StorageError('InvalidArgument', `a ${cdb.length}-byte CDB needs an AHS (not supported)`)
    while (!this.dead && !this.canSend()) await new Promise<void>((r) => this.waiting.push(r))
    if (this.dead) throw this.dead
    const itt = this.nextItt
    this.nextItt = (this.nextItt + 1) >>> 0 || 1
    const outLen = dataOut?.length ?? 0
    const flags = 0x80 | (dataInLength ? 0x40 : 0) | (outLen ? 0x20 : 0) | 0x01 // F, R, W, SIMPLE
    const immediate = this.immediateData && outLen ? Math.min(outLen, this.firstBurst, this.targetMaxRecv) : 0
    const b = header(P.SCSI_COMMAND, flags)
    writeField(b, ScsiCommand.fields.lun, this.lunBytes)
    writeField(b, ScsiCommand.fields.initiatorTaskTag, itt)
    writeField(b, ScsiCommand.fields.expectedDataTransferLength, outLen || dataInLength)
    writeField(b, ScsiCommand.fields.cmdSN, this.cmdSN)
    this.cmdSN = (this.cmdSN + 1) >>> 0
    writeField(b, ScsiCommand.fields.expStatSN, this.expStatSN)
    writeField(b, ScsiCommand.fields.cdb, cdb)
    const p = new Promise<ScsiResult>((resolve, reject) => {
      this.tasks.set(itt, { itt, cdb, out: dataOut, inBuf: dataInLength ? Buffer.allocUnsafe(dataInLength) : null, inGot: 0, resolve, reject })
    })
    this.send(b, immediate ? dataOut!.subarray(0, immediate) : undefined)
    // unsolicited data beyond the immediate part, up to FirstBurstLength (InitialR2T=No)
    if (outLen > immediate && !this.initialR2T) {
      const burst = Math.min(outLen, this.firstBurst)
      if (burst > immediate) this.dataOut(this.tasks.get(itt)!, P.RESERVED_TAG, immediate, burst - immediate)
    }
    return p
  }

  /**
   * `execute`, with any status but GOOD turned into a typed error carrying the sense. A UNIT
   * ATTENTION (a reset, a changed parameter: SAM-5 §5.14) reports an event, not a failure of
   * this command: it is consumed and the command sent again, a few times at most.
   */
  async command(cdb: Buffer, dataOut: Buffer | null = null, dataInLength = 0): Promise<ScsiResult> {
    for (let attempt = 0; ; attempt++) {
      const r = await this.execute(cdb, dataOut, dataInLength)
      if (r.status === S.GOOD) return r
      const e = statusError(cdb[0], r)
      if (e.senseKey !== S.UNIT_ATTENTION || attempt >= UNIT_ATTENTION_RETRIES) throw e
    }
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
    cdb.writeBigUInt64BE(BigInt(offset / this.blockSize), 2)
    cdb.writeUInt32BE(length / this.blockSize, 10)
    return cdb
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false)
    const out = Buffer.allocUnsafe(length)
    const parts: Promise<void>[] = []
    for (let at = 0; at < length; at += MAX_TRANSFER) {
      const n = Math.min(MAX_TRANSFER, length - at)
      parts.push(this.command(this.rw16(S.READ_16, offset + at, n), null, n).then((r) => void r.data.copy(out, at)))
    }
    await Promise.all(parts)
    return out
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true)
    const parts: Promise<unknown>[] = []
    for (let at = 0; at < data.length; at += MAX_TRANSFER) {
      const n = Math.min(MAX_TRANSFER, data.length - at)
      parts.push(this.command(this.rw16(S.WRITE_16, offset + at, n, opts?.fua), data.subarray(at, at + n)))
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
      if (e instanceof ScsiStatusError && e.senseKey === S.MISCOMPARE) return false
      throw e
    }
  }

  /** Logs out (after the commands in flight are answered) and closes the connection. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      while (!this.dead && this.tasks.size) await new Promise<void>((r) => this.waiting.push(r))
      if (!this.dead) {
        const b = LogoutRequest.assign(header(P.LOGOUT_REQUEST | IMMEDIATE, FINAL), { initiatorTaskTag: this.nextItt++, cmdSN: this.cmdSN, expStatSN: this.expStatSN })
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
function statusError(op: number, r: ScsiResult): ScsiStatusError {
  let key = 0
  let asc = 0
  let ascq = 0
  const s = r.sense
  if (s.length >= 14 && (s[0] & 0x7f) >= 0x70 && (s[0] & 0x7f) <= 0x71) {
    key = s[2] & 0x0f
    asc = s[12]
    ascq = s[13]
  } else if (s.length >= 4 && (s[0] & 0x7f) >= 0x72) {
    key = s[1] & 0x0f
    asc = s[2]
    ascq = s[3]
  }
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
  return new ScsiStatusError(code, `SCSI opcode 0x${hex(op)}: status 0x${hex(r.status)}, sense key 0x${key.toString(16)}, ASC/ASCQ 0x${hex(asc)}/0x${hex(ascq)}`, r.status, key, asc, ascq)
}

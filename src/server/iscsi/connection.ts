import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { readField, writeField } from '../../disk-formats/struct.js'
import type { ExportTally, Metrics } from '../metrics.js'
import type { ByteQueue } from '../net/byte-queue.js'
import { poller } from '../net/poll.js'
import { ProtocolError, socketQueue } from '../net/tcp-service.js'
import * as S from '../scsi/constants.js'
import { metricsClass } from '../scsi/index.js'
import { copyLun, FINAL, header, LogoutResponse, NopIn, Reject, ScsiCommand, ScsiResponse, TaskMgmtRequest, TaskMgmtResponse, TextResponse } from './bhs.js'
import { DataOutPhase } from './data-out.js'
import { DROP, PduReader, writePdu, type Digests } from './framing.js'
import { CMD_WINDOW, DATA_BUDGET, MAX_IMMEDIATE, RECEIVE_QUEUE } from './limits.js'
import { login, type OpenTarget, type TargetDirectory } from './login.js'
import { MemoryBudget } from './memory-budget.js'
import { defaultParams, TARGET_MAX_RECV, type Params } from './negotiation.js'
import * as P from './pdu.js'
import { crcErrorSense, runCommand, sendResponse, type CommandIo } from './scsi-command.js'

/** Requests that carry a CmdSN (RFC 7143 §4.2.2.1); Data-Out and SNACK do not. */
const NUMBERED = new Set([P.NOP_OUT, P.SCSI_COMMAND, P.TASK_MGMT_REQUEST, P.TEXT_REQUEST, P.LOGOUT_REQUEST])

const CMD = ScsiCommand.fields
const RSP = ScsiResponse.fields


/**
 * One iSCSI connection (one connection per session, ErrorRecoveryLevel 0): the login (login.ts),
 * discovery by SendTargets, SCSI Command/Response, Data-In, immediate and unsolicited data and
 * R2T/Data-Out (data-out.ts), NOP, Task Management, Logout; anything else gets a Reject. A
 * malformed PDU closes this connection only.
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
  private target: OpenTarget | null = null
  /** This connection's requests to its export, for /metrics. */
  private tally: ExportTally | null = null
  /** in force from the first PDU after the login phase */
  private readonly digests: Digests = { header: false, data: false }
  private readonly reader: PduReader
  private fullFeaturePhase = false
  private params: Params = defaultParams()
  private writes: DataOutPhase
  /** what a SCSI command uses of this connection (a normal session, once logged in) */
  private commandIo: CommandIo | null = null
  /** sends a target PDU with its numbers; frees a CmdSN window slot */
  private readonly slots = { send: (b: Buffer, data: Buffer, advance: boolean) => this.send(this.seq(b, advance), data), freeSlot: () => void this.running-- }
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
  /** the PDU being read is outside the CmdSN window (decided once, as its header arrives) */
  private readingIgnored = false
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
    this.reader = new PduReader(this.q, this.digests, TARGET_MAX_RECV, (m) => new ProtocolError(m))
    this.writes = this.dataOutPhase()
    this.budget = new MemoryBudget(DATA_BUDGET, () => (sock.writableNeedDrain ? sock.writableLength : 0))
    sock.on('drain', () => this.budget.drained())
    sock.on('close', () => this.budget.close())
  }

  private dataOutPhase(): DataOutPhase {
    return new DataOutPhase({ sendR2t: (b) => this.send(this.seq(b, false)), reject: (bhs, reason) => this.reject(bhs, reason), gone: () => this.gone() }, this.params)
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
      const io = {
        read: () => this.reader.read(),
        respond: (b: Buffer, data: Buffer) => this.send(this.seq(b), data),
        start: (statSN: number, expCmdSN: number) => {
          this.statSN = statSN
          this.expCmdSN = expCmdSN
        },
      }
      const s = await login(io, this.dir, this.log, this)
      ;({ initiator: this.initiator, nexus: this.nexus, discovery: this.discovery, target: this.target, params: this.params, key: this.sessionKey } = s)
      this.writes = this.dataOutPhase()
      this.digests.header = s.params.headerDigest
      this.digests.data = s.params.dataDigest
      this.fullFeaturePhase = true
      established()
      if (this.target) {
        const { lu } = this.target
        this.commandIo = {
          ...this.slots,
          lu,
          nexus: this.nexus,
          params: this.params,
          budget: this.budget,
          writes: this.writes,
          gone: () => this.gone(),
          reject: (bhs, reason) => this.reject(bhs, reason),
          account: (opcode, t0, status, read, written) => this.account(opcode, t0, status, read, written),
        }
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
      this.writes.end()
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

  /** Data nobody will use (a request outside the window, a Data-Out for no task) is dropped unread. */
  private readonly placement = (bhs: Buffer) => {
    this.readingIgnored = this.ignored(bhs)
    if (this.readingIgnored) return DROP
    return P.opcodeOf(bhs) === P.SCSI_DATA_OUT ? this.writes.placement(bhs) : null
  }

  private send(bhs: Buffer, data: Buffer = NO_DATA): void {
    if (this.isClosed() || this.sock.destroyed) return
    // a queue-depth-1 initiator (its last command came alone, nothing else is in flight): its next
    // command is likely to follow this reply closely
    if (this.alone && this.tasks.size <= 1) poller.expectNext()
    // Every PDU produced while this turn of the event loop runs goes out in one writev: at
    // queue depth > 1 many commands complete together, and one send costs less than many.
    if (!this.corked) {
      this.corked = true
      this.sock.cork()
      process.nextTick(this.uncork)
    }
    writePdu(this.sock, bhs, data, this.digests)
  }

  private corked = false
  private readonly uncork = () => {
    this.corked = false
    if (!this.sock.destroyed) this.sock.uncork()
  }

  /**
   * Fills StatSN/ExpCmdSN/MaxCmdSN (the same place in every target PDU); advances StatSN when
   * `advance`. MaxCmdSN leaves room for CMD_WINDOW running commands: it moves when one completes
   * (its status PDU carries it), never backwards, and equals ExpCmdSN - 1 (a closed window) when
   * all are running.
   */
  private seq(b: Buffer, advance = true): Buffer {
    writeField(b, RSP.statSN, advance ? this.statSN++ >>> 0 : this.statSN >>> 0)
    writeField(b, RSP.expCmdSN, this.expCmdSN >>> 0)
    writeField(b, RSP.maxCmdSN, (this.expCmdSN + CMD_WINDOW - this.running - 1) >>> 0)
    return b
  }

  /** A request in full feature phase that is silently ignored: not immediate, and its CmdSN outside the window [ExpCmdSN, MaxCmdSN] (§4.2.2.1). */
  private ignored(bhs: Buffer): boolean {
    return this.fullFeaturePhase && !P.immediateOf(bhs) && NUMBERED.has(P.opcodeOf(bhs)) && ((readField(bhs, CMD.cmdSN) - this.expCmdSN) >>> 0) >= CMD_WINDOW - this.running
  }

  private async fullFeature(): Promise<void> {
    for (;;) {
      // replies the client does not read: read no further request until they drain
      if (this.budget.used > this.budget.limit) await this.budget.room()
      const pdu = await this.reader.read(this.placement)
      const op = P.opcodeOf(pdu.bhs)
      if (pdu.digestError) {
        this.dataDigestError(pdu)
        continue
      }
      if (this.readingIgnored) continue
      if (NUMBERED.has(op) && !P.immediateOf(pdu.bhs)) this.expCmdSN = (readField(pdu.bhs, CMD.cmdSN) + 1) >>> 0
      switch (op) {
        case P.NOP_OUT:
          this.nop(pdu)
          break
        case P.SCSI_COMMAND: {
          if (this.discovery || !this.commandIo) {
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
          const task = runCommand(this.commandIo, pdu, windowed).catch((e) => {
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
          this.writes.receive(pdu)
          break
        case P.TEXT_REQUEST:
          await this.text(pdu)
          break
        case P.TASK_MGMT_REQUEST:
          this.taskManagement(pdu)
          break
        case P.LOGOUT_REQUEST: {
          await Promise.allSettled([...this.tasks])
          this.send(this.seq(LogoutResponse.assign(header(P.LOGOUT_RESPONSE, FINAL), { initiatorTaskTag: P.ittOf(pdu.bhs) })))
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
    const op = P.opcodeOf(pdu.bhs)
    this.metrics.protocolErrors.inc({ protocol: 'iscsi' })
    this.log.info({ peer: this.sock.remoteAddress, opcode: op }, 'iscsi: data digest error')
    this.reject(pdu.bhs, P.REJECT_DIGEST_ERROR)
    if (op === P.SCSI_DATA_OUT) this.writes.digestError(pdu.bhs)
    else if (op === P.SCSI_COMMAND) {
      // the CmdSN was used (one outside the window was ignored unread); the command ends here
      if (!P.immediateOf(pdu.bhs)) this.expCmdSN = (readField(pdu.bhs, CMD.cmdSN) + 1) >>> 0
      sendResponse(this.slots, P.ittOf(pdu.bhs), S.CHECK_CONDITION, crcErrorSense(), 0, 0, false)
    }
  }

  private gone(): boolean {
    return this.ending || this.isClosed()
  }

  private reject(bhs: Buffer, reason: number): void {
    const b = Reject.assign(header(P.REJECT, FINAL), { reason, initiatorTaskTag: P.RESERVED_TAG, dataSN: 0 })
    this.send(this.seq(b), Buffer.from(bhs))
  }

  private nop(pdu: P.Pdu): void {
    const itt = P.ittOf(pdu.bhs)
    if (itt === P.RESERVED_TAG) return // a ping answering our NOP-In (we send none) or a one-way ping
    const b = NopIn.assign(header(P.NOP_IN, FINAL), { initiatorTaskTag: itt, targetTransferTag: P.RESERVED_TAG })
    copyLun(pdu.bhs, b)
    this.send(this.seq(b, false), pdu.data.subarray(0, Math.min(pdu.data.length, this.params.maxRecvDataSegmentLength)))
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
    const b = TextResponse.assign(header(P.TEXT_RESPONSE, FINAL), { initiatorTaskTag: P.ittOf(pdu.bhs), targetTransferTag: P.RESERVED_TAG })
    this.send(this.seq(b), P.encodeText(reply))
  }

  private taskManagement(pdu: P.Pdu): void {
    const fn = P.flagsOf(pdu.bhs) & 0x7f
    // ABORT TASK of a task no longer here: "task does not exist"; everything else completes
    // (tasks are short and finish on their own; resets need no state beyond reservations).
    const response = fn === 1 && !this.writes.has(readField(pdu.bhs, TaskMgmtRequest.fields.referencedTaskTag)) ? 1 : fn >= 1 && fn <= 8 ? 0 : 5
    if (fn === 5) this.target?.lu.reset('lun')
    else if (fn === 6 || fn === 7) this.target?.lu.reset('target') // TARGET WARM/COLD RESET
    this.send(this.seq(TaskMgmtResponse.assign(header(P.TASK_MGMT_RESPONSE, FINAL), { response, initiatorTaskTag: P.ittOf(pdu.bhs) })))
  }

  /**
   * A command's metrics: its op class, its latency up to the LU's answer, an error for any
   * status but GOOD, the bytes read and written (DESIGN §7: /metrics, as the NBD exports).
   */
  private account(opcode: number, t0: bigint, status: number, read: number, written: number): void {
    this.tally ??= this.metrics.tally(this.target!.name, 'iscsi')
    this.tally.request(metricsClass(opcode), t0, status !== S.GOOD, read, written)
  }
}

const NO_DATA = Buffer.alloc(0)

import type { Socket } from 'node:net'
import type { Logger } from 'pino'
import { capabilitiesOf, checkRange, checkWritable, type Extent } from '../../disk-formats/block-device.js'
import { isStorageError, StorageError } from '../../disk-formats/errors.js'
import { parseExportName, type Datastore, type ExportHandle } from '../datastore/index.js'
import type { ExportTally, Metrics } from '../metrics.js'
import type { ByteQueue } from '../net/byte-queue.js'
import { poller } from '../net/poll.js'
import { ProtocolError, socketQueue } from '../net/tcp-service.js'
import * as P from './protocol.js'
import type { NbdTls } from './tls.js'


const OP_NAMES: Record<number, string> = {
  [P.NBD_CMD_READ]: 'read',
  [P.NBD_CMD_WRITE]: 'write',
  [P.NBD_CMD_DISC]: 'disc',
  [P.NBD_CMD_FLUSH]: 'flush',
  [P.NBD_CMD_TRIM]: 'trim',
  [P.NBD_CMD_CACHE]: 'cache',
  [P.NBD_CMD_WRITE_ZEROES]: 'write_zeroes',
  [P.NBD_CMD_BLOCK_STATUS]: 'block_status',
}

const REQ = P.NBD_REQUEST
const SIMPLE = P.NBD_SIMPLE_REPLY
const SR = P.NBD_STRUCTURED_REPLY

/** The commands that change the export (NBD: ENOSPC past its end, not EINVAL). */
const WRITES = new Set([P.NBD_CMD_WRITE, P.NBD_CMD_TRIM, P.NBD_CMD_WRITE_ZEROES])

const KNOWN_CMD_FLAGS = P.NBD_CMD_FLAG_FUA | P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_DF | P.NBD_CMD_FLAG_REQ_ONE | P.NBD_CMD_FLAG_FAST_ZERO

/**
 * One NBD client: fixed-newstyle handshake, option haggling, then pipelined transmission.
 * Requests are validated once here (magic, flags, range, size, read-only) and answered with the
 * protocol's errno; a client that breaks the framing (bad magic, oversized payload, garbage
 * options) has its own connection closed. Every reply goes out as one write (corked).
 */
export class NbdConnection {
  /** the socket and its queue are replaced once, by the TLS socket after NBD_OPT_STARTTLS */
  private q: ByteQueue
  private structured = false
  private noZeroes = false
  private metaExport: string | null = null
  private metaOn = false
  private handle: ExportHandle | null = null
  private inflight = 0
  /** Bytes of the requests in flight: read data being read, write payloads (see MAX_CONNECTION_BYTES). */
  private charged = 0
  /** The last request arrived with no other in flight (queue depth 1: see net/poll.ts). */
  private alone = true
  /** The transmission loop (or run's drain) waiting for a request to end or a reply to leave. */
  private slot: (() => void) | null = null
  private isClosed: () => boolean
  /** the TLS-PSK identity the client proved after NBD_OPT_STARTTLS; null while plain */
  private identity: string | null = null

  constructor(
    private sock: Socket,
    private readonly ds: Datastore,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    /** absent: TLS off */
    private readonly tls?: NbdTls,
  ) {
    const s = socketQueue(sock)
    this.q = s.q
    this.isClosed = s.closed
    // a wait for a request or a reply ends when the socket goes (socketQueue marks it closed first)
    sock.on('close', this.kick)
  }

  /**
   * Wakes whoever waits in `slot` to look again: a request ended, a reply left (the callback of
   * every reply's write), or the socket closed.
   */
  private readonly kick = (): void => {
    const s = this.slot
    this.slot = null
    s?.()
  }

  /** `established`: called once the handshake is complete (ends its time limit). */
  async run(established: () => void = () => {}): Promise<void> {
    try {
      await this.handshake()
      established()
      if (this.handle) await this.transmission()
    } catch (e) {
      if (e instanceof ProtocolError) {
        if (!this.isClosed()) {
          this.metrics.protocolErrors.inc({ protocol: 'nbd' })
          this.log.info({ peer: this.sock.remoteAddress, reason: e.message }, 'nbd: closing connection')
        }
      } else if (!this.isClosed()) {
        this.log.warn({ err: e }, 'nbd: connection failed')
      }
    } finally {
      // In-flight requests finish before the export is released.
      while (this.inflight > 0) await new Promise<void>((r) => (this.slot = r))
      this.tally?.close()
      await this.handle?.release()
      this.handle = null
      this.sock.destroy()
    }
  }

  private send(...parts: Buffer[]): void {
    if (this.isClosed() || this.sock.destroyed) return
    // a queue-depth-1 client (its last request came alone, nothing else is in flight): its next
    // request is likely to follow this reply closely
    if (this.alone && this.inflight <= 1) poller.expectNext()
    if (parts.length === 1) {
      this.sock.write(parts[0], this.kick)
      return
    }
    if (parts[1].length <= 64 * 1024) {
      // a small reply: copying it is cheaper than a corked writev through the stream machinery
      this.sock.write(Buffer.concat(parts), this.kick)
      return
    }
    this.sock.cork()
    for (let i = 0; i < parts.length - 1; i++) this.sock.write(parts[i])
    this.sock.write(parts[parts.length - 1], this.kick)
    this.sock.uncork()
  }

  // ---- handshake and options -------------------------------------------------------------

  private optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const R = P.NBD_OPTION_REPLY
    const h = Buffer.allocUnsafe(R.size)
    R.setBig(h, 'magic', P.NBD_OPT_REPLY_MAGIC)
    R.set(h, 'option', opt)
    R.set(h, 'type', type)
    R.set(h, 'length', data.length)
    this.send(data.length ? Buffer.concat([h, data]) : h)
  }

  private optError(opt: number, type: number, message: string): void {
    this.optReply(opt, type, Buffer.from(message, 'utf8'))
  }

  private async handshake(): Promise<void> {
    const G = P.NBD_GREETING
    const hello = Buffer.allocUnsafe(G.size)
    G.setBig(hello, 'nbdMagic', P.NBDMAGIC)
    G.setBig(hello, 'optMagic', P.IHAVEOPT)
    G.set(hello, 'handshakeFlags', P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES)
    this.send(hello)
    const cflags = P.NBD_CLIENT_FLAGS.get(await this.q.read(P.NBD_CLIENT_FLAGS.size), 'clientFlags')
    if (!(cflags & P.NBD_FLAG_C_FIXED_NEWSTYLE)) throw new ProtocolError('client does not speak fixed newstyle')
    if (cflags & ~(P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)) throw new ProtocolError(`unknown client flags 0x${cflags.toString(16)}`)
    this.noZeroes = (cflags & P.NBD_FLAG_C_NO_ZEROES) !== 0
    for (;;) {
      const O = P.NBD_OPTION
      const h = await this.q.read(O.size)
      if (O.getBig(h, 'magic') !== P.IHAVEOPT) throw new ProtocolError('bad option magic')
      const opt = O.get(h, 'option')
      const len = O.get(h, 'length')
      if (len > P.MAX_OPTION_LENGTH) {
        // Too long to be legitimate; the framing cannot be trusted after skipping that much.
        this.optError(opt, P.NBD_REP_ERR_TOO_BIG, `option data of ${len} bytes exceeds ${P.MAX_OPTION_LENGTH}`)
        throw new ProtocolError(`option ${opt} too long (${len} bytes)`)
      }
      const data = await this.q.read(len)
      if (await this.option(opt, data)) return
    }
  }

  /** Handles one option; returns true when transmission (or the end) begins. */
  private async option(opt: number, data: Buffer): Promise<boolean> {
    if (this.tls?.mode === 'required' && this.identity === null && opt !== P.NBD_OPT_STARTTLS && opt !== P.NBD_OPT_ABORT) {
      // NBD spec, FORCEDTLS: NBD_OPT_EXPORT_NAME cannot be answered with an error
      if (opt === P.NBD_OPT_EXPORT_NAME) throw new ProtocolError('NBD_OPT_EXPORT_NAME before TLS on a server that requires TLS')
      this.optError(opt, P.NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first')
      return false
    }
    switch (opt) {
      case P.NBD_OPT_EXPORT_NAME: {
        const name = data.toString('utf8')
        const refused = await this.refusal(name)
        if (refused) throw new ProtocolError(`export '${name}': ${refused.message}`)
        try {
          await this.openExport(name)
        } catch (e) {
          throw new ProtocolError(`export '${name}': ${(e as Error).message}`)
        }
        const E = P.NBD_EXPORT_NAME_REPLY
        const r = Buffer.alloc(E.size + (this.noZeroes ? 0 : P.NBD_EXPORT_NAME_ZEROES))
        E.set(r, 'size', this.handle!.device.size)
        E.set(r, 'transmissionFlags', this.transmissionFlags())
        this.send(r)
        return true
      }
      case P.NBD_OPT_ABORT:
        this.optReply(opt, P.NBD_REP_ACK)
        throw new ProtocolError('client aborted')
      case P.NBD_OPT_LIST: {
        if (data.length !== 0) {
          this.optError(opt, P.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data')
          return false
        }
        for (const name of await this.ds.exportNames()) {
          if (await this.refusal(name)) continue
          const n = Buffer.from(name, 'utf8')
          const b = Buffer.allocUnsafe(4 + n.length)
          b.writeUInt32BE(n.length, 0)
          n.copy(b, 4)
          this.optReply(opt, P.NBD_REP_SERVER, b)
        }
        this.optReply(opt, P.NBD_REP_ACK)
        return false
      }
      case P.NBD_OPT_STARTTLS:
        await this.startTls(opt, data)
        return false
      case P.NBD_OPT_INFO:
      case P.NBD_OPT_GO:
        return this.infoOrGo(opt, data)
      case P.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.optError(opt, P.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data')
          return false
        }
        this.structured = true
        this.optReply(opt, P.NBD_REP_ACK)
        return false
      case P.NBD_OPT_LIST_META_CONTEXT:
      case P.NBD_OPT_SET_META_CONTEXT:
        await this.metaContext(opt, data)
        return false
      default:
        this.optError(opt, P.NBD_REP_ERR_UNSUP, `option ${opt} is not supported`)
        return false
    }
  }

  /**
   * NBD_OPT_STARTTLS: ACK, then the TLS-PSK handshake on the same socket; a failed handshake
   * ends the connection (the ACK is sent, there is no way back to plain).
   */
  private async startTls(opt: number, data: Buffer): Promise<void> {
    if (!this.tls || this.tls.mode === 'off') {
      this.optError(opt, P.NBD_REP_ERR_UNSUP, 'TLS is not supported by this server')
      return
    }
    if (this.identity !== null) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'TLS is already negotiated')
      return
    }
    if (data.length !== 0) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data')
      return
    }
    // the client must wait for the reply; bytes already here would be lost under TLS
    if (this.q.buffered !== 0) throw new ProtocolError('data sent after NBD_OPT_STARTTLS before its reply')
    this.optReply(opt, P.NBD_REP_ACK)
    const session = await this.tls.upgrade(this.sock)
    this.sock = session.socket
    const s = socketQueue(session.socket)
    this.q = s.q
    this.isClosed = s.closed
    session.socket.on('close', this.kick)
    this.identity = session.identity
    // NBD spec, NBD_OPT_STARTTLS: no negotiation state from before the upgrade is kept
    this.structured = false
    this.metaExport = null
    this.metaOn = false
    this.log.debug({ peer: this.sock.remoteAddress, identity: session.identity, version: session.socket.getProtocol(), cipher: session.socket.getCipher().name }, 'nbd: TLS established')
  }

  /**
   * Why this connection may not use an export, or null when it may. A disk whose access list is
   * empty is open to every client; otherwise only to a TLS client whose PSK identity is on the
   * list (the same list that names iSCSI initiators). Unknown or malformed names pass here and
   * are reported by openExport.
   */
  private async refusal(exportName: string): Promise<{ type: number; message: string } | null> {
    let initiators: string[]
    try {
      initiators = (await this.ds.readRecord(parseExportName(exportName).disk)).access.initiators
    } catch (e) {
      if (isStorageError(e) && (e.code === 'NotFound' || e.code === 'InvalidArgument')) return null
      return { type: P.NBD_REP_ERR_UNKNOWN, message: isStorageError(e) ? e.message : `export '${exportName}' cannot be opened` }
    }
    if (initiators.length === 0) return null
    if (this.identity !== null) {
      if (initiators.includes(this.identity)) return null
      return { type: P.NBD_REP_ERR_POLICY, message: `identity '${this.identity}' is not on the access list of '${exportName}'` }
    }
    if (!this.tls || this.tls.mode === 'off') {
      return { type: P.NBD_REP_ERR_POLICY, message: `'${exportName}' has an access list: it is offered over NBD only with TLS, which this server has turned off` }
    }
    return { type: P.NBD_REP_ERR_TLS_REQD, message: `'${exportName}' has an access list: connect with TLS-PSK as an identity on it` }
  }

  private transmissionFlags(): number {
    let f = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_CACHE | P.NBD_FLAG_CAN_MULTI_CONN
    if (this.handle!.readOnly) f |= P.NBD_FLAG_READ_ONLY
    else f |= P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO
    // TRIM only where it frees space: a client that sees it may trim instead of writing zeroes
    if (!this.handle!.readOnly && capabilitiesOf(this.handle!.device).discard) f |= P.NBD_FLAG_SEND_TRIM
    if (this.structured) f |= P.NBD_FLAG_SEND_DF
    return f
  }

  private async openExport(name: string): Promise<void> {
    if (name === '') throw new StorageError('NotFound', 'no default export: name a disk (nbd://host/DISK) or DISK@SNAPSHOT')
    this.handle = await this.ds.openExport(name, { client: `nbd ${this.sock.remoteAddress}:${this.sock.remotePort}` })
  }

  /** NBD_REP_INFO data of a kind that carries text (NBD_INFO_NAME, NBD_INFO_DESCRIPTION). */
  private static info(kind: number, text: string): Buffer {
    const n = Buffer.from(text, 'utf8')
    const b = Buffer.allocUnsafe(P.NBD_INFO.size + n.length)
    P.NBD_INFO.set(b, 'info', kind)
    n.copy(b, P.NBD_INFO.size)
    return b
  }

  /** Parses `u32 len, name` at `at`; null when malformed. */
  private static name(data: Buffer, at: number): { name: string; next: number } | null {
    if (data.length < at + 4) return null
    const n = data.readUInt32BE(at)
    if (data.length < at + 4 + n) return null
    return { name: data.toString('utf8', at + 4, at + 4 + n), next: at + 4 + n }
  }

  private async infoOrGo(opt: number, data: Buffer): Promise<boolean> {
    const parsed = NbdConnection.name(data, 0)
    if (!parsed || data.length < parsed.next + 2) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'malformed NBD_OPT_INFO/GO request')
      return false
    }
    const count = data.readUInt16BE(parsed.next)
    if (data.length !== parsed.next + 2 + count * 2) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'NBD_OPT_INFO/GO: information request count does not match its length')
      return false
    }
    const wanted = new Set<number>()
    for (let i = 0; i < count; i++) wanted.add(data.readUInt16BE(parsed.next + 2 + i * 2))
    const refused = await this.refusal(parsed.name)
    if (refused) {
      this.optError(opt, refused.type, refused.message)
      return false
    }
    try {
      await this.openExport(parsed.name)
    } catch (e) {
      this.optError(opt, P.NBD_REP_ERR_UNKNOWN, isStorageError(e) ? e.message : `export '${parsed.name}' cannot be opened`)
      return false
    }
    const dev = this.handle!.device
    const I = P.NBD_INFO_EXPORT_DATA
    const info = Buffer.allocUnsafe(I.size)
    I.set(info, 'info', P.NBD_INFO_EXPORT)
    I.set(info, 'size', dev.size)
    I.set(info, 'transmissionFlags', this.transmissionFlags())
    this.optReply(opt, P.NBD_REP_INFO, info)
    if (wanted.has(P.NBD_INFO_NAME)) {
      this.optReply(opt, P.NBD_REP_INFO, NbdConnection.info(P.NBD_INFO_NAME, parsed.name))
    }
    if (wanted.has(P.NBD_INFO_DESCRIPTION)) {
      const text = `Tandem disk ${parsed.name}${this.handle!.readOnly ? ' (read-only snapshot)' : ''}`
      this.optReply(opt, P.NBD_REP_INFO, NbdConnection.info(P.NBD_INFO_DESCRIPTION, text))
    }
    const B = P.NBD_INFO_BLOCK_SIZE_DATA
    const bs = Buffer.allocUnsafe(B.size)
    B.set(bs, 'info', P.NBD_INFO_BLOCK_SIZE)
    B.set(bs, 'minimum', 1)
    B.set(bs, 'preferred', P.PREFERRED_BLOCK)
    B.set(bs, 'maximum', P.MAX_REQUEST_LENGTH)
    this.optReply(opt, P.NBD_REP_INFO, bs)
    if (this.metaExport !== null && this.metaExport !== parsed.name) this.metaOn = false
    this.optReply(opt, P.NBD_REP_ACK)
    if (opt === P.NBD_OPT_INFO) {
      await this.handle!.release()
      this.handle = null
      return false
    }
    return true
  }

  private async metaContext(opt: number, data: Buffer): Promise<void> {
    const parsed = NbdConnection.name(data, 0)
    if (!parsed || data.length < parsed.next + 4) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'malformed meta context request')
      return
    }
    if (opt === P.NBD_OPT_SET_META_CONTEXT && !this.structured) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first')
      return
    }
    const count = data.readUInt32BE(parsed.next)
    const queries: string[] = []
    let at = parsed.next + 4
    for (let i = 0; i < count; i++) {
      const q = NbdConnection.name(data, at)
      if (!q) {
        this.optError(opt, P.NBD_REP_ERR_INVALID, 'malformed meta context query')
        return
      }
      queries.push(q.name)
      at = q.next
    }
    if (at !== data.length) {
      this.optError(opt, P.NBD_REP_ERR_INVALID, 'meta context request has trailing bytes')
      return
    }
    if (!(await this.ds.exportNames()).includes(parsed.name)) {
      this.optError(opt, P.NBD_REP_ERR_UNKNOWN, `no export named '${parsed.name}'`)
      return
    }
    const refused = await this.refusal(parsed.name)
    if (refused) {
      // NBD spec, SELECTIVETLS: NBD_REP_ERR_TLS_REQD only answers INFO, GO and EXPORT_NAME
      this.optError(opt, P.NBD_REP_ERR_POLICY, refused.message)
      return
    }
    const match =
      (opt === P.NBD_OPT_LIST_META_CONTEXT && count === 0) ||
      queries.some((q) => q === P.META_BASE_ALLOCATION || (opt === P.NBD_OPT_LIST_META_CONTEXT && q === 'base:'))
    if (opt === P.NBD_OPT_SET_META_CONTEXT) {
      this.metaExport = parsed.name
      this.metaOn = match
    }
    if (match) {
      const n = Buffer.from(P.META_BASE_ALLOCATION)
      const b = Buffer.allocUnsafe(4 + n.length)
      b.writeUInt32BE(opt === P.NBD_OPT_SET_META_CONTEXT ? P.META_CONTEXT_ID : 0, 0)
      n.copy(b, 4)
      this.optReply(opt, P.NBD_REP_META_CONTEXT, b)
    }
    this.optReply(opt, P.NBD_REP_ACK)
  }

  // ---- transmission ----------------------------------------------------------------------

  private async transmission(): Promise<void> {
    this.metrics.connections.inc({ protocol: 'nbd' })
    try {
      for (;;) {
        const h = await this.q.read(REQ.size)
        if (REQ.get(h, 'magic') !== P.NBD_REQUEST_MAGIC) throw new ProtocolError('bad request magic')
        const flags = REQ.get(h, 'flags')
        const type = REQ.get(h, 'type')
        const offset = REQ.get(h, 'offset') // above 2^53: not a safe integer, refused by the export
        const length = REQ.get(h, 'length')
        const oversized = length > P.MAX_REQUEST_LENGTH
        if (type === P.NBD_CMD_WRITE && length > P.MAX_SKIPPED_PAYLOAD) throw new ProtocolError(`write of ${length} bytes exceeds the ${P.MAX_REQUEST_LENGTH}-byte maximum`)
        if (type === P.NBD_CMD_DISC) return
        // the bytes this request holds while in flight (an oversized READ or WRITE is refused: none)
        const cost = (type === P.NBD_CMD_READ || type === P.NBD_CMD_WRITE) && !oversized ? length : 0
        while (!this.admits(cost)) {
          if (this.isClosed()) throw new ProtocolError('connection closed')
          await new Promise<void>((r) => (this.slot = r))
        }
        let payload: Buffer | null = null
        if (type === P.NBD_CMD_WRITE) {
          if (oversized) await this.q.skip(length) // refused by check(): EINVAL, the connection goes on
          else payload = await this.q.read(length)
        }
        this.alone = this.inflight === 0
        this.inflight++
        this.charged += cost
        void this.request(flags, type, REQ.getBig(h, 'cookie'), offset, length, payload).finally(() => {
          this.inflight--
          this.charged -= cost
          this.kick()
        })
      }
    } finally {
      this.metrics.connections.dec({ protocol: 'nbd' })
    }
  }

  /**
   * Whether the next request (holding `cost` bytes) may start: within MAX_INFLIGHT, and within
   * MAX_CONNECTION_BYTES counting the requests in flight and the replies the kernel has not taken
   * yet. A request may always start alone, so every size up to MAX_REQUEST_LENGTH completes.
   */
  private admits(cost: number): boolean {
    if (this.inflight >= P.MAX_INFLIGHT) return false
    const held = this.charged + this.sock.writableLength
    return held === 0 || held + cost <= P.MAX_CONNECTION_BYTES
  }

  /**
   * The protocol's own rules for a request. Range and read-only are the export's (the `checked`
   * filter): its typed errors reach the client through P.nbdErrno.
   */
  private check(flags: number, type: number, offset: number, length: number): number {
    if (flags & ~KNOWN_CMD_FLAGS) return P.NBD_EINVAL
    if (type === P.NBD_CMD_FLUSH) return offset === 0 && length === 0 ? 0 : P.NBD_EINVAL
    if ((type === P.NBD_CMD_READ || type === P.NBD_CMD_WRITE) && length > P.MAX_REQUEST_LENGTH) return P.NBD_EINVAL
    if (type === P.NBD_CMD_BLOCK_STATUS && (!this.metaOn || length === 0)) return P.NBD_EINVAL
    if ((flags & P.NBD_CMD_FLAG_DF || flags & P.NBD_CMD_FLAG_REQ_ONE) && !this.structured) return P.NBD_EINVAL
    if (flags & P.NBD_CMD_FLAG_FAST_ZERO && type !== P.NBD_CMD_WRITE_ZEROES) return P.NBD_EINVAL
    if (!(type in OP_NAMES)) return P.NBD_EINVAL
    return 0
  }

  /** This connection's requests to its export, for /metrics. */
  private tally: ExportTally | null = null

  private async request(flags: number, type: number, cookie: bigint, offset: number, length: number, payload: Buffer | null): Promise<void> {
    const op = OP_NAMES[type] ?? 'unknown'
    const t0 = process.hrtime.bigint()
    let read = 0
    let written = 0
    let errno = this.check(flags, type, offset, length)
    const dev = this.handle!.device
    try {
      if (errno === 0) {
        switch (type) {
          case P.NBD_CMD_READ: {
            // nothing to read: a bare reply (structured: NONE, since a data chunk carries a byte at least)
            if (length === 0) {
              checkRange(dev, offset, 0) // the export does not see it
              break
            }
            const data = await dev.read(offset, length)
            read = length
            this.replyData(cookie, offset, data)
            return
          }
          case P.NBD_CMD_WRITE:
            await dev.write(offset, payload!, { fua: (flags & P.NBD_CMD_FLAG_FUA) !== 0 })
            written = length
            break
          case P.NBD_CMD_FLUSH:
            await dev.flush()
            break
          case P.NBD_CMD_TRIM:
            await dev.discard(offset, length)
            if (flags & P.NBD_CMD_FLAG_FUA) await dev.flush()
            break
          case P.NBD_CMD_CACHE:
            checkRange(dev, offset, length) // the one request the export does not see
            break
          case P.NBD_CMD_WRITE_ZEROES:
            if (flags & P.NBD_CMD_FLAG_FAST_ZERO) {
              // Fast only when it is already zero: say so at once rather than write it slowly.
              checkWritable(dev) // it writes nothing, so the export does not check it
              const st = await dev.blockStatus(offset, length)
              if (!st.every((e) => e.zero)) {
                errno = P.NBD_ENOTSUP
                break
              }
            } else {
              await dev.writeZeroes(offset, length, { mayUnmap: (flags & P.NBD_CMD_FLAG_NO_HOLE) === 0 })
            }
            if (flags & P.NBD_CMD_FLAG_FUA) await dev.flush()
            break
          case P.NBD_CMD_BLOCK_STATUS: {
            const ext = await dev.blockStatus(offset, length)
            this.replyBlockStatus(cookie, ext, (flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0)
            return
          }
        }
      }
    } catch (e) {
      errno = isStorageError(e) ? P.nbdErrno(e.code, WRITES.has(type)) : P.NBD_EIO
      if (!isStorageError(e)) this.log.error({ err: e, op, offset, length }, 'nbd: request failed')
    } finally {
      ;(this.tally ??= this.metrics.tally(this.handle!.name, 'nbd')).request(op, t0, errno !== 0, read, written)
    }
    this.replyStatus(cookie, errno)
  }

  /** A structured reply chunk's header into `b` (the chunk's payload follows it there). */
  private static chunk(b: Buffer, flags: number, type: number, cookie: bigint, length: number): void {
    SR.set(b, 'magic', P.NBD_STRUCTURED_REPLY_MAGIC)
    SR.set(b, 'flags', flags)
    SR.set(b, 'type', type)
    SR.setBig(b, 'cookie', cookie)
    SR.set(b, 'length', length)
  }

  private static simple(errno: number, cookie: bigint): Buffer {
    const b = Buffer.allocUnsafe(SIMPLE.size)
    SIMPLE.set(b, 'magic', P.NBD_SIMPLE_REPLY_MAGIC)
    SIMPLE.set(b, 'error', errno)
    SIMPLE.setBig(b, 'cookie', cookie)
    return b
  }

  private replyStatus(cookie: bigint, errno: number): void {
    if (this.structured && errno !== 0) {
      // no message: the errno says it all
      const b = Buffer.allocUnsafe(SR.size + P.NBD_CHUNK_ERROR.size)
      NbdConnection.chunk(b, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_ERROR, cookie, P.NBD_CHUNK_ERROR.size)
      P.NBD_CHUNK_ERROR.set(b, 'error', errno, SR.size)
      P.NBD_CHUNK_ERROR.set(b, 'messageLength', 0, SR.size)
      this.send(b)
      return
    }
    if (this.structured) {
      const b = Buffer.allocUnsafe(SR.size)
      NbdConnection.chunk(b, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, cookie, 0)
      this.send(b)
      return
    }
    this.send(NbdConnection.simple(errno, cookie))
  }

  private replyData(cookie: bigint, offset: number, data: Buffer): void {
    if (!this.structured) {
      this.send(NbdConnection.simple(0, cookie), data)
      return
    }
    const D = P.NBD_CHUNK_OFFSET_DATA
    const b = Buffer.allocUnsafe(SR.size + D.size)
    NbdConnection.chunk(b, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_OFFSET_DATA, cookie, D.size + data.length)
    D.set(b, 'offset', offset, SR.size)
    this.send(b, data)
  }

  private replyBlockStatus(cookie: bigint, ext: Extent[], one: boolean): void {
    const list = one ? ext.slice(0, 1) : ext
    const C = P.NBD_CHUNK_BLOCK_STATUS
    const D = P.NBD_BLOCK_DESCRIPTOR
    const length = C.size + list.length * D.size
    const b = Buffer.allocUnsafe(SR.size + length)
    NbdConnection.chunk(b, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_BLOCK_STATUS, cookie, length)
    C.set(b, 'contextId', P.META_CONTEXT_ID, SR.size)
    list.forEach((e, i) => {
      const at = SR.size + C.size + i * D.size
      D.set(b, 'length', e.length, at)
      D.set(b, 'flags', (e.data ? 0 : P.NBD_STATE_HOLE) | (e.zero ? P.NBD_STATE_ZERO : 0), at)
    })
    this.send(b)
  }
}

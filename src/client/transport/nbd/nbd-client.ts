import { connect, type Socket } from 'node:net'
import type { BlockDevice, Capabilities, Extent, WriteOptions, ZeroOptions } from '../../../disk-formats/block-device.js'
import { StorageError, type StorageErrorCode } from '../../../disk-formats/errors.js'
import { ByteQueue } from '../../../server/net/byte-queue.js'
import * as P from '../../../server/nbd/protocol.js'
import { formatNbdUri, parseNbdUri, type NbdUri } from './uri.js'

export interface NbdClientOptions {
  /** open the export read-only even when the server allows writes */
  readOnly?: boolean
  /** connect and handshake must finish within this many ms (default 10 000) */
  timeoutMs?: number
}

/** What the server said of the export during the handshake. */
export interface NbdExportInfo {
  /** the URI it was opened by */
  uri: string
  name: string
  size: number
  flags: number
  /** NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum request sizes */
  minimumBlock: number
  preferredBlock: number
  maximumBlock: number
  structured: boolean
  blockStatus: boolean
}

interface Pending {
  type: number
  offset: number
  length: number
  /** READ: where the data goes */
  out?: Buffer
  /** BLOCK_STATUS: what the chunks said */
  extents?: Extent[]
  error?: { errno: number; message: string }
  resolve(): void
  reject(e: Error): void
}

/** Largest request when the server names no maximum: the NBD spec's conservative 32 MiB. */
const DEFAULT_MAX_BLOCK = 32 * 1024 * 1024
/**
 * Reply payloads are bounded by what we asked for; a structured chunk other than data is small.
 * A chunk claiming more than this is a broken or hostile server (the connection is closed).
 */
const MAX_CHUNK_OVERHEAD = 64 * 1024

/** The one mapping of NBD errnos to storage errors (the client's edge). */
export function errnoToCode(errno: number): StorageErrorCode {
  switch (errno) {
    case P.NBD_EPERM:
      return 'ReadOnly'
    case P.NBD_ENOSPC:
      return 'NoSpace'
    case P.NBD_EINVAL:
    case P.NBD_EOVERFLOW:
      return 'InvalidArgument'
    case P.NBD_ENOTSUP:
      return 'Unsupported'
    default:
      return 'IoError'
  }
}

/**
 * An NBD client (fixed newstyle, the NBD protocol document) as a BlockDevice: structured replies
 * and base:allocation block status when the server offers them, pipelined requests (any number in
 * flight, answered in any order), requests split at the server's maximum block size. One
 * connection; a lost connection fails every request in flight and every later one with IoError.
 */
export class NbdClient implements BlockDevice {
  readonly size: number
  readonly readOnly: boolean
  private cookie = 1n
  private readonly pending = new Map<bigint, Pending>()
  private dead: Error | null = null
  private closing: Promise<void> | null = null

  private constructor(
    private readonly sock: Socket,
    private readonly q: ByteQueue,
    readonly info: NbdExportInfo,
    readOnly: boolean,
  ) {
    this.size = info.size
    this.readOnly = readOnly || (info.flags & P.NBD_FLAG_READ_ONLY) !== 0
    void this.replies()
  }

  /** Connects to `nbd://HOST[:PORT]/EXPORT` and opens the export (NBD_OPT_GO). */
  static async connect(target: string | NbdUri, opts: NbdClientOptions = {}): Promise<NbdClient> {
    const uri = typeof target === 'string' ? parseNbdUri(target) : target
    const timeoutMs = opts.timeoutMs ?? 10_000
    const sock = connect({ host: uri.host, port: uri.port })
    sock.setNoDelay(true)
    const q = new ByteQueue(
      () => sock.pause(),
      () => sock.resume(),
      // a reply is read as it arrives; the queue needs room for one header plus a chunk of data
      DEFAULT_MAX_BLOCK + MAX_CHUNK_OVERHEAD,
    )
    const lost = (e: Error) => q.end(e)
    sock.on('data', (d: Buffer) => q.push(d))
    sock.on('end', () => lost(new StorageError('IoError', `${uri.host}:${uri.port}: the server closed the connection`)))
    sock.on('close', () => lost(new StorageError('IoError', `${uri.host}:${uri.port}: connection closed`)))
    sock.on('error', (e: NodeJS.ErrnoException) => lost(new StorageError('IoError', `${uri.host}:${uri.port}: ${e.code ?? e.message}`, undefined, { cause: e })))
    const timer = setTimeout(() => {
      lost(new StorageError('IoError', `${uri.host}:${uri.port}: no NBD handshake within ${timeoutMs} ms`))
      sock.destroy()
    }, timeoutMs)
    try {
      const info = await handshake(sock, q, uri.exportName, typeof target === 'string' ? target : formatNbdUri(uri))
      return new NbdClient(sock, q, info, opts.readOnly ?? false)
    } catch (e) {
      sock.destroy()
      throw e
    } finally {
      clearTimeout(timer)
    }
  }

  // ---- requests ---------------------------------------------------------------------------

  private request(type: number, flags: number, offset: number, length: number, payload?: Buffer, out?: Buffer): Promise<Pending> {
    if (this.dead) return Promise.reject(this.dead)
    const cookie = this.cookie++
    const h = Buffer.allocUnsafe(28)
    h.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0)
    h.writeUInt16BE(flags, 4)
    h.writeUInt16BE(type, 6)
    h.writeBigUInt64BE(cookie, 8)
    h.writeBigUInt64BE(BigInt(offset), 16)
    h.writeUInt32BE(length, 24)
    return new Promise((resolve, reject) => {
      const p: Pending = { type, offset, length, out, resolve: () => resolve(p), reject }
      this.pending.set(cookie, p)
      if (payload) {
        this.sock.cork()
        this.sock.write(h)
        this.sock.write(payload)
        this.sock.uncork()
      } else this.sock.write(h)
    })
  }

  /** Splits [offset, offset+length) at the server's maximum request size. */
  private *pieces(offset: number, length: number): Generator<[number, number]> {
    const max = this.info.maximumBlock
    for (let at = 0; at < length; at += max) yield [offset + at, Math.min(max, length - at)]
  }

  private check(offset: number, length: number, writes: boolean): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new StorageError('InvalidArgument', `invalid request: offset ${offset}, length ${length}`)
    }
    if (offset + length > this.size) throw new StorageError('OutOfRange', `request ${offset}+${length} is beyond the end of the export (${this.size} bytes)`)
    if (writes && this.readOnly) throw new StorageError('ReadOnly', `export '${this.info.name}' is read-only`)
  }

  private static failed(p: Pending, what: string): void {
    if (p.error) throw new StorageError(errnoToCode(p.error.errno), `NBD ${what} at ${p.offset}+${p.length}: ${p.error.message || `errno ${p.error.errno}`}`)
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(length)
    await this.readInto(offset, length, out, 0)
    return out
  }

  async readInto(offset: number, length: number, out: Buffer, at: number): Promise<void> {
    this.check(offset, length, false)
    const all = [...this.pieces(offset, length)].map(([o, n]) =>
      this.request(P.NBD_CMD_READ, 0, o, n, undefined, out.subarray(at + o - offset, at + o - offset + n)),
    )
    for (const p of await Promise.all(all)) NbdClient.failed(p, 'read')
  }

  async write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true)
    const flags = opts?.fua && this.info.flags & P.NBD_FLAG_SEND_FUA ? P.NBD_CMD_FLAG_FUA : 0
    const all = [...this.pieces(offset, data.length)].map(([o, n]) => this.request(P.NBD_CMD_WRITE, flags, o, n, data.subarray(o - offset, o - offset + n)))
    for (const p of await Promise.all(all)) NbdClient.failed(p, 'write')
    if (opts?.fua && !(this.info.flags & P.NBD_FLAG_SEND_FUA)) await this.flush()
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.check(offset, length, true)
    if (!(this.info.flags & P.NBD_FLAG_SEND_WRITE_ZEROES)) {
      const zero = Buffer.alloc(Math.min(length, this.info.maximumBlock))
      for (const [o, n] of this.pieces(offset, length)) await this.write(o, zero.subarray(0, n))
      return
    }
    const flags = opts?.mayUnmap ? 0 : P.NBD_CMD_FLAG_NO_HOLE
    // WRITE_ZEROES carries no payload: one request may cover up to 4 GiB - 1
    const all: Promise<Pending>[] = []
    for (let at = 0; at < length; at += 0x8000_0000) all.push(this.request(P.NBD_CMD_WRITE_ZEROES, flags, offset + at, Math.min(0x8000_0000, length - at)))
    for (const p of await Promise.all(all)) NbdClient.failed(p, 'write zeroes')
  }

  async discard(offset: number, length: number): Promise<void> {
    this.check(offset, length, true)
    if (!(this.info.flags & P.NBD_FLAG_SEND_TRIM)) return // advisory: a server without TRIM keeps the data
    const all: Promise<Pending>[] = []
    for (let at = 0; at < length; at += 0x8000_0000) all.push(this.request(P.NBD_CMD_TRIM, 0, offset + at, Math.min(0x8000_0000, length - at)))
    for (const p of await Promise.all(all)) NbdClient.failed(p, 'trim')
  }

  /** TRIM as the server advertises it. */
  capabilities(): Capabilities {
    return { discard: (this.info.flags & P.NBD_FLAG_SEND_TRIM) !== 0, compareAndWrite: false }
  }

  async flush(): Promise<void> {
    if (!(this.info.flags & P.NBD_FLAG_SEND_FLUSH)) return
    NbdClient.failed(await this.request(P.NBD_CMD_FLUSH, 0, 0, 0), 'flush')
  }

  /**
   * base:allocation as Extents (depth 0: the export is one device to us). Without the context,
   * everything is data, as qemu-img map shows an NBD export that offers none.
   */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length, false)
    if (!this.info.blockStatus || length === 0) {
      return length ? [{ offset, length, data: true, zero: false, depth: 0, present: true, hostOffset: offset, file: this.info.uri }] : []
    }
    const out: Extent[] = []
    let at = offset
    const end = offset + length
    while (at < end) {
      const n = Math.min(end - at, 0x8000_0000)
      const p = await this.request(P.NBD_CMD_BLOCK_STATUS, 0, at, n)
      NbdClient.failed(p, 'block status')
      const got = p.extents ?? []
      if (got.length === 0) throw new StorageError('IoError', `NBD block status at ${at}: the server described no extent`)
      for (const e of got) {
        const len = Math.min(e.length, end - at)
        // the export's bytes are at their own offsets in it (qemu-img map shows raw over NBD so)
        out.push({ ...e, offset: at, length: len, hostOffset: at, file: this.info.uri })
        at += len
        if (at >= end) break
      }
    }
    return out
  }

  /** Sends NBD_CMD_DISC after the requests in flight are answered, and closes the socket. */
  close(): Promise<void> {
    return (this.closing ??= (async () => {
      while (this.pending.size > 0 && !this.dead) await new Promise<void>((r) => (this.drained = r))
      if (!this.dead) {
        const h = Buffer.alloc(28)
        h.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0)
        h.writeUInt16BE(P.NBD_CMD_DISC, 6)
        this.sock.end(h)
      }
      this.dead ??= new StorageError('IoError', `NBD export '${this.info.name}' is closed`)
      await new Promise<void>((r) => (this.sock.destroyed ? r() : this.sock.once('close', () => r())))
    })())
  }

  /** Wakes close() when the last request in flight is answered. */
  private drained: (() => void) | null = null

  private done(cookie: bigint, p: Pending): void {
    this.pending.delete(cookie)
    p.resolve()
    if (this.pending.size === 0) this.drained?.()
  }

  // ---- replies ----------------------------------------------------------------------------

  private async replies(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.q.read(4)).readUInt32BE(0)
        if (magic === P.NBD_SIMPLE_REPLY_MAGIC) await this.simpleReply()
        else if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) await this.structuredChunk()
        else throw new StorageError('IoError', `NBD: bad reply magic 0x${magic.toString(16)}`)
      }
    } catch (e) {
      const err = e instanceof StorageError ? e : new StorageError('IoError', `NBD: ${(e as Error).message}`)
      this.dead ??= err
      for (const p of this.pending.values()) p.reject(this.dead)
      this.pending.clear()
      this.drained?.()
      this.sock.destroy()
    }
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie)
    if (!p) throw new StorageError('IoError', `NBD: reply for unknown cookie ${cookie}`)
    return p
  }

  private async simpleReply(): Promise<void> {
    const h = await this.q.read(12)
    const errno = h.readUInt32BE(0)
    const cookie = h.readBigUInt64BE(4)
    const p = this.take(cookie)
    if (errno !== 0) p.error = { errno, message: '' }
    // a successful simple reply to READ carries exactly the bytes asked for
    else if (p.type === P.NBD_CMD_READ) await this.q.readInto(p.out!, 0, p.length)
    this.done(cookie, p)
  }

  private async structuredChunk(): Promise<void> {
    const h = await this.q.read(16)
    const flags = h.readUInt16BE(0)
    const type = h.readUInt16BE(2)
    const cookie = h.readBigUInt64BE(4)
    const length = h.readUInt32BE(12)
    const p = this.take(cookie)
    if (length > p.length + MAX_CHUNK_OVERHEAD && length > MAX_CHUNK_OVERHEAD) {
      throw new StorageError('IoError', `NBD: a ${length}-byte reply chunk for a ${p.length}-byte request`)
    }
    switch (type) {
      case P.NBD_REPLY_TYPE_NONE:
        if (length !== 0) throw new StorageError('IoError', 'NBD: NONE chunk with a payload')
        break
      case P.NBD_REPLY_TYPE_OFFSET_DATA: {
        const off = Number((await this.q.read(8)).readBigUInt64BE(0))
        const n = length - 8
        if (p.type !== P.NBD_CMD_READ || n < 1 || off < p.offset || off + n > p.offset + p.length) {
          throw new StorageError('IoError', `NBD: data chunk ${off}+${n} outside the request ${p.offset}+${p.length}`)
        }
        await this.q.readInto(p.out!, off - p.offset, n)
        break
      }
      case P.NBD_REPLY_TYPE_OFFSET_HOLE: {
        const b = await this.q.read(length)
        if (length !== 12) throw new StorageError('IoError', 'NBD: malformed hole chunk')
        const off = Number(b.readBigUInt64BE(0))
        const n = b.readUInt32BE(8)
        if (p.type !== P.NBD_CMD_READ || off < p.offset || off + n > p.offset + p.length) throw new StorageError('IoError', 'NBD: hole chunk outside the request')
        p.out!.fill(0, off - p.offset, off - p.offset + n)
        break
      }
      case P.NBD_REPLY_TYPE_BLOCK_STATUS: {
        const b = await this.q.read(length)
        if (length < 12 || (length - 4) % 8 !== 0) throw new StorageError('IoError', 'NBD: malformed block status chunk')
        const list: Extent[] = (p.extents ??= [])
        for (let i = 4; i < length; i += 8) {
          const state = b.readUInt32BE(i + 4)
          list.push({ offset: 0, length: b.readUInt32BE(i), data: !(state & P.NBD_STATE_HOLE), zero: (state & P.NBD_STATE_ZERO) !== 0, depth: 0, present: true })
        }
        break
      }
      case P.NBD_REPLY_TYPE_ERROR:
      case P.NBD_REPLY_TYPE_ERROR_OFFSET: {
        const b = await this.q.read(length)
        if (length < 6) throw new StorageError('IoError', 'NBD: malformed error chunk')
        const mlen = b.readUInt16BE(4)
        if (6 + mlen > length) throw new StorageError('IoError', 'NBD: malformed error chunk')
        p.error ??= { errno: b.readUInt32BE(0), message: b.toString('utf8', 6, 6 + mlen) }
        break
      }
      default:
        // an unknown chunk type: skip it; an unknown error type (high bit set) fails the request
        await this.q.read(length)
        if (type & 0x8000) p.error ??= { errno: P.NBD_EIO, message: `unknown error chunk type ${type}` }
    }
    if (flags & P.NBD_REPLY_FLAG_DONE) this.done(cookie, p)
  }
}

// ---- handshake ------------------------------------------------------------------------------

function option(sock: Socket, opt: number, data: Buffer = Buffer.alloc(0)): void {
  const h = Buffer.allocUnsafe(16)
  h.writeBigUInt64BE(P.IHAVEOPT, 0)
  h.writeUInt32BE(opt, 8)
  h.writeUInt32BE(data.length, 12)
  sock.write(Buffer.concat([h, data]))
}

async function optionReply(q: ByteQueue, opt: number): Promise<{ type: number; data: Buffer }> {
  const h = await q.read(20)
  if (h.readBigUInt64BE(0) !== P.NBD_OPT_REPLY_MAGIC) throw new StorageError('IoError', 'NBD: bad option reply magic')
  if (h.readUInt32BE(8) !== opt) throw new StorageError('IoError', `NBD: reply to option ${h.readUInt32BE(8)} while waiting for ${opt}`)
  const len = h.readUInt32BE(16)
  // option replies are small (names, descriptions): a larger one is not a server we can talk to
  if (len > 64 * 1024) throw new StorageError('IoError', `NBD: option reply of ${len} bytes`)
  return { type: h.readUInt32BE(12), data: await q.read(len) }
}

const REP_ERRORS: Record<number, [StorageErrorCode, string]> = {
  [P.NBD_REP_ERR_UNKNOWN]: ['NotFound', 'no such export'],
  [P.NBD_REP_ERR_POLICY]: ['ReadOnly', 'refused by the server\'s policy'],
  [P.NBD_REP_ERR_TLS_REQD]: ['ReadOnly', 'the server requires TLS for this export'],
  [P.NBD_REP_ERR_UNSUP]: ['Unsupported', 'not supported by the server'],
  [P.NBD_REP_ERR_INVALID]: ['InvalidArgument', 'invalid request'],
  [P.NBD_REP_ERR_TOO_BIG]: ['InvalidArgument', 'request too big'],
}

function repError(type: number, data: Buffer, what: string): StorageError {
  const [code, text] = REP_ERRORS[type] ?? ['IoError', `error ${type - P.NBD_REP_FLAG_ERROR}`]
  const msg = data.length ? data.toString('utf8') : text
  return new StorageError(code, `NBD ${what}: ${msg}`)
}

/** Fixed newstyle: structured replies and base:allocation if offered, then NBD_OPT_GO. */
async function handshake(sock: Socket, q: ByteQueue, name: string, uri: string): Promise<NbdExportInfo> {
  const hello = await q.read(18)
  if (hello.readBigUInt64BE(0) !== P.NBDMAGIC) throw new StorageError('IoError', 'not an NBD server (bad magic)')
  if (hello.readBigUInt64BE(8) !== P.IHAVEOPT) throw new StorageError('Unsupported', 'the NBD server does not speak newstyle negotiation')
  const sflags = hello.readUInt16BE(16)
  if (!(sflags & P.NBD_FLAG_FIXED_NEWSTYLE)) throw new StorageError('Unsupported', 'the NBD server does not speak fixed newstyle')
  const cflags = Buffer.allocUnsafe(4)
  cflags.writeUInt32BE(P.NBD_FLAG_C_FIXED_NEWSTYLE | (sflags & P.NBD_FLAG_NO_ZEROES ? P.NBD_FLAG_C_NO_ZEROES : 0), 0)
  sock.write(cflags)

  option(sock, P.NBD_OPT_STRUCTURED_REPLY)
  const sr = await optionReply(q, P.NBD_OPT_STRUCTURED_REPLY)
  const structured = sr.type === P.NBD_REP_ACK

  let blockStatus = false
  const nameBuf = Buffer.from(name, 'utf8')
  if (structured) {
    const ctx = Buffer.from(P.META_BASE_ALLOCATION)
    const req = Buffer.alloc(4 + nameBuf.length + 4 + 4 + ctx.length)
    req.writeUInt32BE(nameBuf.length, 0)
    nameBuf.copy(req, 4)
    req.writeUInt32BE(1, 4 + nameBuf.length)
    req.writeUInt32BE(ctx.length, 8 + nameBuf.length)
    ctx.copy(req, 12 + nameBuf.length)
    option(sock, P.NBD_OPT_SET_META_CONTEXT, req)
    for (;;) {
      const r = await optionReply(q, P.NBD_OPT_SET_META_CONTEXT)
      if (r.type === P.NBD_REP_META_CONTEXT && r.data.toString('utf8', 4) === P.META_BASE_ALLOCATION) blockStatus = true
      if (r.type !== P.NBD_REP_META_CONTEXT) break
    }
  }

  const go = Buffer.alloc(4 + nameBuf.length + 2 + 2)
  go.writeUInt32BE(nameBuf.length, 0)
  nameBuf.copy(go, 4)
  go.writeUInt16BE(1, 4 + nameBuf.length)
  go.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 6 + nameBuf.length)
  option(sock, P.NBD_OPT_GO, go)
  const info: NbdExportInfo = { uri, name, size: -1, flags: 0, minimumBlock: 1, preferredBlock: 4096, maximumBlock: DEFAULT_MAX_BLOCK, structured, blockStatus }
  for (;;) {
    const r = await optionReply(q, P.NBD_OPT_GO)
    if (r.type === P.NBD_REP_ACK) break
    if (r.type & P.NBD_REP_FLAG_ERROR) throw repError(r.type, r.data, `export '${name}'`)
    if (r.type !== P.NBD_REP_INFO || r.data.length < 2) continue
    const kind = r.data.readUInt16BE(0)
    if (kind === P.NBD_INFO_EXPORT && r.data.length >= 12) {
      info.size = Number(r.data.readBigUInt64BE(2))
      info.flags = r.data.readUInt16BE(10)
    } else if (kind === P.NBD_INFO_BLOCK_SIZE && r.data.length >= 14) {
      info.minimumBlock = r.data.readUInt32BE(2)
      info.preferredBlock = r.data.readUInt32BE(6)
      // never more than we can buffer for one reply, whatever the server says
      info.maximumBlock = Math.max(512, Math.min(r.data.readUInt32BE(10), DEFAULT_MAX_BLOCK))
    }
  }
  if (info.size < 0 || !Number.isSafeInteger(info.size)) throw new StorageError('IoError', `NBD export '${name}': the server sent no usable size`)
  return info
}

import { connect, type Socket } from 'node:net'
import { readFile } from 'node:fs/promises'
import { connect as tlsConnect } from 'node:tls'
import type { BlockDevice, Capabilities, Extent, WriteOptions, ZeroOptions } from '../../../disk-formats/block-device.js'
import { StorageError, type StorageErrorCode } from '../../../disk-formats/errors.js'
import { ByteQueue } from '../../../server/net/byte-queue.js'
import * as P from '../../../server/nbd/protocol.js'
import { PSK_CIPHERS } from '../../../server/nbd/tls.js'
import { parsePskFile } from '../../../server/datastore/psk-keys.js'
import { formatNbdUri, parseNbdUri, type NbdUri } from './uri.js'

export interface NbdClientOptions {
  /** open the export read-only even when the server allows writes */
  readOnly?: boolean
  /** connect and handshake must finish within this many ms (default 10 000) */
  timeoutMs?: number
  /** TLS-PSK (NBD_OPT_STARTTLS before anything else): the identity and its key */
  tls?: { identity: string; key: Buffer }
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
const SIMPLE = P.NBD_SIMPLE_REPLY
const SR = P.NBD_STRUCTURED_REPLY
/** Both reply headers begin with a u32 magic that says which one it is. */
const MAGIC_BYTES = 4

export class NbdClient implements BlockDevice {
  readonly size: number
  readonly readOnly: boolean
  private cookie = 1n
  /** the reply header being read: a simple reply's, or a structured chunk's and its data offset */
  private readonly header = Buffer.alloc(SR.size + P.NBD_CHUNK_OFFSET_DATA.size)
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
    const where = `${uri.host}:${uri.port}`
    let link = wire(connect({ host: uri.host, port: uri.port }), where)
    const timer = setTimeout(() => {
      link.q.end(new StorageError('IoError', `${where}: no NBD handshake within ${timeoutMs} ms`))
      link.sock.destroy()
    }, timeoutMs)
    try {
      await greet(link.sock, link.q)
      const psk = opts.tls ?? (uri.tls ? await pskOf(uri.tls) : undefined)
      if (psk) link = wire(await startTls(link.sock, link.q, psk, where), where)
      const info = await handshake(link.sock, link.q, uri.exportName, typeof target === 'string' ? target : formatNbdUri(uri))
      return new NbdClient(link.sock, link.q, info, opts.readOnly ?? false)
    } catch (e) {
      link.sock.destroy()
      throw e
    } finally {
      clearTimeout(timer)
    }
  }

  // ---- requests ---------------------------------------------------------------------------

  private request(type: number, flags: number, offset: number, length: number, payload?: Buffer, out?: Buffer): Promise<Pending> {
    if (this.dead) return Promise.reject(this.dead)
    const cookie = this.cookie++
    const h = P.encodeRequest(type, flags, cookie, offset, length)
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
        this.sock.end(P.encodeRequest(P.NBD_CMD_DISC, 0, 0n, 0, 0))
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
        // both reply headers start with their magic: read it, then the rest of the one it names
        await this.q.readInto(this.header, 0, MAGIC_BYTES)
        const magic = SIMPLE.get(this.header, 'magic')
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
    const h = this.header
    await this.q.readInto(h, MAGIC_BYTES, SIMPLE.size - MAGIC_BYTES)
    const errno = SIMPLE.get(h, 'error')
    const cookie = SIMPLE.getBig(h, 'cookie')
    const p = this.take(cookie)
    if (errno !== 0) p.error = { errno, message: '' }
    // a successful simple reply to READ carries exactly the bytes asked for
    else if (p.type === P.NBD_CMD_READ) await this.q.readInto(p.out!, 0, p.length)
    this.done(cookie, p)
  }

  private async structuredChunk(): Promise<void> {
    const h = this.header
    await this.q.readInto(h, MAGIC_BYTES, SR.size - MAGIC_BYTES)
    const flags = SR.get(h, 'flags')
    const type = SR.get(h, 'type')
    const cookie = SR.getBig(h, 'cookie')
    const length = SR.get(h, 'length')
    const p = this.take(cookie)
    if (length > p.length + MAX_CHUNK_OVERHEAD && length > MAX_CHUNK_OVERHEAD) {
      throw new StorageError('IoError', `NBD: a ${length}-byte reply chunk for a ${p.length}-byte request`)
    }
    switch (type) {
      case P.NBD_REPLY_TYPE_NONE:
        if (length !== 0) throw new StorageError('IoError', 'NBD: NONE chunk with a payload')
        break
      case P.NBD_REPLY_TYPE_OFFSET_DATA: {
        const D = P.NBD_CHUNK_OFFSET_DATA
        await this.q.readInto(h, SR.size, D.size)
        const off = D.get(h, 'offset', SR.size)
        const n = length - D.size
        if (p.type !== P.NBD_CMD_READ || n < 1 || off < p.offset || off + n > p.offset + p.length) {
          throw new StorageError('IoError', `NBD: data chunk ${off}+${n} outside the request ${p.offset}+${p.length}`)
        }
        await this.q.readInto(p.out!, off - p.offset, n)
        break
      }
      case P.NBD_REPLY_TYPE_OFFSET_HOLE: {
        const H = P.NBD_CHUNK_OFFSET_HOLE
        const b = await this.q.read(length)
        if (length !== H.size) throw new StorageError('IoError', 'NBD: malformed hole chunk')
        const off = H.get(b, 'offset')
        const n = H.get(b, 'length')
        if (p.type !== P.NBD_CMD_READ || off < p.offset || off + n > p.offset + p.length) throw new StorageError('IoError', 'NBD: hole chunk outside the request')
        p.out!.fill(0, off - p.offset, off - p.offset + n)
        break
      }
      case P.NBD_REPLY_TYPE_BLOCK_STATUS: {
        const C = P.NBD_CHUNK_BLOCK_STATUS
        const D = P.NBD_BLOCK_DESCRIPTOR
        const b = await this.q.read(length)
        if (length < C.size + D.size || (length - C.size) % D.size !== 0) throw new StorageError('IoError', 'NBD: malformed block status chunk')
        const list: Extent[] = (p.extents ??= [])
        for (let at = C.size; at < length; at += D.size) {
          const state = D.get(b, 'flags', at)
          list.push({ offset: 0, length: D.get(b, 'length', at), data: !(state & P.NBD_STATE_HOLE), zero: (state & P.NBD_STATE_ZERO) !== 0, depth: 0, present: true })
        }
        break
      }
      case P.NBD_REPLY_TYPE_ERROR:
      case P.NBD_REPLY_TYPE_ERROR_OFFSET: {
        const E = P.NBD_CHUNK_ERROR
        const b = await this.q.read(length)
        if (length < E.size) throw new StorageError('IoError', 'NBD: malformed error chunk')
        const mlen = E.get(b, 'messageLength')
        if (E.size + mlen > length) throw new StorageError('IoError', 'NBD: malformed error chunk')
        p.error ??= { errno: E.get(b, 'error'), message: b.toString('utf8', E.size, E.size + mlen) }
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
  const O = P.NBD_OPTION
  const h = Buffer.allocUnsafe(O.size)
  O.setBig(h, 'magic', P.IHAVEOPT)
  O.set(h, 'option', opt)
  O.set(h, 'length', data.length)
  sock.write(Buffer.concat([h, data]))
}

async function optionReply(q: ByteQueue, opt: number): Promise<{ type: number; data: Buffer }> {
  const R = P.NBD_OPTION_REPLY
  const h = await q.read(R.size)
  if (R.getBig(h, 'magic') !== P.NBD_OPT_REPLY_MAGIC) throw new StorageError('IoError', 'NBD: bad option reply magic')
  if (R.get(h, 'option') !== opt) throw new StorageError('IoError', `NBD: reply to option ${R.get(h, 'option')} while waiting for ${opt}`)
  const len = R.get(h, 'length')
  // option replies are small (names, descriptions): a larger one is not a server we can talk to
  if (len > 64 * 1024) throw new StorageError('IoError', `NBD: option reply of ${len} bytes`)
  return { type: R.get(h, 'type'), data: await q.read(len) }
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

/** A socket and the queue its bytes arrive in; a lost connection ends the queue with a typed error. */
function wire<S extends Socket>(sock: S, where: string): { sock: S; q: ByteQueue } {
  sock.setNoDelay(true)
  const q = new ByteQueue(
    () => sock.pause(),
    () => sock.resume(),
    // a reply is read as it arrives; the queue needs room for one header plus a chunk of data
    DEFAULT_MAX_BLOCK + MAX_CHUNK_OVERHEAD,
  )
  const lost = (e: Error) => q.end(e)
  sock.on('data', (d: Buffer) => q.push(d))
  sock.on('end', () => lost(new StorageError('IoError', `${where}: the server closed the connection`)))
  sock.on('close', () => lost(new StorageError('IoError', `${where}: connection closed`)))
  sock.on('error', (e: NodeJS.ErrnoException) => lost(new StorageError('IoError', `${where}: ${e.code ?? e.message}`, undefined, { cause: e })))
  return { sock, q }
}

/** The key of the URI's identity in its PSK file (the file's only key when the URI names none). */
async function pskOf(t: { pskFile: string; identity?: string }): Promise<{ identity: string; key: Buffer }> {
  let text: string
  try {
    text = await readFile(t.pskFile, 'utf8')
  } catch (e) {
    throw new StorageError('NotFound', `cannot read the PSK file '${t.pskFile}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, t.pskFile)
  }
  const keys = parsePskFile(text, t.pskFile)
  const identity = t.identity ?? (keys.size === 1 ? [...keys.keys()][0] : undefined)
  if (identity === undefined) throw new StorageError('InvalidArgument', `'${t.pskFile}' holds ${keys.size} keys: name the identity (nbds://IDENTITY@HOST/… or ?tls-username=)`)
  const key = keys.get(identity)
  if (!key) throw new StorageError('NotFound', `no key for '${identity}' in '${t.pskFile}'`, t.pskFile)
  return { identity, key }
}

/** The server's greeting and our client flags (fixed newstyle). */
async function greet(sock: Socket, q: ByteQueue): Promise<void> {
  const G = P.NBD_GREETING
  const hello = await q.read(G.size)
  if (G.getBig(hello, 'nbdMagic') !== P.NBDMAGIC) throw new StorageError('IoError', 'not an NBD server (bad magic)')
  if (G.getBig(hello, 'optMagic') !== P.IHAVEOPT) throw new StorageError('Unsupported', 'the NBD server does not speak newstyle negotiation')
  const sflags = G.get(hello, 'handshakeFlags')
  if (!(sflags & P.NBD_FLAG_FIXED_NEWSTYLE)) throw new StorageError('Unsupported', 'the NBD server does not speak fixed newstyle')
  const cflags = Buffer.allocUnsafe(P.NBD_CLIENT_FLAGS.size)
  P.NBD_CLIENT_FLAGS.set(cflags, 'clientFlags', P.NBD_FLAG_C_FIXED_NEWSTYLE | (sflags & P.NBD_FLAG_NO_ZEROES ? P.NBD_FLAG_C_NO_ZEROES : 0))
  sock.write(cflags)
}

/**
 * NBD_OPT_STARTTLS, then a TLS-PSK handshake on the same connection (NBD spec, "TLS support"):
 * the plain socket's reader is detached and every later byte goes through the returned socket.
 * A server without TLS, or one that refuses the identity or key, ends in a typed error.
 */
async function startTls(sock: Socket, q: ByteQueue, psk: { identity: string; key: Buffer }, where: string): Promise<Socket> {
  option(sock, P.NBD_OPT_STARTTLS)
  const r = await optionReply(q, P.NBD_OPT_STARTTLS)
  if (r.type !== P.NBD_REP_ACK) throw repError(r.type, r.data, 'STARTTLS')
  for (const ev of ['data', 'end', 'close', 'error']) sock.removeAllListeners(ev)
  const t = tlsConnect({ socket: sock, ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', pskCallback: () => ({ identity: psk.identity, psk: psk.key }), checkServerIdentity: () => undefined })
  await new Promise<void>((resolve, reject) => {
    t.once('secureConnect', resolve)
    t.once('error', (e: NodeJS.ErrnoException) => reject(new StorageError('IoError', `${where}: TLS-PSK handshake as '${psk.identity}' failed: ${e.code ?? e.message}`)))
    t.once('close', () => reject(new StorageError('IoError', `${where}: the server closed the connection during the TLS-PSK handshake (wrong identity or key for '${psk.identity}'?)`)))
  })
  t.removeAllListeners('error')
  t.removeAllListeners('close')
  return t
}

/** Structured replies and base:allocation if offered, then NBD_OPT_GO. */
async function handshake(sock: Socket, q: ByteQueue, name: string, uri: string): Promise<NbdExportInfo> {
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
    if (r.type !== P.NBD_REP_INFO || r.data.length < P.NBD_INFO.size) continue
    const kind = P.NBD_INFO.get(r.data, 'info')
    const E = P.NBD_INFO_EXPORT_DATA
    const B = P.NBD_INFO_BLOCK_SIZE_DATA
    if (kind === P.NBD_INFO_EXPORT && r.data.length >= E.size) {
      info.size = E.get(r.data, 'size')
      info.flags = E.get(r.data, 'transmissionFlags')
    } else if (kind === P.NBD_INFO_BLOCK_SIZE && r.data.length >= B.size) {
      info.minimumBlock = B.get(r.data, 'minimum')
      info.preferredBlock = B.get(r.data, 'preferred')
      // never more than we can buffer for one reply, whatever the server says
      info.maximumBlock = Math.max(512, Math.min(B.get(r.data, 'maximum'), DEFAULT_MAX_BLOCK))
    }
  }
  if (info.size < 0 || !Number.isSafeInteger(info.size)) throw new StorageError('IoError', `NBD export '${name}': the server sent no usable size`)
  return info
}

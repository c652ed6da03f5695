import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import * as P from '../../src/server/nbd/protocol.js'

const SIMPLE = P.NBD_SIMPLE_REPLY
const SR = P.NBD_STRUCTURED_REPLY
/** Both reply headers begin with a u32 magic that says which one it is. */
const MAGIC_BYTES = 4

/**
 * A deliberately small NBD client for tests: fixed newstyle, NBD_OPT_GO, optional structured
 * replies and base:allocation, pipelined requests, on the protocol's structure tables (real
 * peers check those: nbdinfo, qemu-io, nbdcopy). It can also send raw bytes for malformed-input
 * tests, and upgrade to TLS-PSK (`startTls`). Not for production: minimal checks.
 */
export class TestNbdClient {
  /** What arrived and was not read yet (joined only when a read takes from it: large replies stay linear). */
  private chunks: Buffer[] = []
  private have = 0
  private waiters: { n: number; res: (b: Buffer) => void; rej: (e: Error) => void }[] = []
  private closedErr: Error | null = null
  private cookie = 1n
  private pending = new Map<bigint, { res: (r: Reply) => void; type: number; length: number }>()
  private reading = false
  size = 0
  flags = 0
  readonly closed: Promise<void>

  private constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d)
      this.have += d.length
      this.pump()
    })
    this.closed = new Promise((r) => sock.on('close', () => r()))
    sock.on('close', () => this.fail(new Error('connection closed')))
    sock.on('error', (e) => this.fail(e))
  }

  private fail(e: Error) {
    this.closedErr = e
    for (const w of this.waiters.splice(0)) w.rej(e)
  }

  private pump() {
    while (this.waiters.length && this.have >= this.waiters[0].n) {
      const w = this.waiters.shift()!
      const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks)
      const rest = all.subarray(w.n)
      this.chunks = rest.length ? [rest] : []
      this.have = rest.length
      w.res(Buffer.from(all.subarray(0, w.n)))
    }
  }

  read(n: number): Promise<Buffer> {
    return new Promise((res, rej) => {
      if (this.closedErr && this.have < n) return rej(this.closedErr)
      this.waiters.push({ n, res, rej })
      this.pump()
    })
  }

  write(b: Buffer): void {
    this.sock.write(b)
  }

  static async raw(port: number): Promise<TestNbdClient> {
    const sock = connect(port, '127.0.0.1')
    await new Promise<void>((r, j) => {
      sock.once('connect', () => r())
      sock.once('error', j)
    })
    return new TestNbdClient(sock)
  }

  /** Reads the greeting and sends client flags (fixed newstyle, no zeroes). */
  async greet(): Promise<void> {
    const g = await this.read(P.NBD_GREETING.size)
    if (P.NBD_GREETING.getBig(g, 'nbdMagic') !== P.NBDMAGIC) throw new Error('bad greeting')
    const f = Buffer.alloc(P.NBD_CLIENT_FLAGS.size)
    P.NBD_CLIENT_FLAGS.set(f, 'clientFlags', P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES)
    this.write(f)
  }

  sendOption(opt: number, data: Buffer): void {
    const h = Buffer.alloc(P.NBD_OPTION.size)
    P.NBD_OPTION.setBig(h, 'magic', P.IHAVEOPT)
    P.NBD_OPTION.set(h, 'option', opt)
    P.NBD_OPTION.set(h, 'length', data.length)
    this.write(Buffer.concat([h, data]))
  }

  async optionReply(): Promise<{ opt: number; type: number; data: Buffer }> {
    const R = P.NBD_OPTION_REPLY
    const h = await this.read(R.size)
    return { opt: R.get(h, 'option'), type: R.get(h, 'type'), data: await this.read(R.get(h, 'length')) }
  }

  /**
   * NBD_OPT_STARTTLS, then a TLS-PSK handshake as `identity`; resolves with a client speaking
   * over TLS (this one must not be used again). Rejects when STARTTLS gets an error reply (its
   * type in the message) or the handshake fails.
   */
  async startTls(identity: string, keyHex: string): Promise<TestNbdClient> {
    this.sendOption(5, Buffer.alloc(0))
    const r = await this.optionReply()
    if (r.type !== 1) throw new Error(`STARTTLS refused: ${r.type}`)
    const sock = tlsConnect({
      socket: this.sock,
      ciphers: 'TLS_AES_128_GCM_SHA256:ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256',
      pskCallback: () => ({ identity, psk: Buffer.from(keyHex, 'hex') }),
      checkServerIdentity: () => undefined,
    })
    await new Promise<void>((res, rej) => {
      sock.once('secureConnect', () => res())
      sock.once('error', rej)
      sock.once('close', () => rej(new Error('closed during the TLS handshake')))
    })
    return new TestNbdClient(sock)
  }

  /**
   * Connects and enters transmission on `name` (structured replies + base:allocation if asked;
   * TLS-PSK first when `tls` is given).
   */
  static async open(port: number, name: string, opts: { structured?: boolean; tls?: { identity: string; key: string } } = {}): Promise<TestNbdClient> {
    let c = await TestNbdClient.raw(port)
    await c.greet()
    if (opts.tls) c = await c.startTls(opts.tls.identity, opts.tls.key)
    const nm = Buffer.from(name)
    if (opts.structured) {
      c.sendOption(8, Buffer.alloc(0))
      const r = await c.optionReply()
      if (r.type !== 1) throw new Error('structured replies refused')
      const q = Buffer.from('base:allocation')
      const d = Buffer.alloc(4 + nm.length + 4 + 4 + q.length)
      d.writeUInt32BE(nm.length, 0)
      nm.copy(d, 4)
      d.writeUInt32BE(1, 4 + nm.length)
      d.writeUInt32BE(q.length, 8 + nm.length)
      q.copy(d, 12 + nm.length)
      c.sendOption(10, d)
      for (;;) {
        const m = await c.optionReply()
        if (m.type === 1) break
      }
    }
    const d = Buffer.alloc(4 + nm.length + 2)
    d.writeUInt32BE(nm.length, 0)
    nm.copy(d, 4)
    c.sendOption(7, d)
    for (;;) {
      const r = await c.optionReply()
      if (r.type >= 2 ** 31) throw new Error(`GO refused: ${r.type - 2 ** 31} ${r.data.toString()}`)
      if (r.type === P.NBD_REP_INFO && P.NBD_INFO.get(r.data, 'info') === P.NBD_INFO_EXPORT) {
        c.size = P.NBD_INFO_EXPORT_DATA.get(r.data, 'size')
        c.flags = P.NBD_INFO_EXPORT_DATA.get(r.data, 'transmissionFlags')
      }
      if (r.type === 1) break
    }
    c.structured = opts.structured ?? false
    c.startReplies()
    return c
  }

  structured = false

  private async startReplies() {
    if (this.reading) return
    this.reading = true
    try {
      for (;;) {
        const m = await this.read(MAGIC_BYTES)
        const magic = SIMPLE.get(m, 'magic')
        if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
          const h = Buffer.concat([m, await this.read(SIMPLE.size - MAGIC_BYTES)])
          const errno = SIMPLE.get(h, 'error')
          const cookie = SIMPLE.getBig(h, 'cookie')
          const p = this.pending.get(cookie)!
          this.pending.delete(cookie)
          const data = errno === 0 && p.type === 0 ? await this.read(p.length) : Buffer.alloc(0)
          p.res({ errno, data, extents: [] })
        } else if (magic === P.NBD_STRUCTURED_REPLY_MAGIC) {
          const h = Buffer.concat([m, await this.read(SR.size - MAGIC_BYTES)])
          const flags = SR.get(h, 'flags')
          const type = SR.get(h, 'type')
          const cookie = SR.getBig(h, 'cookie')
          const len = SR.get(h, 'length')
          const body = await this.read(len)
          const p = this.pending.get(cookie)!
          const acc = (this.partial.get(cookie) ?? { errno: 0, data: Buffer.alloc(0), extents: [] }) as Reply
          const D = P.NBD_BLOCK_DESCRIPTOR
          if (type === P.NBD_REPLY_TYPE_OFFSET_DATA) acc.data = Buffer.concat([acc.data, body.subarray(P.NBD_CHUNK_OFFSET_DATA.size)])
          else if (type === P.NBD_REPLY_TYPE_BLOCK_STATUS) {
            for (let at = P.NBD_CHUNK_BLOCK_STATUS.size; at < body.length; at += D.size) acc.extents.push({ length: D.get(body, 'length', at), flags: D.get(body, 'flags', at) })
          } else if (type >= 32768) acc.errno = P.NBD_CHUNK_ERROR.get(body, 'error')
          this.partial.set(cookie, acc)
          if (flags & 1) {
            this.pending.delete(cookie)
            this.partial.delete(cookie)
            p.res(acc)
          }
        } else throw new Error(`bad reply magic ${magic.toString(16)}`)
      }
    } catch {
      for (const p of this.pending.values()) p.res({ errno: -1, data: Buffer.alloc(0), extents: [] })
      this.pending.clear()
    }
  }
  private partial = new Map<bigint, Reply>()

  request(type: number, offset: number, length: number, data?: Buffer, flags = 0): Promise<Reply> {
    const cookie = this.cookie++
    const h = P.encodeRequest(type, flags, cookie, offset, length)
    const p = new Promise<Reply>((res) => this.pending.set(cookie, { res, type, length }))
    this.write(data ? Buffer.concat([h, data]) : h)
    return p
  }

  pread(offset: number, length: number) {
    return this.request(0, offset, length)
  }
  pwrite(offset: number, data: Buffer, flags = 0) {
    return this.request(1, offset, data.length, data, flags)
  }
  flush() {
    return this.request(3, 0, 0)
  }
  disconnect() {
    this.write(P.encodeRequest(P.NBD_CMD_DISC, 0, 0n, 0, 0))
    this.sock.end()
  }
  destroy() {
    this.sock.destroy()
  }
}

export interface Reply {
  errno: number
  data: Buffer
  extents: { length: number; flags: number }[]
}

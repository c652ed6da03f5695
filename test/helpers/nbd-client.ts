import { connect, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'

/**
 * A deliberately small NBD client for tests: fixed newstyle, NBD_OPT_GO, optional structured
 * replies and base:allocation, pipelined requests. It can also send raw bytes for malformed-input
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
    const g = await this.read(18)
    if (g.readBigUInt64BE(0) !== 0x4e42444d41474943n) throw new Error('bad greeting')
    const f = Buffer.alloc(4)
    f.writeUInt32BE(3)
    this.write(f)
  }

  sendOption(opt: number, data: Buffer): void {
    const h = Buffer.alloc(16)
    h.writeBigUInt64BE(0x49484156454f5054n, 0)
    h.writeUInt32BE(opt, 8)
    h.writeUInt32BE(data.length, 12)
    this.write(Buffer.concat([h, data]))
  }

  async optionReply(): Promise<{ opt: number; type: number; data: Buffer }> {
    const h = await this.read(20)
    const len = h.readUInt32BE(16)
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) }
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
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) {
        c.size = Number(r.data.readBigUInt64BE(2))
        c.flags = r.data.readUInt16BE(10)
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
        const magic = (await this.read(4)).readUInt32BE(0)
        if (magic === 0x67446698) {
          const h = await this.read(12)
          const errno = h.readUInt32BE(0)
          const cookie = h.readBigUInt64BE(4)
          const p = this.pending.get(cookie)!
          this.pending.delete(cookie)
          const data = errno === 0 && p.type === 0 ? await this.read(p.length) : Buffer.alloc(0)
          p.res({ errno, data, extents: [] })
        } else if (magic === 0x668e33ef) {
          const h = await this.read(16)
          const flags = h.readUInt16BE(0)
          const type = h.readUInt16BE(2)
          const cookie = h.readBigUInt64BE(4)
          const len = h.readUInt32BE(12)
          const body = await this.read(len)
          const p = this.pending.get(cookie)!
          const acc = (this.partial.get(cookie) ?? { errno: 0, data: Buffer.alloc(0), extents: [] }) as Reply
          if (type === 1) acc.data = Buffer.concat([acc.data, body.subarray(8)])
          else if (type === 5) {
            for (let i = 4; i < body.length; i += 8) acc.extents.push({ length: body.readUInt32BE(i), flags: body.readUInt32BE(i + 4) })
          } else if (type >= 32768) acc.errno = body.readUInt32BE(0)
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
    const h = Buffer.alloc(28)
    h.writeUInt32BE(0x25609513, 0)
    h.writeUInt16BE(flags, 4)
    h.writeUInt16BE(type, 6)
    h.writeBigUInt64BE(cookie, 8)
    h.writeBigUInt64BE(BigInt(offset), 16)
    h.writeUInt32BE(length, 24)
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
    const h = Buffer.alloc(28)
    h.writeUInt32BE(0x25609513, 0)
    h.writeUInt16BE(2, 6)
    this.write(h)
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

import { connect, createServer, type Socket } from 'node:net'

/** An iSCSI PDU seen by the proxy (no digests: the framing is BHS, AHS, padded data). */
export interface SeenPdu {
  opcode: number
  bhs: Buffer
}

export interface ProxyOptions {
  /** the first connection is cut (both sides destroyed) once this many bytes went to the target */
  cutAfterBytes?: number
  /** target → initiator: a PDU for which this returns true is not forwarded */
  dropDown?: (pdu: SeenPdu) => boolean
  /** initiator → target: every PDU, as it passes (after the login too) */
  seenUp?: (pdu: SeenPdu) => void
  /**
   * While this returns true the first connection stalls: nothing more passes either way, and the
   * initiator closing its side is not passed on (a path gone dead: the target sees nothing).
   */
  stallFirst?: () => boolean
}

export interface TcpProxy {
  port: number
  /** connections accepted so far */
  connections: number
  /** bytes forwarded to the target, over every connection */
  upBytes: number
  /** per connection: the target's side of it has closed */
  targetClosed: boolean[]
  /** stops accepting: later connections are refused (the target is gone) */
  refuse(): Promise<void>
  /** destroys every connection through it now, both sides (a host gone, as either end sees it) */
  cut(): void
}

/**
 * A user-space TCP proxy on 127.0.0.1 in front of `port` (no iptables here): cuts a connection
 * mid-stream, drops chosen iSCSI PDUs (given `dropDown` or `seenUp`; else any bytes pass as they
 * are), counts what passes. Closed at teardown.
 */
export async function tcpProxy(t: { teardown(fn: () => unknown): void }, port: number, o: ProxyOptions = {}): Promise<TcpProxy> {
  const socks = new Set<Socket>()
  const framed = o.dropDown !== undefined || o.seenUp !== undefined
  const state: TcpProxy = { port: 0, connections: 0, upBytes: 0, targetClosed: [], refuse: async () => {}, cut: () => socks.forEach((s) => s.destroy()) }
  const server = createServer((client) => {
    const n = state.connections++
    const upstream = connect({ host: '127.0.0.1', port })
    socks.add(client).add(upstream)
    let sent = 0
    state.targetClosed[n] = false
    const stalled = () => n === 0 && o.stallFirst?.() === true
    const cut = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', () => stalled() || cut()).on('close', () => stalled() || cut())
    upstream.on('error', cut).on('close', () => {
      state.targetClosed[n] = true
      cut()
    })
    const up = framed ? framer((p) => o.seenUp?.(p)) : null
    client.on('data', (d: Buffer) => {
      if (stalled()) return
      if (n === 0 && o.cutAfterBytes !== undefined && sent + d.length >= o.cutAfterBytes) {
        const part = d.subarray(0, o.cutAfterBytes - sent)
        state.upBytes += part.length
        upstream.write(part, cut)
        sent = o.cutAfterBytes
        return
      }
      sent += d.length
      state.upBytes += d.length
      up?.(d)
      upstream.write(d)
    })
    const down = framed ? framer((p, raw) => void (o.dropDown?.(p) || client.write(raw))) : null
    upstream.on('data', (d: Buffer) => stalled() || (down ? down(d) : client.write(d)))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  state.port = (server.address() as { port: number }).port
  // stops listening at once (server.close's callback waits for the open connections too)
  const closed = new Promise<void>((r) => server.on('close', () => r()))
  state.refuse = async () => void (server.listening && server.close())
  t.teardown(async () => {
    await state.refuse()
    state.cut()
    await closed
  })
  return state
}

/** Splits a byte stream into iSCSI PDUs (no digests); `each` gets the PDU and its bytes. */
function framer(each: (p: SeenPdu, raw: Buffer) => void): (d: Buffer) => void {
  let buf = Buffer.alloc(0)
  return (d) => {
    buf = Buffer.concat([buf, d])
    for (;;) {
      if (buf.length < 48) return
      const dlen = buf.readUIntBE(5, 3)
      const len = 48 + buf[4] * 4 + dlen + ((4 - (dlen % 4)) % 4)
      if (buf.length < len) return
      const raw = buf.subarray(0, len)
      buf = buf.subarray(len)
      each({ opcode: raw[0] & 0x3f, bhs: raw.subarray(0, 48) }, raw)
    }
  }
}

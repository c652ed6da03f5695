import { randomBytes } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import type { SwitchPort } from '../vm/net.js'
import { realTimers, type Timers } from '../vm/timers.js'
import { formatMac } from '../net/address.js'

/** The kvstore guest's EtherType (guests/src/kvstore.c). */
export const KV_ETHERTYPE = 0x88b5

export const KV_DEFAULTS = {
  /** an unanswered request is sent again (the same tag) this often */
  retryMs: 50,
  /** a request unanswered this long fails with KvNoReply */
  timeoutMs: 5000,
} as const

const NO_REPLY = Symbol.for('tandem.KvNoReply')

/** A request the VM did not answer within the timeout: the VM is down or unreachable. */
export class KvNoReply extends StorageError {
  readonly [NO_REPLY] = true
  /** StorageError's brand test would take every StorageError for one: this one checks its own */
  static override [Symbol.hasInstance](v: unknown): boolean {
    return typeof v === 'object' && v !== null && (v as { [NO_REPLY]?: unknown })[NO_REPLY] === true
  }
  constructor(message: string) {
    super('IoError', message)
  }
}

export interface KvClientOptions {
  /** the client's port on the switch (a UdpUplink, or a VirtualSwitch port) */
  port: SwitchPort
  /** the VM's MAC (all ones: any VM, by broadcast, taking the first reply) */
  vmMac: Buffer
  /** the first 3 bytes of the client's MACs (unicast: bit 0 of the first byte clear); default 02:xx:xx, random */
  macPrefix?: Buffer
  retryMs?: number
  timeoutMs?: number
  timers?: Timers
}

export interface KvReply {
  /** the reply's payload: OK, VALUE v, NOTFOUND, COUNT n, ERR reason, BYE */
  text: string
  /** ms from the first send to the reply */
  rttMs: number
  /** sends of the request (1: answered without a retry) */
  sends: number
}

interface Pending {
  resolve: (r: string) => void
  done: boolean
}

/**
 * Requests to a kvstore VM over a switch port. The guest replies to the request's source MAC and
 * echoes nothing else, so each request goes out from a MAC of its own: the client's 3-byte prefix,
 * then a 24-bit tag. A reply is matched by the tag its destination MAC carries; a retry keeps the
 * tag, so a late reply to an earlier try answers the request, and a reply to a request already
 * answered (a duplicate) is ignored (counted in `stale`). Requests may be outstanding at once;
 * the caller keeps at most one per key outstanding, so the VM applies a key's SETs in order.
 */
export class KvClient {
  sent = 0
  retries = 0
  stale = 0
  readonly prefix: Buffer
  private readonly pending = new Map<number, Pending>()
  private tag: number
  private readonly vmMac: Buffer
  private readonly anyVm: boolean
  private readonly timers: Timers
  private readonly retryMs: number
  private readonly timeoutMs: number

  constructor(private readonly o: KvClientOptions) {
    this.vmMac = Buffer.from(o.vmMac)
    this.anyVm = this.vmMac.equals(Buffer.alloc(6, 0xff))
    const rnd = randomBytes(5)
    this.prefix = o.macPrefix ? Buffer.from(o.macPrefix.subarray(0, 3)) : Buffer.from([0x02, rnd[0], rnd[1]])
    if (this.prefix.length !== 3 || this.prefix[0] & 1) throw new StorageError('InvalidArgument', `the client's MAC prefix must be 3 bytes, unicast (got ${this.prefix.toString('hex')})`)
    this.tag = rnd.readUIntBE(2, 3)
    this.timers = o.timers ?? realTimers
    this.retryMs = o.retryMs ?? KV_DEFAULTS.retryMs
    this.timeoutMs = o.timeoutMs ?? KV_DEFAULTS.timeoutMs
    o.port.onReceive = (frame) => this.frame(frame)
  }

  /** The VM's reply to `text`, retried every retryMs; KvNoReply after timeoutMs without one. */
  async request(text: string): Promise<KvReply> {
    let tag = this.tag
    while (this.pending.has(tag)) tag = (tag + 1) & 0xffffff
    this.tag = (tag + 1) & 0xffffff
    const src = Buffer.concat([this.prefix, Buffer.from([tag >> 16, (tag >> 8) & 0xff, tag & 0xff])])
    const frame = Buffer.concat([this.vmMac, src, Buffer.from([KV_ETHERTYPE >> 8, KV_ETHERTYPE & 0xff]), Buffer.from(text)])
    const answered = new AbortController()
    let reply: string | undefined
    const p: Pending = {
      done: false,
      resolve: (r) => {
        reply = r
        p.done = true
        answered.abort()
      },
    }
    this.pending.set(tag, p)
    const t0 = this.timers.now()
    let sends = 0
    try {
      while (!p.done) {
        const elapsed = this.timers.now() - t0
        if (elapsed >= this.timeoutMs) {
          throw new KvNoReply(`no reply from the VM ${this.anyVm ? '(broadcast)' : formatMac(this.vmMac)} in ${(this.timeoutMs / 1000).toFixed(1)} s (${sends} sends of '${text.slice(0, 40)}'): is it running and on the switch?`)
        }
        this.o.port.send(frame)
        this.sent++
        if (sends++ > 0) this.retries++
        await this.timers.sleep(Math.min(this.retryMs, this.timeoutMs - elapsed), answered.signal)
      }
    } finally {
      this.pending.delete(tag)
    }
    return { text: reply!, rttMs: this.timers.now() - t0, sends }
  }

  private frame(f: Buffer): void {
    if (f.length < 14 || f.readUInt16BE(12) !== KV_ETHERTYPE) return
    if (!f.subarray(0, 3).equals(this.prefix)) return
    if (!this.anyVm && !f.subarray(6, 12).equals(this.vmMac)) return
    const p = this.pending.get(f.readUIntBE(3, 3))
    if (!p || p.done) this.stale++
    else {
      // the text ends at a NUL: Ethernet's zero padding, or a trailer the guest adds (the noisy guest's nonce)
      const body = f.subarray(14)
      const nul = body.indexOf(0)
      p.resolve((nul < 0 ? body : body.subarray(0, nul)).toString())
    }
  }
}

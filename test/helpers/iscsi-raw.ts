import { connect, type Socket } from 'node:net'
import type { Test } from 'tap'
import { crc32c } from '../../src/disk-formats/crc32c.js'
import { socketQueue } from '../../src/server/net/tcp-service.js'
import { startServer } from './server.js'

/**
 * An iSCSI initiator over a raw socket, writing literal PDUs (RFC 7143 §11): for what no real
 * initiator does (wrong digests, CmdSN outside the window, replies never read, a login left
 * half-way). It keeps no state but its CmdSN and ITT counters; tests read every PDU themselves.
 */

const le32 = (n: number) => {
  const b = Buffer.alloc(4)
  b.writeUInt32LE(n >>> 0)
  return b
}
const padded = (d: Buffer) => (d.length % 4 ? Buffer.concat([d, Buffer.alloc(4 - (d.length % 4))]) : d)

export interface RawPdu {
  bhs: Buffer
  data: Buffer
}

/** The test told of the target's digests, right or wrong. */
type DigestCheck = Pick<Test, 'fail' | 'equal'>

export const opcode = (p: RawPdu) => p.bhs[0] & 0x3f
/** StatSN, ExpCmdSN and MaxCmdSN of a target PDU (bytes 24, 28, 32). */
export const sequence = (p: RawPdu) => ({ statSN: p.bhs.readUInt32BE(24), expCmdSN: p.bhs.readUInt32BE(28), maxCmdSN: p.bhs.readUInt32BE(32) })
/** Text keys of a login or text response. */
export const textKeys = (p: RawPdu) =>
  new Map(
    p.data
      .toString('latin1')
      .split('\0')
      .filter(Boolean)
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as [string, string]),
  )

export class RawIscsi {
  cmdSN = 1
  private itt = 1
  digests = false

  private constructor(
    readonly sock: Socket,
    private readonly q: ReturnType<typeof socketQueue>['q'],
  ) {}

  static async open(port: number): Promise<RawIscsi> {
    const sock = connect(port, '127.0.0.1')
    await new Promise<void>((r, j) => {
      sock.once('connect', () => r())
      sock.once('error', j)
    })
    return new RawIscsi(sock, socketQueue(sock, 1 << 24).q)
  }

  /** Sends a PDU; `badData` flips the data digest. */
  send(bhs: Buffer, data: Buffer = Buffer.alloc(0), badData = false): void {
    bhs.writeUIntBE(data.length, 5, 3)
    const parts = [bhs]
    if (this.digests) parts.push(le32(crc32c(bhs)))
    if (data.length) {
      parts.push(padded(data))
      if (this.digests) parts.push(le32(crc32c(padded(data)) ^ (badData ? 1 : 0)))
    }
    this.sock.write(Buffer.concat(parts))
  }

  /** Reads a PDU; with digests on, `t` is told whether the target's are right. */
  async read(t?: DigestCheck): Promise<RawPdu> {
    const bhs = await this.q.read(48)
    if (this.digests) {
      const hd = (await this.q.read(4)).readUInt32LE(0)
      if (hd !== crc32c(bhs)) t?.fail('header digest from the target is wrong')
    }
    const dlen = bhs.readUIntBE(5, 3)
    let data: Buffer = Buffer.alloc(0)
    if (dlen) {
      const body = await this.q.read(dlen + ((4 - (dlen % 4)) % 4))
      if (this.digests) {
        const dd = (await this.q.read(4)).readUInt32LE(0)
        t?.equal(dd, crc32c(body), `data digest of a ${dlen}-byte segment (opcode 0x${(bhs[0] & 0x3f).toString(16)})`)
      }
      data = body.subarray(0, dlen)
    }
    return { bhs, data }
  }

  /** One Login Request: current and next stage (0 security, 1 operational, 3 full feature), T when `transit`. */
  loginRequest(csg: number, nsg: number, transit: boolean, text: string): void {
    const b = Buffer.alloc(48)
    b[0] = 0x43
    b[1] = (transit ? 0x80 : 0) | (csg << 2) | (transit ? nsg : 0)
    b.write('\x00\x02\x3d\x00\x00\x07', 8, 'latin1') // ISID
    b.writeUInt32BE(0, 16)
    b.writeUInt32BE(this.cmdSN, 24)
    this.send(b, Buffer.from(text, 'latin1'))
  }

  /** A normal session's login in one step (operational stage to full feature); returns the target's keys. */
  async login(target: string, keys = ''): Promise<Map<string, string>> {
    this.loginRequest(1, 3, true, `InitiatorName=iqn.2026-11.test:raw\0SessionType=Normal\0TargetName=${target}\0${keys}`)
    const r = await this.read()
    if (opcode(r) !== 0x23 || r.bhs[36] !== 0) throw new Error(`login failed: opcode 0x${opcode(r).toString(16)}, status 0x${r.bhs.readUInt16BE(36).toString(16)}`)
    const got = textKeys(r)
    // this helper turns digests on together (both or neither)
    this.digests = got.get('HeaderDigest') === 'CRC32C'
    return got
  }

  /**
   * A SCSI command: immediate data (`write`) or data in (`readLength`). CmdSN is the next one
   * unless given; `immediate` sets I (CmdSN not advanced); `final: false` announces unsolicited Data-Out.
   */
  command(cdb: Buffer, opts: { write?: Buffer; readLength?: number; badData?: boolean; edtl?: number; cmdSN?: number; immediate?: boolean; final?: boolean; writeFlag?: boolean } = {}): number {
    const b = Buffer.alloc(48)
    b[0] = 0x01 | (opts.immediate ? 0x40 : 0)
    const write = opts.write !== undefined || opts.writeFlag === true
    b[1] = (opts.final === false ? 0 : 0x80) | (write ? 0x20 : 0) | (opts.readLength ? 0x40 : 0) | 1 // F, W/R, ATTR simple
    const itt = this.itt++
    b.writeUInt32BE(itt, 16)
    b.writeUInt32BE(opts.edtl ?? (opts.write ? opts.write.length : (opts.readLength ?? 0)), 20)
    b.writeUInt32BE(opts.cmdSN ?? (opts.immediate ? this.cmdSN : this.cmdSN++), 24)
    cdb.copy(b, 32)
    this.send(b, opts.write ?? Buffer.alloc(0), opts.badData)
    return itt
  }

  /** READ(10) and its Data-In gathered up to the status; `immediate` sends it outside the CmdSN window. */
  async readBlocks(lba: number, blocks: number, opts: { t?: DigestCheck; immediate?: boolean } = {}): Promise<{ data: Buffer; status: number }> {
    this.command(read10(lba, blocks), { readLength: blocks * 512, immediate: opts.immediate })
    const parts: Buffer[] = []
    for (;;) {
      const r = await this.read(opts.t)
      if (opcode(r) === 0x25) {
        parts.push(r.data)
        if (r.bhs[1] & 0x01) return { data: Buffer.concat(parts), status: r.bhs[3] } // S: status in the last Data-In
      } else if (opcode(r) === 0x21) return { data: Buffer.concat(parts), status: r.bhs[3] }
      else throw new Error(`READ(10): unexpected opcode 0x${opcode(r).toString(16)}`)
    }
  }

  /**
   * WRITE(10) of `data`: its first `immediate` bytes as immediate data, the rest as each R2T asks,
   * in Data-Out PDUs of at most `segment` bytes. Resolves with the status.
   */
  async writeBlocks(lba: number, data: Buffer, immediate: number, segment = 262144): Promise<number> {
    this.command(write10(lba, data.length / 512), { write: data.subarray(0, immediate), edtl: data.length })
    for (;;) {
      const r = await this.read()
      if (opcode(r) !== 0x31) return r.bhs[3]
      const itt = r.bhs.readUInt32BE(16)
      const ttt = r.bhs.readUInt32BE(20)
      const from = r.bhs.readUInt32BE(40)
      const end = from + r.bhs.readUInt32BE(44)
      for (let at = from, sn = 0; at < end; at += segment, sn++) this.dataOut(itt, ttt, at, data.subarray(at, Math.min(end, at + segment)), false, sn, at + segment >= end)
    }
  }

  dataOut(itt: number, ttt: number, offset: number, data: Buffer, badData = false, dataSN = 0, final = true): void {
    const b = Buffer.alloc(48)
    b[0] = 0x05
    b[1] = final ? 0x80 : 0
    b.writeUInt32BE(itt, 16)
    b.writeUInt32BE(ttt, 20)
    b.writeUInt32BE(dataSN, 36)
    b.writeUInt32BE(offset, 40)
    this.send(b, data, badData)
  }

  /** A NOP-Out ping (immediate, CmdSN not advanced): the NOP-In answering it shows ExpCmdSN and MaxCmdSN. */
  ping(): number {
    const b = Buffer.alloc(48)
    b[0] = 0x40
    b[1] = 0x80
    const itt = this.itt++
    b.writeUInt32BE(itt, 16)
    b.writeUInt32BE(0xffffffff, 20)
    b.writeUInt32BE(this.cmdSN, 24)
    this.send(b)
    return itt
  }

  close(): void {
    this.sock.destroy()
  }
}

/** A READ(10) or WRITE(10) CDB in a 16-byte field. */
export const rw10 = (op: number, lba: number, blocks: number) => {
  const c = Buffer.alloc(16)
  c[0] = op
  c.writeUInt32BE(lba, 2)
  c.writeUInt16BE(blocks, 7)
  return c
}
export const write10 = (lba: number, blocks: number) => rw10(0x2a, lba, blocks)
export const read10 = (lba: number, blocks: number) => rw10(0x28, lba, blocks)

/** An in-process server with one disk, the disk's REST address and a raw connection to the target (closed at teardown). */
export async function rawTarget(t: Test, disk: string, size = 4 << 20) {
  const s = await startServer(t)
  await s.ds.createDisk(disk, size)
  const c = await RawIscsi.open(s.iscsiPort)
  t.teardown(() => c.close())
  return { s, c, api: `http://127.0.0.1:${s.httpPort}/api/v1/disks/${disk}`, target: `iqn.2026-11.local.tandem:${disk}` }
}

/** The disk's writer count from REST, polled until it is 0 or 2 s have passed (a session's release follows its socket's close). */
export async function writersAfterClose(api: string): Promise<number> {
  let writers = 1
  for (let i = 0; i < 100 && writers > 0; i++) {
    writers = ((await (await fetch(api)).json()) as { writers: number }).writers
    if (writers > 0) await new Promise((r) => setTimeout(r, 20))
  }
  return writers
}

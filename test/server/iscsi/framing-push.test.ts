import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import { header } from '../../../src/server/iscsi/bhs.js'
import { DROP, PduBatch, PduReader, PduSplitter, writePdu, type Digests } from '../../../src/server/iscsi/framing.js'
import * as P from '../../../src/server/iscsi/pdu.js'
import { ByteQueue } from '../../../src/server/net/byte-queue.js'
import { pattern } from '../../helpers/peers.js'

/*
 * The push framing the initiator reads with (PduSplitter: bytes in any split, PDUs out at once,
 * large Data-In received in place) and the batch it writes with (PduBatch: one write per turn)
 * against the promise-based PduReader and writePdu the target uses: the same bytes, the same PDUs.
 */

/** A socket that records what is written to it. */
function recorder(): { sock: Socket; writes: Buffer[][]; bytes: () => Buffer } {
  const writes: Buffer[][] = []
  let corked: Buffer[] | null = null
  const sock = {
    destroyed: false,
    cork: () => (corked = []),
    uncork: () => {
      if (corked) writes.push(corked)
      corked = null
    },
    write: (b: Buffer) => {
      if (corked) corked.push(b)
      else writes.push([b])
      return true
    },
  } as unknown as Socket
  return { sock, writes, bytes: () => Buffer.concat(writes.flat()) }
}

const tick = () => new Promise<void>((r) => process.nextTick(r))

/** Data-In for task `itt`: `data` at BufferOffset `at`. */
function dataIn(itt: number, at: number): Buffer {
  const b = header(P.SCSI_DATA_IN, 0x80)
  b.writeUInt32BE(itt, 16)
  b.writeUInt32BE(at, 40)
  return b
}

/** The PDUs of the stream: header, data (a destination for Data-In of task 7). */
const pdus = (): [Buffer, Buffer][] => PDUS

function build(): [Buffer, Buffer][] {
  const nop = header(P.NOP_IN, 0x80)
  nop.writeUInt32BE(0xffffffff, 16)
  const resp = header(P.SCSI_RESPONSE, 0x80)
  resp.writeUInt32BE(3, 16)
  return [
    [nop, Buffer.alloc(0)],
    [resp, pattern(18, 1)], // sense: padded by 2
    [dataIn(7, 1000), pattern(5001, 2)], // placed, padded by 3
    [dataIn(7, 8192), pattern(70000, 3)], // placed, large: received in place
    [dataIn(9, 0), pattern(333, 4)], // no destination: a buffer of its own
    [dataIn(8, 0), pattern(40001, 5)], // dropped; large, padded by 3
    [header(P.TEXT_RESPONSE, 0x80), Buffer.from('a=b\0')],
  ]
}

const PDUS = build()
const DEST_LEN = 8192 + 70000

/** Parses `stream` fed by `feed`; returns what was delivered (copied) and the destination buffer. */
function split(digests: Digests, feed: (s: PduSplitter) => void, max = 1 << 20) {
  const dest = Buffer.alloc(DEST_LEN)
  const got: { bhs: Buffer; data: Buffer; direct?: boolean; digestError?: boolean }[] = []
  const s = new PduSplitter(
    digests,
    max,
    (m) => new Error(m),
    (bhs) => (P.ittOf(bhs) === 7 ? dest : P.ittOf(bhs) === 8 ? DROP : null),
    (p) => got.push({ bhs: Buffer.from(p.bhs), data: Buffer.from(p.data), direct: p.direct, digestError: p.digestError }),
  )
  feed(s)
  return { got, dest }
}

/** The PDUs written by PduBatch (one turn), their bytes, and the writes made. */
async function batched(digests: Digests) {
  const r = recorder()
  const batch = new PduBatch(r.sock, digests)
  for (const [bhs, data] of pdus()) batch.send(Buffer.from(bhs), data)
  t.equal(r.writes.length, 0, 'nothing written before the turn ends')
  await tick()
  return { bytes: r.bytes(), writes: r.writes }
}

function expectPdus(t: Test, got: ReturnType<typeof split>['got'], dest: Buffer) {
  const want = pdus()
  t.equal(got.length, want.length, 'every PDU delivered')
  for (let i = 0; i < want.length; i++) {
    t.equal(P.opcodeOf(got[i].bhs), P.opcodeOf(want[i][0]))
    t.equal(got[i].bhs.readUIntBE(5, 3), want[i][1].length, 'DataSegmentLength set')
    const itt = P.ittOf(got[i].bhs)
    if (itt === 8) t.equal(got[i].data.length, 0, 'dropped data: none delivered')
    else t.ok(got[i].data.equals(want[i][1]), `PDU ${i}: its data`)
    t.equal(got[i].direct ?? false, itt === 7, `PDU ${i}: placed only when it has a destination`)
  }
  t.ok(dest.subarray(1000, 6001).equals(want[2][1]) && dest.subarray(8192).equals(want[3][1]), 'placed data is in the destination')
}

for (const digests of [
  { header: false, data: false },
  { header: true, data: true },
]) {
  t.test(`digests ${digests.header}: PduBatch writes what writePdu writes; PduSplitter reads it in any split as PduReader does`, async (t) => {
    const { bytes, writes } = await batched(digests)
    const r = recorder()
    for (const [bhs, data] of pdus()) writePdu(r.sock, Buffer.from(bhs), data, digests)
    t.ok(bytes.equals(r.bytes()), 'the same bytes as writePdu')
    t.equal(writes.length, 1, 'one turn: one write (corked)')
    t.ok(writes[0].includes(pdus()[3][1]), 'a large data segment is written as it is (not copied)')

    // PduReader over a ByteQueue: the reference
    const q = new ByteQueue(
      () => {},
      () => {},
    )
    q.push(bytes)
    const reader = new PduReader(q, digests, 1 << 20, (m) => new Error(m))
    const refDest = Buffer.alloc(DEST_LEN)
    const ref: Buffer[] = []
    for (let i = 0; i < pdus().length; i++) {
      const p = await reader.read((bhs) => (P.ittOf(bhs) === 7 ? refDest : P.ittOf(bhs) === 8 ? DROP : null))
      ref.push(Buffer.from(p.data))
    }

    const whole = split(digests, (s) => s.push(bytes))
    expectPdus(t, whole.got, whole.dest)
    t.same(
      whole.got.map((p) => p.data),
      ref,
      'what PduReader reads',
    )
    t.ok(whole.dest.equals(refDest), 'placed where PduReader places')

    const bytewise = split(digests, (s) => {
      for (let i = 0; i < bytes.length; i++) s.push(bytes.subarray(i, i + 1))
    })
    expectPdus(t, bytewise.got, bytewise.dest)

    // chunks of pseudo-random sizes, each in a reused buffer (as a socket's onread gives them)
    let x = 12345
    const scratch = Buffer.alloc(4096)
    const chunked = split(digests, (s) => {
      for (let at = 0; at < bytes.length; ) {
        x = (x * 1103515245 + 12345) >>> 0
        const n = Math.min(1 + (x % 4096), bytes.length - at)
        bytes.copy(scratch, 0, at, at + n)
        s.push(scratch.subarray(0, n))
        scratch.fill(0xee)
        at += n
      }
    })
    expectPdus(t, chunked.got, chunked.dest)

    // as a socket reads: at most the buffer receiveInto gives, into it
    let direct = 0
    const read = split(digests, (s) => {
      const recv = Buffer.alloc(16384)
      for (let at = 0; at < bytes.length; ) {
        const into = s.receiveInto(8192, recv)
        const n = Math.min(into.length, bytes.length - at)
        bytes.copy(into, 0, at, at + n)
        if (into.buffer !== recv.buffer) direct += n
        s.received(into, n)
        at += n
      }
    })
    expectPdus(t, read.got, read.dest)
    t.ok(direct >= 70000 - 16384, `the large placed segment was received in place (${direct} bytes)`)
  })
}

t.test('bad framing: a header digest or an oversized segment throws; a bad data digest flags its PDU only', async (t) => {
  const digests = { header: true, data: true }
  const { bytes } = await batched(digests)
  const badHeader = Buffer.from(bytes)
  badHeader[3] ^= 1 // in the first BHS
  t.throws(() => split(digests, (s) => s.push(badHeader)), /header digest error/)
  t.throws(
    () => split(digests, (s) => s.push(bytes), 1024),
    /exceeds MaxRecvDataSegmentLength 1024/,
  )
  // the sense data of the second PDU: after BHS + digest of the first, BHS + digest of the second
  const badData = Buffer.from(bytes)
  badData[52 + 52 + 5] ^= 1
  const { got } = split(digests, (s) => s.push(badData))
  t.equal(got.length, pdus().length, 'the stream goes on')
  t.same(
    got.map((p) => p.digestError ?? false),
    [false, true, false, false, false, false, false],
    'only that PDU has a digest error',
  )
})

t.test('hold: nothing more is delivered until resume; what was held comes in order', async (t) => {
  const digests = { header: false, data: false }
  const { bytes } = await batched(digests)
  const seen: number[] = []
  const dest = Buffer.alloc(DEST_LEN)
  const s: PduSplitter = new PduSplitter(
    digests,
    1 << 20,
    (m) => new Error(m),
    (bhs) => (P.ittOf(bhs) === 7 ? dest : null),
    (p) => {
      seen.push(P.opcodeOf(p.bhs))
      s.hold()
    },
  )
  const recv = Buffer.from(bytes)
  s.push(recv)
  recv.fill(0) // the caller's buffer is reused: what was held was copied
  t.same(seen, [P.NOP_IN], 'one PDU, then held')
  t.equal(s.receiveInto(1, Buffer.alloc(8)).length, 8, 'held: nothing is received in place')
  for (let i = 1; i < pdus().length; i++) s.resume()
  t.same(
    seen,
    pdus().map(([b]) => P.opcodeOf(b)),
    'each resume delivers the next, in order',
  )
  t.ok(dest.subarray(8192).equals(pdus()[3][1]), 'held bytes placed after resume')
})

import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import { crc32c } from '../../../src/disk-formats/crc32c.js'
import {
  FRAME_OVERHEAD,
  FT_TYPE,
  FT_TYPES,
  FrameDecoder,
  FtProtocolError,
  HEAD_BYTES,
  MAX_PAYLOAD,
  MAX_TEXT,
  decodeFrame,
  encodeFrame,
  type FtMessage,
} from '../../../src/client/ft/protocol.js'
import { rng } from '../../helpers/peers.js'
import { codeOf } from '../../helpers/ft-errors.js'

const sha = Buffer.alloc(32, 0xab)
const hello = { version: 1, vm: 'vm1', mode: 'replay', lockGeneration: 7, memoryBytes: 64 << 20, imageSha256: sha, start: 'boot', backupReads: 'disk', instret: 0 } as const

/** one of every message type, with values that use every field */
const SAMPLES: FtMessage[] = [
  { type: 'HELLO', ...hello },
  { type: 'HELLO_OK', ...hello, mode: 'colo', start: 'state', backupReads: 'log', lockGeneration: 2 ** 53 - 1, instret: 123456789 },
  { type: 'HELLO_REFUSED', version: 1, reason: 'image', text: 'image SHA-256 differs: ab… ≠ cd…' },
  { type: 'STATE', data: Buffer.from('section bytes') },
  { type: 'STATE_END', instret: 5e9, hash: Buffer.alloc(32, 0x5a) },
  { type: 'LOG', records: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8, 9]) },
  { type: 'ACK', received: 1000.5, executed: 999, readsDone: 12 },
  { type: 'HEARTBEAT', ms: 12.25 },
  { type: 'ERROR', code: 'BadCrc', text: 'frame CRC mismatch' },
  { type: 'COLO', data: Buffer.from([3, 0, 0, 0, 7]) },
  { type: 'FEEDBACK', data: Buffer.from([1, 0, 0, 0, 7, 0, 0, 0]) },
  { type: 'BYE', reason: 'handover', instret: 42 },
]

/** a frame whose CRC is recomputed after `edit` (to reach the checks behind the CRC) */
function reframe(m: FtMessage, edit: (f: Buffer) => void): Buffer {
  const f = encodeFrame(m)
  edit(f)
  f.writeUInt32LE(crc32c(f.subarray(0, f.length - 4)), f.length - 4)
  return f
}

t.test('every message type round-trips through a frame and through the decoder', async (t) => {
  t.same(new Set(SAMPLES.map((m) => m.type)), new Set(FT_TYPES), 'a sample of each type')
  for (const m of SAMPLES) t.same(decodeFrame(encodeFrame(m)), m, m.type)
  const d = new FrameDecoder()
  t.same(d.push(Buffer.concat(SAMPLES.map(encodeFrame))), SAMPLES, 'all in one chunk')
  t.equal(d.buffered, 0)
  d.end()
})

t.test('golden bytes: a HEARTBEAT frame, little-endian', async (t) => {
  const f = encodeFrame({ type: 'HEARTBEAT', ms: 1 })
  const head = Buffer.from([8, 0, 0, 0, FT_TYPE.HEARTBEAT, 0, 0, 0])
  const payload = Buffer.from([0, 0, 0, 0, 0, 0, 0xf0, 0x3f])
  const crc = Buffer.alloc(4)
  crc.writeUInt32LE(crc32c(Buffer.concat([head, payload])))
  t.same(f, Buffer.concat([head, payload, crc]))
  t.equal(f.length, FRAME_OVERHEAD + 8)
})

t.test('bytes corrupted at named offsets give the exact error', async (t) => {
  const hb = encodeFrame({ type: 'HEARTBEAT', ms: 1 })
  const at = (off: number, v: number) => {
    const f = Buffer.from(hb)
    f[off] = v
    return f
  }
  t.equal(codeOf(() => decodeFrame(at(4, 99))), 'BadType', 'type 99')
  t.equal(codeOf(() => decodeFrame(at(4, 0))), 'BadType', 'type 0')
  t.equal(codeOf(() => decodeFrame(at(5, 1))), 'BadFlags', 'a flag bit')
  t.equal(codeOf(() => decodeFrame(at(6, 1))), 'BadReserved', 'reserved low byte')
  t.equal(codeOf(() => decodeFrame(at(7, 0x80))), 'BadReserved', 'reserved high byte')
  t.equal(codeOf(() => decodeFrame(at(8, 1))), 'BadCrc', 'a payload byte')
  t.equal(codeOf(() => decodeFrame(at(hb.length - 1, hb[hb.length - 1] ^ 1))), 'BadCrc', 'the CRC itself')
  t.equal(codeOf(() => decodeFrame(at(0, 9))), 'BadLength', 'length disagrees with the frame')
  t.equal(codeOf(() => decodeFrame(hb.subarray(0, 11))), 'Truncated', 'shorter than a header and CRC')
  // behind a good CRC: the payload's own checks
  const withCrc = (m: FtMessage, off: number, v: number) => codeOf(() => decodeFrame(reframe(m, (f) => (f[HEAD_BYTES + off] = v))))
  t.equal(withCrc(SAMPLES[0], 4, 0), 'BadPayload', 'HELLO mode 0')
  t.equal(withCrc(SAMPLES[0], 4, 4), 'BadPayload', 'HELLO mode 4')
  t.equal(withCrc(SAMPLES[0], 5, 3), 'BadPayload', 'HELLO start 3')
  t.equal(withCrc(SAMPLES[0], 6, 3), 'BadPayload', 'HELLO backupReads 3')
  t.equal(withCrc(SAMPLES[0], 7, 1), 'BadPayload', 'HELLO reserved byte')
  t.equal(withCrc(SAMPLES[0], 15, 0xff), 'BadPayload', 'HELLO lock generation above 2^53')
  t.equal(withCrc(SAMPLES[0], 64, 0x41), 'BadPayload', "HELLO VM name 'Am1' (uppercase)")
  t.equal(withCrc(SAMPLES[0], 64, 0xff), 'BadPayload', 'HELLO VM name not UTF-8')
  t.equal(withCrc(SAMPLES[6], 7, 0xff), 'BadPayload', 'ACK received NaN')
  t.equal(withCrc(SAMPLES[6], 7, 0xbf), 'BadPayload', 'ACK received negative')
  t.equal(withCrc(SAMPLES.find((m) => m.type === 'BYE')!, 0, 3), 'BadPayload', 'BYE reason 3')
  t.equal(withCrc(SAMPLES.find((m) => m.type === 'BYE')!, 3, 1), 'BadPayload', 'BYE reserved byte')
  t.equal(withCrc(SAMPLES[8], 0, 11), 'BadPayload', 'ERROR code 11')
  t.equal(withCrc(SAMPLES[2], 4, 0), 'BadPayload', 'HELLO_REFUSED reason 0')
  // a fixed-size payload of the wrong size, with a consistent header and CRC
  const short = Buffer.alloc(FRAME_OVERHEAD + 7)
  short.writeUInt32LE(7, 0)
  short[4] = FT_TYPE.HEARTBEAT
  short.writeUInt32LE(crc32c(short.subarray(0, HEAD_BYTES + 7)), HEAD_BYTES + 7)
  t.equal(codeOf(() => decodeFrame(short)), 'BadLength', 'HEARTBEAT payload of 7 bytes')
  // ACK's own decoder (direct reads, not the struct codec): 23 and 25 bytes
  for (const n of [23, 25]) {
    const ack = Buffer.alloc(FRAME_OVERHEAD + n)
    ack.writeUInt32LE(n, 0)
    ack[4] = FT_TYPE.ACK
    ack.writeUInt32LE(crc32c(ack.subarray(0, HEAD_BYTES + n)), HEAD_BYTES + n)
    t.equal(codeOf(() => decodeFrame(ack)), 'BadLength', `ACK payload of ${n} bytes`)
  }
  const e = (() => {
    try {
      decodeFrame(at(8, 1))
    } catch (e) {
      return e as Error
    }
  })()
  t.match(e?.message, /HEARTBEAT frame CRC-32C is 0x[0-9a-f]+, computed 0x[0-9a-f]+/, 'the message names expected and actual')
})

t.test('a 16 MiB payload passes; 16 MiB + 1 is refused by the sender and by the receiver', async (t) => {
  const big = Buffer.alloc(MAX_PAYLOAD, 0x33)
  const f = encodeFrame({ type: 'LOG', records: big })
  const d = new FrameDecoder()
  let got: FtMessage[] = []
  for (let i = 0; i < f.length; i += 65536) got = got.concat(d.push(f.subarray(i, i + 65536)))
  t.equal(got.length, 1)
  t.ok(got[0].type === 'LOG' && got[0].records.equals(big), 'the 16 MiB LOG arrives whole')
  t.equal(codeOf(() => encodeFrame({ type: 'STATE', data: Buffer.alloc(MAX_PAYLOAD + 1) })), 'BadLength', 'encode refuses')
  // the receiver refuses from the header alone, before any payload arrives
  const head = Buffer.alloc(HEAD_BYTES)
  head.writeUInt32LE(MAX_PAYLOAD + 1, 0)
  head[4] = FT_TYPE.LOG
  t.equal(codeOf(() => new FrameDecoder().push(head)), 'BadLength', 'decode refuses the header')
})

t.test('text longer than MAX_TEXT is cut on send (whole characters) and refused on receipt', async (t) => {
  const m = decodeFrame(encodeFrame({ type: 'ERROR', code: 'Internal', text: 'é'.repeat(MAX_TEXT) }))
  t.ok(m.type === 'ERROR' && m.text === 'é'.repeat(MAX_TEXT / 2), 'cut to 1024 bytes')
  const long = Buffer.alloc(FRAME_OVERHEAD + 1 + MAX_TEXT + 1, 0x61)
  long.writeUInt32LE(1 + MAX_TEXT + 1, 0)
  long.writeUInt32LE(FT_TYPE.ERROR << 0, 4)
  long[HEAD_BYTES] = 1
  long.writeUInt32LE(crc32c(long.subarray(0, long.length - 4)), long.length - 4)
  t.equal(codeOf(() => decodeFrame(long)), 'BadPayload')
})

t.test('values a frame cannot carry are refused on encode', async (t) => {
  t.equal(codeOf(() => encodeFrame({ type: 'HELLO', ...hello, lockGeneration: 2 ** 53 })), 'BadPayload')
  t.equal(codeOf(() => encodeFrame({ type: 'HELLO', ...hello, imageSha256: Buffer.alloc(31) })), 'BadPayload')
  t.equal(codeOf(() => encodeFrame({ type: 'ACK', received: -1, executed: 0, readsDone: 0 })), 'BadPayload')
  t.equal(codeOf(() => encodeFrame({ type: 'BYE', reason: 'later' as 'stop', instret: 0 })), 'BadPayload')
})

t.test('after a BYE any byte is an error; after an error every push throws it again', async (t) => {
  const d = new FrameDecoder()
  const bye = encodeFrame({ type: 'BYE', reason: 'stop', instret: 1 })
  const hb = encodeFrame({ type: 'HEARTBEAT', ms: 1 })
  const err = (() => {
    try {
      d.push(Buffer.concat([hb, bye, hb]))
    } catch (e) {
      return e
    }
  })()
  t.ok(err instanceof FtProtocolError && err.code === 'AfterBye', 'AfterBye')
  t.same((err as FtProtocolError).decoded.map((m) => m.type), ['HEARTBEAT', 'BYE'], 'the messages before the break are handed over')
  t.equal(codeOf(() => d.push(hb)), 'AfterBye', 'stays broken')
  const d2 = new FrameDecoder()
  t.same(d2.push(bye).map((m) => m.type), ['BYE'])
  t.equal(codeOf(() => d2.push(Buffer.from([0]))), 'AfterBye', 'a byte in a later chunk')
  const d3 = new FrameDecoder()
  d3.push(hb.subarray(0, 5))
  t.equal(codeOf(() => d3.end()), 'Truncated', 'the stream ended inside a frame')
})

t.test('any split of the stream gives the same messages', async (t) => {
  const stream = Buffer.concat(SAMPLES.map(encodeFrame))
  const r = rng(17)
  for (let run = 0; run < 300; run++) {
    const d = new FrameDecoder()
    const got: FtMessage[] = []
    let at = 0
    while (at < stream.length) {
      const n = run === 0 ? 1 : 1 + (r() % 40)
      got.push(...d.push(stream.subarray(at, at + n)))
      at += n
    }
    d.end()
    if (!isDeepStrictEqual(got, SAMPLES)) return void t.same(got, SAMPLES, `run ${run}`)
  }
  t.pass('300 splits, each decoded to the samples')
})

t.test('fuzz: random corruption and splits only ever give correct messages then an FtProtocolError', async (t) => {
  const stream = Buffer.concat(SAMPLES.map(encodeFrame))
  const r = rng(4242)
  const outcomes = new Map<string, number>()
  for (let run = 0; run < 2000; run++) {
    const s = Buffer.from(stream)
    const flips = 1 + (r() % 3)
    for (let i = 0; i < flips; i++) s[r() % s.length] ^= 1 << (r() % 8)
    const d = new FrameDecoder()
    const got: FtMessage[] = []
    let outcome = 'clean'
    try {
      for (let at = 0; at < s.length; ) {
        const n = 1 + (r() % 64)
        got.push(...d.push(s.subarray(at, at + n)))
        at += n
      }
      d.end()
    } catch (e) {
      if (!(e instanceof FtProtocolError)) throw e
      got.push(...e.decoded)
      outcome = e.code
    }
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
    // whatever was decoded is exactly what was sent, in order (a flipped bit never yields a different message)
    if (!isDeepStrictEqual(got, SAMPLES.slice(0, got.length))) return void t.same(got, SAMPLES.slice(0, got.length), `run ${run}`)
    if (outcome === 'clean') return void t.fail(`run ${run}: corrupted stream decoded cleanly`)
  }
  t.ok((outcomes.get('BadCrc') ?? 0) > 0 && (outcomes.get('BadType') ?? 0) > 0, `outcomes ${JSON.stringify(Object.fromEntries(outcomes))}`)
})

t.test('fuzz: random bytes only ever give typed errors', async (t) => {
  const r = rng(99)
  for (let run = 0; run < 2000; run++) {
    const len = r() % 200
    const b = Buffer.alloc(len)
    for (let i = 0; i < len; i++) b[i] = r() & 0xff
    // a plausible header half the time: a small length and a real type, so the CRC and payload checks run
    if (len >= 8 && run % 2) {
      b.writeUInt32LE(r() % (len - 7), 0)
      b[4] = 1 + (r() % FT_TYPES.length)
      b[5] = b[6] = b[7] = 0
    }
    const d = new FrameDecoder()
    try {
      d.push(b)
      d.end()
    } catch (e) {
      if (!(e instanceof FtProtocolError)) throw e
    }
  }
  t.pass('no other exception')
})

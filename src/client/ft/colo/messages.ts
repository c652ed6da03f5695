import { defineStruct } from '../../../disk-formats/struct.js'
import { FtProtocolError } from '../protocol.js'

/**
 * The quasi-lockstep sub-messages carried in the channel's COLO frames (colo/SPEC.md):
 *
 *   head = u8 kind  u8 stream  u16 reserved(0)  u32 epoch,  then the kind's body
 *
 * INPUT (P→S): a frame the primary's port received, whole (body = the frame).
 * OUTPUT (S→P): an output of the secondary in `epoch` (stream 1 frame, 2 console line; body = bytes).
 * SYNC (P→S): part `part` of `parts` of the resync to `epoch` (SyncBody, then the part's bytes).
 * SYNC_ACK (S→P): the secondary runs from the state of `epoch`.
 * RELEASED (P→S): of `epoch`'s outputs, the primary has released this many per stream (ReleasedBody).
 */
export const ColoHead = defineStruct({
  kind: { offset: 0, type: 'u8' },
  stream: { offset: 1, type: 'u8' },
  reserved: { offset: 2, type: 'u16' },
  epoch: { offset: 4, type: 'u32' },
})
export const SyncBody = defineStruct({
  part: { offset: 0, type: 'u32' },
  parts: { offset: 4, type: 'u32' },
})
export const ReleasedBody = defineStruct({
  frames: { offset: 0, type: 'f64' },
  console: { offset: 8, type: 'f64' },
})

export const COLO_KIND = { INPUT: 1, OUTPUT: 2, SYNC: 3, SYNC_ACK: 4, RELEASED: 5 } as const
export type OutputStream = 'frame' | 'console'
const STREAMS: OutputStream[] = ['frame', 'console']
/** the most parts one resync is cut into (each ≤ 1 MiB: 1 GiB of guest memory and its state) */
export const MAX_SYNC_PARTS = 1100

export type ColoMessage =
  | { kind: 'INPUT'; frame: Buffer }
  | { kind: 'OUTPUT'; epoch: number; stream: OutputStream; bytes: Buffer }
  | { kind: 'SYNC'; epoch: number; part: number; parts: number; bytes: Buffer }
  | { kind: 'SYNC_ACK'; epoch: number }
  | { kind: 'RELEASED'; epoch: number; frames: number; console: number }

const bad = (text: string) => new FtProtocolError('BadPayload', `COLO: ${text}`)

export function encodeColo(m: ColoMessage): Buffer {
  const head = (stream = 0, epoch = 0) => ColoHead.encode({ kind: COLO_KIND[m.kind], stream, reserved: 0, epoch })
  switch (m.kind) {
    case 'INPUT':
      return Buffer.concat([head(), m.frame])
    case 'OUTPUT':
      return Buffer.concat([head(STREAMS.indexOf(m.stream) + 1, m.epoch), m.bytes])
    case 'SYNC':
      return Buffer.concat([head(0, m.epoch), SyncBody.encode({ part: m.part, parts: m.parts }), m.bytes])
    case 'SYNC_ACK':
      return head(0, m.epoch)
    case 'RELEASED':
      return Buffer.concat([head(0, m.epoch), ReleasedBody.encode({ frames: m.frames, console: m.console })])
  }
}

/** Decodes one COLO payload; a malformed one is a BadPayload protocol error (the channel ends with it). */
export function decodeColo(p: Buffer): ColoMessage {
  if (p.length < ColoHead.size) throw bad(`a message of ${p.length} bytes (at least ${ColoHead.size})`)
  const h = ColoHead.decode(p)
  if (h.reserved !== 0) throw bad(`reserved field ${h.reserved}, not 0`)
  const body = p.subarray(ColoHead.size)
  const exact = (n: number, what: string) => {
    if (body.length !== n) throw bad(`${what} body is ${body.length} bytes, ${n} expected`)
  }
  switch (h.kind) {
    case COLO_KIND.INPUT:
      return { kind: 'INPUT', frame: body }
    case COLO_KIND.OUTPUT: {
      const stream = STREAMS[h.stream - 1]
      if (!stream) throw bad(`output stream ${h.stream} (1 frame, 2 console)`)
      return { kind: 'OUTPUT', epoch: h.epoch, stream, bytes: body }
    }
    case COLO_KIND.SYNC: {
      if (body.length < SyncBody.size) throw bad(`SYNC body is ${body.length} bytes`)
      const s = SyncBody.decode(body)
      if (s.parts < 1 || s.parts > MAX_SYNC_PARTS || s.part >= s.parts) throw bad(`SYNC part ${s.part} of ${s.parts}`)
      return { kind: 'SYNC', epoch: h.epoch, part: s.part, parts: s.parts, bytes: body.subarray(SyncBody.size) }
    }
    case COLO_KIND.SYNC_ACK:
      exact(0, 'SYNC_ACK')
      return { kind: 'SYNC_ACK', epoch: h.epoch }
    case COLO_KIND.RELEASED: {
      exact(ReleasedBody.size, 'RELEASED')
      const r = ReleasedBody.decode(body)
      if (!Number.isSafeInteger(r.frames) || !Number.isSafeInteger(r.console) || r.frames < 0 || r.console < 0) throw bad('RELEASED counts are not counts')
      return { kind: 'RELEASED', epoch: h.epoch, frames: r.frames, console: r.console }
    }
    default:
      throw bad(`kind ${h.kind} (1..5)`)
  }
}

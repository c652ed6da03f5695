import { createHash } from 'node:crypto'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { defineStruct } from '../../disk-formats/struct.js'
import { StateError } from './state-codec.js'

/**
 * A VM's whole state (SPEC.md §VM state): the hart, every device, and the host-side part (disk
 * results and frames the guest has not seen, the guest clock, the log position), with or without
 * guest memory. `guest` and `host` are the encoded sections; the state hash covers `guest` and
 * the memory, so a register added to a device's table is in the hash without more code.
 */
export interface VmState {
  memoryBytes: number
  imageSha: Buffer
  instret: number
  /** the sections the guest can observe */
  guest: Buffer
  /** the host's side: results and frames not delivered, guest clock, log position */
  host: Buffer
  /** guest RAM (a copy), when saved with it */
  memory?: Uint8Array
}

export const STATE_MAGIC = 'TNDMVMST'
export const STATE_VERSION = 1

export const StateHeader = defineStruct({
  magic: { offset: 0, type: { bytes: 8 } },
  version: { offset: 8, type: 'u32' },
  memoryBytes: { offset: 12, type: 'u32' },
  imageSha256: { offset: 16, type: { bytes: 32 } },
  instret: { offset: 48, type: 'f64' },
  guestLength: { offset: 56, type: 'u32' },
  hostLength: { offset: 60, type: 'u32' },
})

/** The hart's registers and CSRs (section HART). */
export const HartRegs = defineStruct({
  x: { offset: 0, type: { bytes: 128 } },
  pc: { offset: 128, type: 'u32' },
  instret: { offset: 132, type: 'f64' },
  mstatus: { offset: 140, type: 'u32' },
  mie: { offset: 144, type: 'u32' },
  mip: { offset: 148, type: 'u32' },
  mtvec: { offset: 152, type: 'u32' },
  mepc: { offset: 156, type: 'u32' },
  mcause: { offset: 160, type: 'u32' },
  mtval: { offset: 164, type: 'u32' },
  mscratch: { offset: 168, type: 'u32' },
})

/**
 * What the guest's writes to mcycle and minstret added to the count (section CNTR, only in a
 * state where the guest has written one: other states stay as they were).
 */
export const CounterRegs = defineStruct({
  mcycleLo: { offset: 0, type: 'u32' },
  mcycleHi: { offset: 4, type: 'u32' },
  minstretLo: { offset: 8, type: 'u32' },
  minstretHi: { offset: 12, type: 'u32' },
})

/** Machine-wide, guest side (section MACH). */
export const MachineRegs = defineStruct({
  /** interrupts raised since the VM started */
  interrupts: { offset: 0, type: 'f64' },
})

/** Machine-wide, host side (section MACH of the host part). */
export const MachineHost = defineStruct({
  /** the guest's mtime when saved: a restored VM's clock goes on from it */
  mtime: { offset: 0, type: 'u64' },
  /** event-log records written (recording) or consumed (replay) up to this state */
  logPosition: { offset: 8, type: 'f64' },
})

/** The state as bytes (without memory: a checkpoint file carries memory on its own). */
export function encodeState(s: VmState): Buffer {
  const head = StateHeader.encode({ magic: Buffer.from(STATE_MAGIC, 'latin1'), version: STATE_VERSION, memoryBytes: s.memoryBytes, imageSha256: s.imageSha, instret: s.instret, guestLength: s.guest.length, hostLength: s.host.length })
  return Buffer.concat([head, s.guest, s.host])
}

export function decodeState(buf: Buffer, what = 'the VM state'): VmState {
  if (buf.length < StateHeader.size || buf.toString('latin1', 0, 8) !== STATE_MAGIC) throw new StateError(`${what} is not a Tandem VM state (no ${STATE_MAGIC} header)`)
  const h = StateHeader.decode(buf)
  if (h.version !== STATE_VERSION) throw new StateError(`${what}: VM state version ${h.version}, this Tandem reads ${STATE_VERSION}`)
  const end = StateHeader.size + h.guestLength + h.hostLength
  if (buf.length !== end) throw new StateError(`${what} is ${buf.length} bytes, its header says ${end}`)
  const guest = Buffer.from(buf.subarray(StateHeader.size, StateHeader.size + h.guestLength))
  const host = Buffer.from(buf.subarray(StateHeader.size + h.guestLength, end))
  return { memoryBytes: h.memoryBytes, imageSha: h.imageSha256, instret: h.instret, guest, host }
}

/** SHA-256 of everything the guest can observe: the guest sections and memory. */
export function hashState(guest: Buffer, memory: Uint8Array): string {
  return createHash('sha256').update(guest).update(memory).digest('hex')
}

/** Memory hashed per turn of the event loop by `hashStateAsync` (~4 ms of SHA-256 here). */
const HASH_CHUNK = 4 << 20

/**
 * `hashState`, a chunk of memory per turn of the event loop: at the end of a run, 64 MiB in one go
 * held the loop ~70 ms, and a fault-tolerant pair's acks and heartbeats waited behind it (the
 * primary then measured its backup 70 ms behind).
 */
export async function hashStateAsync(guest: Buffer, memory: Uint8Array): Promise<string> {
  const h = createHash('sha256').update(guest)
  for (let o = 0; o < memory.length; o += HASH_CHUNK) {
    if (o > 0) await nextTurn()
    h.update(memory.subarray(o, o + HASH_CHUNK))
  }
  return h.digest('hex')
}

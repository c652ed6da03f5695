import { StorageError } from '../errors.js'
import { defineStruct, type Decoded } from '../struct.js'
import { crc32c } from '../crc32c.js'

/**
 * The lockspace: a region of shared storage (SPEC.md). 512-byte sectors, little-endian, each
 * record ending in a CRC32C of the bytes before it.
 *   sector 0                  header
 *   sectors 1 .. maxHosts     one heartbeat slot per host (written only by its owner)
 *   then maxLocks sectors     one record per lock
 */
export const SECTOR = 512
export const LOCKSPACE_VERSION = 1
export const NAME_BYTES = 64
/** Bounds on untrusted header counts: 2000 hosts as sanlock; 65536 locks keeps the region ≤ 33 MiB. */
export const MAX_HOSTS = 2000
export const MAX_LOCKS = 65536

export const HEADER_MAGIC = 0x4b4c4454 // "TDLK"
export const SLOT_MAGIC = 0x42484454 // "TDHB"
export const RECORD_MAGIC = 0x434c4454 // "TDLC"

export const HeaderStruct = defineStruct({
  magic: { offset: 0, type: 'u32' },
  version: { offset: 4, type: 'u32' },
  sectorSize: { offset: 8, type: 'u32' },
  maxHosts: { offset: 12, type: 'u32' },
  maxLocks: { offset: 16, type: 'u32' },
  /** how often a host renews its heartbeat */
  heartbeatMs: { offset: 20, type: 'u32' },
  /** a heartbeat that has not advanced for this long, on the observer's clock, is dead */
  leaseMs: { offset: 24, type: 'u32' },
  /** a holder stops using its locks this long before its lease could be broken */
  fenceMarginMs: { offset: 28, type: 'u32' },
  uuid: { offset: 32, type: { bytes: 16 } },
  crc: { offset: 48, type: 'u32' },
})
export type Header = Decoded<typeof HeaderStruct.fields>

export const SLOT_FREE = 0
export const SLOT_LIVE = 1
export const SLOT_LEFT = 2

export const SlotStruct = defineStruct({
  magic: { offset: 0, type: 'u32' },
  version: { offset: 4, type: 'u16' },
  state: { offset: 6, type: 'u8' },
  /** incremented on every join: tells one incarnation of a host from the next */
  generation: { offset: 8, type: 'u64' },
  /** advances at every heartbeat */
  counter: { offset: 16, type: 'u64' },
  /** managed mode: index+1 of the lock this host asks for (0 = none) */
  request: { offset: 24, type: 'u32' },
  requestShared: { offset: 28, type: 'u8' },
  name: { offset: 32, type: { bytes: NAME_BYTES } },
  crc: { offset: 96, type: 'u32' },
})
export type SlotFields = Decoded<typeof SlotStruct.fields>

export const MODE_FREE = 0
export const MODE_EXCLUSIVE = 1
export const MODE_SHARED = 2

export const RecordStruct = defineStruct({
  magic: { offset: 0, type: 'u32' },
  version: { offset: 4, type: 'u16' },
  mode: { offset: 6, type: 'u8' },
  /** managed: ownership passes by the owner's rewrite, not by compare-and-write */
  managed: { offset: 7, type: 'u8' },
  /** fencing token: bumped on every change of owner */
  generation: { offset: 8, type: 'u64' },
  /** exclusive owner: slot index + 1 (0 = none) */
  owner: { offset: 16, type: 'u32' },
  /** the owner's heartbeat generation when it took the lock */
  ownerGeneration: { offset: 20, type: 'u64' },
  name: { offset: 32, type: { bytes: NAME_BYTES } },
  /** shared holders: a bit per slot (MAX_HOSTS bits) */
  shared: { offset: 96, type: { bytes: 250 } },
  crc: { offset: 346, type: 'u32' },
})
export type RecordFields = Decoded<typeof RecordStruct.fields>

export interface Slot {
  index: number
  state: number
  generation: number
  counter: number
  request: number
  requestShared: boolean
  name: string
}

export interface LockRecord {
  index: number
  name: string
  mode: number
  managed: boolean
  generation: number
  owner: number
  ownerGeneration: number
  shared: Set<number>
}

export function regionSize(h: Pick<Header, 'maxHosts' | 'maxLocks'>): number {
  return (1 + h.maxHosts + h.maxLocks) * SECTOR
}
export const slotOffset = (i: number) => (1 + i) * SECTOR
export const recordOffset = (h: Pick<Header, 'maxHosts'>, i: number) => (1 + h.maxHosts + i) * SECTOR

function sealed(buf: Buffer, crcOffset: number): Buffer {
  buf.writeUInt32LE(crc32c(buf.subarray(0, crcOffset)), crcOffset)
  return buf
}

function checkCrc(buf: Buffer, crcOffset: number, what: string, file: string): void {
  const want = buf.readUInt32LE(crcOffset)
  const got = crc32c(buf.subarray(0, crcOffset))
  if (want !== got) {
    throw new StorageError('Corrupt', `'${file}': ${what}: bad checksum (stored 0x${want.toString(16)}, computed 0x${got.toString(16)})`, file)
  }
}

function strBytes(s: string): Buffer {
  const b = Buffer.alloc(NAME_BYTES)
  const src = Buffer.from(s, 'utf8')
  if (src.length > NAME_BYTES) throw new StorageError('InvalidArgument', `name '${s}' is longer than ${NAME_BYTES} bytes`)
  src.copy(b)
  return b
}
function bytesStr(b: Buffer): string {
  const z = b.indexOf(0)
  return b.toString('utf8', 0, z < 0 ? b.length : z)
}

export function encodeHeader(h: Omit<Header, 'magic' | 'version' | 'sectorSize' | 'crc'>): Buffer {
  const buf = Buffer.alloc(SECTOR)
  HeaderStruct.encode({ ...h, magic: HEADER_MAGIC, version: LOCKSPACE_VERSION, sectorSize: SECTOR, crc: 0 }, buf)
  return sealed(buf, HeaderStruct.fields.crc.offset)
}

/** Decode checks magic, then version, then checksum, then bounds — each its own error. */
export function decodeHeader(buf: Buffer, file: string, regionBytes?: number): Header {
  if (buf.length < SECTOR) throw new StorageError('Corrupt', `'${file}': lockspace truncated: no header`, file)
  const h = HeaderStruct.decode(buf)
  if (h.magic !== HEADER_MAGIC) {
    throw new StorageError('BadMagic', `'${file}' is not a Tandem lockspace (magic 0x${h.magic.toString(16)}, expected 0x${HEADER_MAGIC.toString(16)}); run 'tandem lock init' on an empty file`, file)
  }
  if (h.version !== LOCKSPACE_VERSION) throw new StorageError('Unsupported', `'${file}': lockspace version ${h.version} is not supported (expected ${LOCKSPACE_VERSION})`, file)
  checkCrc(buf, HeaderStruct.fields.crc.offset, 'lockspace header', file)
  if (h.sectorSize !== SECTOR) throw new StorageError('Unsupported', `'${file}': sector size ${h.sectorSize} (expected ${SECTOR})`, file)
  if (h.maxHosts < 1 || h.maxHosts > MAX_HOSTS) throw new StorageError('Corrupt', `'${file}': ${h.maxHosts} host slots (expected 1 to ${MAX_HOSTS})`, file)
  if (h.maxLocks < 1 || h.maxLocks > MAX_LOCKS) throw new StorageError('Corrupt', `'${file}': ${h.maxLocks} lock records (expected 1 to ${MAX_LOCKS})`, file)
  if (h.heartbeatMs < 1 || h.leaseMs < 2 * h.heartbeatMs || h.fenceMarginMs >= h.leaseMs) {
    throw new StorageError('Corrupt', `'${file}': inconsistent timings (heartbeat ${h.heartbeatMs} ms, lease ${h.leaseMs} ms, fence margin ${h.fenceMarginMs} ms)`, file)
  }
  if (regionBytes !== undefined && regionBytes !== regionSize(h)) {
    throw new StorageError('Corrupt', `'${file}': the lockspace is ${regionBytes} bytes but its header describes ${regionSize(h)} (${h.maxHosts} hosts, ${h.maxLocks} locks)`, file)
  }
  return h
}

/** An all-zero sector is a slot or record never written (free). A memcmp: the heartbeat reads every sector. */
const ZERO_SECTOR = Buffer.alloc(SECTOR)
const isBlank = (buf: Buffer) => (buf.length === SECTOR ? buf.equals(ZERO_SECTOR) : buf.every((b) => b === 0))

export function encodeSlot(s: Omit<Slot, 'index'>): Buffer {
  const buf = Buffer.alloc(SECTOR)
  SlotStruct.encode(
    { magic: SLOT_MAGIC, version: LOCKSPACE_VERSION, state: s.state, generation: s.generation, counter: s.counter, request: s.request, requestShared: s.requestShared ? 1 : 0, name: strBytes(s.name), crc: 0 },
    buf,
  )
  return sealed(buf, SlotStruct.fields.crc.offset)
}

export function decodeSlot(buf: Buffer, index: number, file: string): Slot {
  if (isBlank(buf)) return { index, state: SLOT_FREE, generation: 0, counter: 0, request: 0, requestShared: false, name: '' }
  const s = SlotStruct.decode(buf)
  if (s.magic !== SLOT_MAGIC) throw new StorageError('Corrupt', `'${file}': heartbeat slot ${index}: bad magic 0x${s.magic.toString(16)}`, file)
  if (s.version !== LOCKSPACE_VERSION) throw new StorageError('Corrupt', `'${file}': heartbeat slot ${index}: version ${s.version}`, file)
  checkCrc(buf, SlotStruct.fields.crc.offset, `heartbeat slot ${index}`, file)
  return { index, state: s.state, generation: s.generation, counter: s.counter, request: s.request, requestShared: s.requestShared === 1, name: bytesStr(s.name) }
}

export function encodeRecord(r: Omit<LockRecord, 'index'>): Buffer {
  const buf = Buffer.alloc(SECTOR)
  const shared = Buffer.alloc(250)
  for (const i of r.shared) shared[i >> 3] |= 1 << (i & 7)
  RecordStruct.encode(
    { magic: RECORD_MAGIC, version: LOCKSPACE_VERSION, mode: r.mode, managed: r.managed ? 1 : 0, generation: r.generation, owner: r.owner, ownerGeneration: r.ownerGeneration, name: strBytes(r.name), shared, crc: 0 },
    buf,
  )
  return sealed(buf, RecordStruct.fields.crc.offset)
}

export function decodeRecord(buf: Buffer, index: number, file: string): LockRecord {
  if (isBlank(buf)) return { index, name: '', mode: MODE_FREE, managed: false, generation: 0, owner: 0, ownerGeneration: 0, shared: new Set() }
  const r = RecordStruct.decode(buf)
  if (r.magic !== RECORD_MAGIC) throw new StorageError('Corrupt', `'${file}': lock record ${index}: bad magic 0x${r.magic.toString(16)}`, file)
  if (r.version !== LOCKSPACE_VERSION) throw new StorageError('Corrupt', `'${file}': lock record ${index}: version ${r.version}`, file)
  checkCrc(buf, RecordStruct.fields.crc.offset, `lock record ${index}`, file)
  if (r.mode > MODE_SHARED) throw new StorageError('Corrupt', `'${file}': lock record ${index}: unknown mode ${r.mode}`, file)
  const shared = new Set<number>()
  // a byte at a time: most are zero (a heartbeat decodes every record, most often in a process
  // whose code V8 has not optimized yet)
  for (let b = 0; b < 250; b++) {
    const v = r.shared[b]
    if (v !== 0) for (let k = 0; k < 8; k++) if (v & (1 << k)) shared.add(b * 8 + k)
  }
  return { index, name: bytesStr(r.name), mode: r.mode, managed: r.managed === 1, generation: r.generation, owner: r.owner, ownerGeneration: r.ownerGeneration, shared }
}

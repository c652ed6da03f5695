import { createHash } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import type { FrozenVm } from '../vm/freeze.js'
import { PAGE_SIZE, type Memory } from '../vm/memory.js'
import { decodeState, encodeState, type VmState } from '../vm/state.js'

/**
 * The state a new backup starts from (ft/SPEC.md "STATE payloads"): the VM's state sections, then
 * runs of non-zero guest pages, each STATE payload one item; STATE_END carries the count and the
 * state hash. Zero pages are not sent (the receiver's memory starts zeroed).
 */
export const STATE_ITEM = { VMSTATE: 1, PAGES: 2 } as const
/** pages per PAGES item: a 1 MiB payload (ft/SPEC.md: STATE frames ≤ 1 MiB) */
export const STATE_RUN_PAGES = 256

/** What goes down the channel while the state is sent. */
export interface StateLink {
  /** one STATE payload; false: wait for `drained()` before the next */
  state(data: Buffer): boolean
  drained(): Promise<void>
  end(instret: number, hash: Buffer): void
}

export interface SentState {
  /** payload bytes of the STATE messages */
  bytes: number
  /** pages sent (a page sent again in a later round counts again) */
  pages: number
}

/** The pre-copy's figures. */
export interface PrecopyResult extends SentState {
  rounds: number
  /** pages dirtied during the last round (what the pause's remainder will hold, about) */
  lastDirty: number
}

/** pre-copy stops once a round leaves fewer dirty pages than this (ft-architecture §1.5) … */
export const PRECOPY_DIRTY_PAGES = 1000
/** … or after this many rounds (a guest that dirties memory faster than it is sent) */
export const PRECOPY_MAX_ROUNDS = 5

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE)
const isZero = (p: Uint8Array): boolean => ZERO_PAGE.equals(p)
/** pages looked at between two turns of the event loop (the channel's heartbeats and loss timer run between) */
const SCAN_PAGES = 512
const turn = () => new Promise<void>((r) => setImmediate(r))

/**
 * Sends pages as PAGES items, runs of consecutive ones; each page is copied when `page(p)` is
 * called (read it synchronously), `keep(p, page)` false skips it (ends the run).
 */
async function sendPages(pages: Iterable<number>, page: (p: number) => Uint8Array, keep: (page: Uint8Array, p: number) => boolean, link: StateLink): Promise<SentState> {
  let bytes = 0
  let sent = 0
  let run: Buffer[] = []
  let first = -1
  let scanned = 0
  const flush = async () => {
    if (!run.length) return
    const head = Buffer.alloc(5)
    head[0] = STATE_ITEM.PAGES
    head.writeUInt32LE(first, 1)
    const data = Buffer.concat([head, ...run])
    bytes += data.length
    sent += run.length
    run = []
    if (!link.state(data)) await link.drained()
  }
  for (const p of pages) {
    if (++scanned % SCAN_PAGES === 0) await turn()
    const bytesOf = page(p)
    const kept = keep(bytesOf, p)
    if (!kept || (run.length && first + run.length !== p) || run.length === STATE_RUN_PAGES) await flush()
    if (!kept) continue
    if (!run.length) first = p
    run.push(Buffer.from(bytesOf))
  }
  await flush()
  return { bytes, pages: sent }
}

const allPages = function* (n: number) {
  for (let p = 0; p < n; p++) yield p
}

/**
 * Pre-copy, the VM running (its outputs not held, nothing logged): every non-zero page, then in
 * rounds the pages dirtied meanwhile (`Memory.readAndClearDirty`), until a round leaves fewer than
 * PRECOPY_DIRTY_PAGES dirty or PRECOPY_MAX_ROUNDS have run. The pause sends what is dirty then.
 */
export async function precopy(mem: Memory, link: StateLink): Promise<PrecopyResult> {
  mem.readAndClearDirty()
  const ram = (p: number) => mem.bytes.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)
  const first = await sendPages(allPages(mem.pages), ram, (b) => !isZero(b), link)
  let { bytes, pages } = first
  let rounds = 1
  let dirty = mem.readAndClearDirty()
  for (; dirty.length >= PRECOPY_DIRTY_PAGES && rounds < PRECOPY_MAX_ROUNDS; rounds++) {
    const r = await sendPages(dirty, ram, () => true, link)
    bytes += r.bytes
    pages += r.pages
    dirty = mem.readAndClearDirty()
  }
  // what this last look found dirty is dirty again for the pause
  for (const p of dirty) mem.touch(p)
  return { bytes, pages, rounds, lastDirty: dirty.length }
}

/**
 * The rest, after the pause (`dirty`: the pages written since the pre-copy, taken in the pause;
 * all non-zero pages without a pre-copy): the VM's state sections, those pages as they were at the
 * freeze (copy-on-write: the VM runs on meanwhile), then STATE_END with the hash of the guest state
 * and all of memory at the freeze.
 */
export async function sendFrozen(f: FrozenVm, link: StateLink, dirty?: readonly number[]): Promise<SentState> {
  const state = encodeState(f.state)
  const head = Buffer.concat([Buffer.from([STATE_ITEM.VMSTATE]), state])
  if (!link.state(head)) await link.drained()
  // one pass: each page is read once (a read disarms its copy-on-write), hashed, and sent if it is to be
  const hash = createHash('sha256').update(f.state.guest)
  const mask = dirty ? new Uint8Array(f.pages) : undefined
  for (const p of dirty ?? []) mask![p] = 1
  const read = (p: number) => {
    const b = f.page(p)
    hash.update(b)
    return b
  }
  const r = await sendPages(allPages(f.pages), read, mask ? (_b, p) => mask[p] === 1 : (b) => !isZero(b), link)
  link.end(f.instret, hash.digest())
  return { bytes: r.bytes + head.length, pages: r.pages }
}

/** A state being received: STATE payloads in order, then `end()`. Bad input is a typed error. */
export class StateReceiver {
  private state: VmState | null = null
  readonly memory: Uint8Array
  bytes = 0

  constructor(private readonly memoryBytes: number) {
    this.memory = new Uint8Array(memoryBytes)
  }

  /** One STATE payload. */
  add(data: Buffer): void {
    this.bytes += data.length
    if (data.length < 1) throw new StorageError('InvalidArgument', 'an empty STATE message')
    if (data[0] === STATE_ITEM.VMSTATE) {
      if (this.state) throw new StorageError('InvalidArgument', 'a second VM state in the STATE stream')
      this.state = decodeState(data.subarray(1), 'the primary\'s VM state')
      if (this.state.memoryBytes !== this.memoryBytes) throw new StorageError('InvalidArgument', `the primary's state has ${this.state.memoryBytes} bytes of memory, this backup ${this.memoryBytes}`)
    } else if (data[0] === STATE_ITEM.PAGES) {
      if (data.length < 5 || (data.length - 5) % PAGE_SIZE !== 0) throw new StorageError('InvalidArgument', `a STATE page run of ${data.length} bytes (5 + whole pages expected)`)
      const at = data.readUInt32LE(1) * PAGE_SIZE
      const n = data.length - 5
      if (at + n > this.memoryBytes) throw new StorageError('InvalidArgument', `a STATE page run past the end of memory (${at + n} > ${this.memoryBytes})`)
      this.memory.set(data.subarray(5), at)
    } else throw new StorageError('InvalidArgument', `an unknown STATE item ${data[0]}`)
  }

  /** STATE_END: the state, checked against the sender's count and hash (hashed a slice at a time: the channel's timers run between). */
  async end(instret: number, hash: Buffer): Promise<VmState> {
    const s = this.state
    if (!s) throw new StorageError('InvalidArgument', 'STATE_END before the VM state')
    if (s.instret !== instret) throw new StorageError('InvalidArgument', `STATE_END at instruction ${instret}, the state is at ${s.instret}`)
    const h = createHash('sha256').update(s.guest)
    const step = SCAN_PAGES * PAGE_SIZE
    for (let at = 0; at < this.memory.length; at += step) {
      h.update(this.memory.subarray(at, at + step))
      await turn()
    }
    const got = h.digest('hex')
    if (got !== hash.toString('hex')) throw new StorageError('InvalidArgument', `the received state's hash ${got.slice(0, 16)}… is not the primary's ${hash.toString('hex').slice(0, 16)}…`)
    return { ...s, memory: this.memory }
  }
}

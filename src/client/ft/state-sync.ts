import { createHash } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import type { FrozenVm } from '../vm/freeze.js'
import { PAGE_SIZE } from '../vm/memory.js'
import { decodeState, encodeState, hashState, type VmState } from '../vm/state.js'

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
  /** non-zero pages sent */
  pages: number
  zeroPages: number
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE)
const isZero = (p: Uint8Array): boolean => ZERO_PAGE.equals(p)
/** pages looked at between two turns of the event loop (the channel's heartbeats and loss timer run between) */
const SCAN_PAGES = 512

/**
 * Sends a frozen VM's state: its sections, then its memory as it was at the freeze (copy-on-write:
 * the VM runs on meanwhile), then STATE_END with the hash of the guest state and memory. Each page
 * is copied (or hashed, a zero page) as soon as it is read (FrozenVm.page's rule); the link's
 * backpressure is awaited between runs, and the event loop turns every SCAN_PAGES pages.
 */
export async function sendState(f: FrozenVm, link: StateLink, o: { yield?: () => Promise<void> } = {}): Promise<SentState> {
  const turn = o.yield ?? (() => new Promise<void>((r) => setImmediate(r)))
  let scanned = 0
  const state = encodeState(f.state)
  const hash = createHash('sha256').update(f.state.guest)
  let bytes = 0
  const put = async (data: Buffer) => {
    bytes += data.length
    if (!link.state(data)) await link.drained()
  }
  await put(Buffer.concat([Buffer.from([STATE_ITEM.VMSTATE]), state]))
  let pages = 0
  let zeroPages = 0
  for (let p = 0; p < f.pages; ) {
    // one run: the next non-zero pages (at most STATE_RUN_PAGES, contiguous), read now, before the guest runs again
    let first = -1
    const run: Uint8Array[] = []
    for (; p < f.pages && run.length < STATE_RUN_PAGES; p++) {
      if (++scanned % SCAN_PAGES === 0) await turn()
      const page = f.page(p)
      hash.update(page)
      if (isZero(page)) {
        zeroPages++
        if (first >= 0) {
          p++
          break
        }
        continue
      }
      if (first < 0) first = p
      run.push(Buffer.from(page))
    }
    if (!run.length) continue
    const head = Buffer.alloc(5)
    head[0] = STATE_ITEM.PAGES
    head.writeUInt32LE(first, 1)
    pages += run.length
    await put(Buffer.concat([head, ...run]))
  }
  link.end(f.instret, hash.digest())
  return { bytes, pages, zeroPages }
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

  /** STATE_END: the state, checked against the sender's count and hash. */
  end(instret: number, hash: Buffer): VmState {
    const s = this.state
    if (!s) throw new StorageError('InvalidArgument', 'STATE_END before the VM state')
    if (s.instret !== instret) throw new StorageError('InvalidArgument', `STATE_END at instruction ${instret}, the state is at ${s.instret}`)
    const got = hashState(s.guest, this.memory)
    if (got !== hash.toString('hex')) throw new StorageError('InvalidArgument', `the received state's hash ${got.slice(0, 16)}… is not the primary's ${hash.toString('hex').slice(0, 16)}…`)
    return { ...s, memory: this.memory }
  }
}

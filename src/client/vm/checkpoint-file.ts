import { randomBytes } from 'node:crypto'
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { setImmediate as nextTurn } from 'node:timers/promises'
import { crc32c } from '../../disk-formats/crc32c.js'
import { defineStruct } from '../../disk-formats/struct.js'
import { CrcWorker } from './crc-worker.js'

/**
 * The checkpoint file (SPEC.md §Checkpoint file): a VM's encoded state and its guest memory.
 *
 *   file   = header  state  chunk*  trailer
 *   header = "TNDMCKPT" … u32 CRC-32C of the header before it                     (168 bytes)
 *   state  = the encoded VmState, opaque here                      (header.stateBytes bytes)
 *   chunk  = head (index, first page, page count, non-zero count, 256-bit page bitmap)
 *            the non-zero pages of its 256, in order   u32 CRC-32C of head and pages
 *   trailer = "TNDMCEND" u64 fileBytes u32 nonZeroPages u32 chunksCrc u32 headerCrc u32 CRC (32 bytes)
 *
 * A file is written under a temporary name beside its final one, synced, renamed into place and
 * the folder synced: a reader sees the previous complete file or the new complete one. A file cut
 * anywhere lacks the trailer at its end and is refused as truncated; every part is checked
 * against its CRC before it is used.
 */
export const CHECKPOINT_MAGIC = 'TNDMCKPT'
export const CHECKPOINT_VERSION = 1
export const TRAILER_MAGIC = 'TNDMCEND'
export const CHECKPOINT_PAGE_BYTES = 4096
/** pages per memory chunk: 1 MiB of guest memory, the unit of CRC, of I/O and of yielding */
export const CHUNK_PAGES = 256
/** the longest VM name or identity the header holds (UTF-8 bytes) */
export const MAX_NAME_BYTES = 64
/**
 * The largest state blob a reader accepts. The state is the hart, CSRs and devices (kilobytes)
 * plus in-flight disk requests and at most 256 received frames; this bound only stops a damaged
 * header from asking for an allocation the size of the file.
 */
export const MAX_STATE_BYTES = 256 << 20
/** The largest guest memory a checkpoint holds (the engine's limit, Memory: 1 GiB), in pages. */
const MAX_PAGES = 0x40000000 / CHECKPOINT_PAGE_BYTES

/** The header; its CRC-32C covers bytes 0..163. */
export const CheckpointHeader = defineStruct({
  magic: { offset: 0, type: { bytes: 8 } },
  version: { offset: 8, type: 'u32' },
  /** no flag is defined in version 1: a reader refuses any bit set */
  flags: { offset: 12, type: 'u32' },
  headerBytes: { offset: 16, type: 'u32' },
  pageBytes: { offset: 20, type: 'u32' },
  memoryBytes: { offset: 24, type: 'u64' },
  instret: { offset: 32, type: 'f64' },
  imageSha256: { offset: 40, type: { bytes: 32 } },
  stateBytes: { offset: 72, type: 'u32' },
  stateCrc: { offset: 76, type: 'u32' },
  chunkPages: { offset: 80, type: 'u32' },
  chunkCount: { offset: 84, type: 'u32' },
  /** where the first chunk starts: headerBytes + stateBytes */
  memoryOffset: { offset: 88, type: 'u64' },
  nameBytes: { offset: 96, type: 'u32' },
  name: { offset: 100, type: { bytes: MAX_NAME_BYTES } },
  headerCrc: { offset: 164, type: 'u32' },
})
export const HEADER_BYTES = CheckpointHeader.size

/** A chunk's head; the pages its bitmap marks follow, then the chunk's CRC-32C. */
export const ChunkHead = defineStruct({
  index: { offset: 0, type: 'u32' },
  firstPage: { offset: 4, type: 'u32' },
  pageCount: { offset: 8, type: 'u16' },
  nonZeroPages: { offset: 10, type: 'u16' },
  /** bit i (byte i >> 3, least significant bit first): page firstPage + i is stored */
  bitmap: { offset: 12, type: { bytes: CHUNK_PAGES / 8 } },
})
export const CHUNK_HEAD_BYTES = ChunkHead.size
const CRC_BYTES = 4

/** The commit record: the last 32 bytes of a complete file. */
export const CheckpointTrailer = defineStruct({
  magic: { offset: 0, type: { bytes: 8 } },
  fileBytes: { offset: 8, type: 'u64' },
  nonZeroPages: { offset: 16, type: 'u32' },
  /** CRC-32C of every chunk's CRC in order, each as 4 little-endian bytes */
  chunksCrc: { offset: 20, type: 'u32' },
  /** the header's CRC: this record closes that header's file */
  headerCrc: { offset: 24, type: 'u32' },
  trailerCrc: { offset: 28, type: 'u32' },
})
export const TRAILER_BYTES = CheckpointTrailer.size

export type CheckpointErrorCode =
  | 'magic' // not a checkpoint file
  | 'version' // a version or flag this Tandem does not read
  | 'truncated' // the file ends before its commit record: the write did not finish
  | 'crc' // a part fails its CRC-32C
  | 'corrupt' // fields pass their CRC but contradict each other or the format's bounds
  | 'memory-size' // the guest memory size differs from the VM's
  | 'image' // taken of another guest image
  | 'io' // the operating system refused a read or write
  | 'aborted' // a write cancelled by its signal

/** A checkpoint that cannot be written or read; `code` says why, the message names the file. */
export class CheckpointError extends Error {
  override readonly name = 'CheckpointError'
  constructor(
    readonly code: CheckpointErrorCode,
    message: string,
    readonly file: string,
    options?: { cause?: unknown },
  ) {
    super(message, options)
  }
}

/** What a checkpoint's header says. */
export interface CheckpointInfo {
  version: number
  memoryBytes: number
  pageBytes: number
  instret: number
  imageSha256: Buffer
  name: string
  stateBytes: number
  chunkCount: number
  /** the whole file, trailer included */
  fileBytes: number
  /** pages stored; the others are zero */
  nonZeroPages: number
}

/** What a checkpoint is written from. */
export interface CheckpointSource {
  memoryBytes: number
  /** SHA-256 of the guest image (32 bytes) */
  imageSha256: Buffer
  instret: number
  /** the VM's name or identity, up to MAX_NAME_BYTES of UTF-8 */
  name?: string
  /** the encoded VM state */
  state: Buffer
  /** memoryBytes / 4096 */
  pages: number
  /**
   * Page `i` as it was at the checkpoint, or null when it is all zero. Called once per page, at the
   * moment the writer encodes it; the bytes are copied before the writer yields, so the view may
   * be live RAM that the guest writes afterwards.
   */
  page(i: number): Uint8Array | null
}

export interface WriteProgress {
  pagesDone: number
  pages: number
  /** bytes of the file encoded so far (some may still be on their way to it) */
  bytes: number
}

export interface WriteCheckpointOptions {
  /** cancels the write: the temporary file is removed and the promise rejects with code 'aborted' */
  signal?: AbortSignal
  /** after each chunk */
  onProgress?: (p: WriteProgress) => void
  /**
   * pages encoded between turns of the event loop given to the VM (default 256); turns come
   * between chunks, so any value up to 256 gives one after every chunk
   */
  yieldEvery?: number
  /** milliseconds, for `ms` (default performance.now) */
  now?: () => number
  /**
   * the CRC-32C computed on this thread (default crc32c): header, state and trailer only; the
   * chunks' CRCs come from the worker
   */
  checksum?: (buf: Uint8Array, crc?: number) => number
}

export interface WriteCheckpointResult {
  /** the file's size */
  bytes: number
  /** pages stored */
  pagesWritten: number
  /** pages found all zero and not stored */
  zeroPages: number
  /** from the call to the directory sync after the rename */
  ms: number
}

/** I/O unit of the writer: encoded chunks gather in a buffer this large before a write */
const STAGING_BYTES = 8 << 20
/**
 * The nice value of the writer's CRC thread (Linux): on a machine whose cores are all busy, the
 * VM's thread keeps the CPU and the checkpoint takes longer (CFS gives a nice-10 thread about a
 * tenth of what a nice-0 one on the same core gets).
 */
const CRC_NICE = 10
const MAX_CHUNK_BYTES = CHUNK_HEAD_BYTES + CHUNK_PAGES * CHECKPOINT_PAGE_BYTES + CRC_BYTES
const ZERO_PAGE = Buffer.alloc(CHECKPOINT_PAGE_BYTES)
const TEMP_SUFFIX = /^\.tmp-[0-9a-f]{12}$/

const size = (bytes: number) => (bytes % (1 << 20) === 0 ? `${bytes / (1 << 20)} MiB` : `${bytes} bytes`)
const systemMessage = (e: unknown) => (e as Error)?.message ?? String(e)

/** Temporary files a killed writer left beside `path` (`path.tmp-<12 hex digits>`). */
async function leftovers(path: string): Promise<string[]> {
  const base = basename(path)
  const names = await readdir(dirname(path)).catch(() => [] as string[])
  return names.filter((n) => n.startsWith(base) && TEMP_SUFFIX.test(n.slice(base.length))).map((n) => join(dirname(path), n))
}

/** Makes a rename in `dir` durable. */
async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}

function checkSource(src: CheckpointSource): Buffer {
  if (src.pages * CHECKPOINT_PAGE_BYTES !== src.memoryBytes || src.pages <= 0 || src.pages > MAX_PAGES || !Number.isInteger(src.pages)) {
    throw new RangeError(`a checkpoint holds 1 to ${MAX_PAGES} pages of ${CHECKPOINT_PAGE_BYTES} bytes: memoryBytes ${src.memoryBytes}, pages ${src.pages}`)
  }
  if (src.imageSha256.length !== 32) throw new RangeError(`imageSha256 must be 32 bytes, not ${src.imageSha256.length}`)
  if (src.state.length > MAX_STATE_BYTES) throw new RangeError(`the VM state is ${src.state.length} bytes, a checkpoint holds at most ${MAX_STATE_BYTES}`)
  const name = Buffer.from(src.name ?? '', 'utf8')
  if (name.length > MAX_NAME_BYTES) throw new RangeError(`the VM name is ${name.length} bytes of UTF-8, a checkpoint holds at most ${MAX_NAME_BYTES}`)
  return name
}

/** The encoded header of a checkpoint of `src` (its CRC included). */
function encodeHeader(src: CheckpointSource, name: Buffer, checksum: (buf: Uint8Array) => number): Buffer {
  const h = CheckpointHeader.encode({
    magic: Buffer.from(CHECKPOINT_MAGIC, 'latin1'),
    version: CHECKPOINT_VERSION,
    flags: 0,
    headerBytes: HEADER_BYTES,
    pageBytes: CHECKPOINT_PAGE_BYTES,
    memoryBytes: src.memoryBytes,
    instret: src.instret,
    imageSha256: src.imageSha256,
    stateBytes: src.state.length,
    stateCrc: checksum(src.state),
    chunkPages: CHUNK_PAGES,
    chunkCount: Math.ceil(src.pages / CHUNK_PAGES),
    memoryOffset: HEADER_BYTES + src.state.length,
    nameBytes: name.length,
    name: Buffer.concat([name, Buffer.alloc(MAX_NAME_BYTES - name.length)]),
    headerCrc: 0,
  })
  CheckpointHeader.set(h, 'headerCrc', checksum(h.subarray(0, CheckpointHeader.fields.headerCrc.offset)))
  return h
}

/**
 * Writes a checkpoint to `path` in the background: each chunk's pages are taken (`src.page`) and
 * copied when the chunk is encoded, its CRC is computed on a worker thread at a lower priority
 * (crc-worker.ts: the VM's thread only copies pages), chunks are written through a file handle
 * while the next ones are encoded — at most two 8 MiB buffers of them at a time — and the event
 * loop gets a turn every `yieldEvery` pages, so the VM runs meanwhile.
 * Publishing is crash-safe: `path.tmp-<random>` in the same folder, fdatasync, rename onto
 * `path`, fsync of the folder. Temporary files of earlier killed writers are removed first; one
 * writer per path at a time.
 */
export async function writeCheckpoint(path: string, src: CheckpointSource, opts: WriteCheckpointOptions = {}): Promise<WriteCheckpointResult> {
  const now = opts.now ?? (() => performance.now())
  const checksum = opts.checksum ?? crc32c
  const t0 = now()
  const name = checkSource(src)
  const yieldEvery = Math.max(1, opts.yieldEvery ?? CHUNK_PAGES)
  const aborted = () => new CheckpointError('aborted', `writing the checkpoint '${path}' was cancelled`, path, { cause: opts.signal?.reason })
  if (opts.signal?.aborted) throw aborted()
  for (const f of await leftovers(path)) await unlink(f).catch(() => undefined)

  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`
  let fh: FileHandle
  try {
    fh = await open(tmp, 'wx', 0o600)
  } catch (e) {
    throw new CheckpointError('io', `cannot write the checkpoint '${path}': ${systemMessage(e)}`, path, { cause: e })
  }
  let crcs: CrcWorker | undefined
  let published = false
  let inFlight: Promise<void> = Promise.resolve()
  try {
    // Two staging buffers shared with the CRC worker (which starts while the header and state
    // are written): one being checksummed and written while this thread copies pages into the other.
    const shared = [new SharedArrayBuffer(STAGING_BYTES), new SharedArrayBuffer(STAGING_BYTES)]
    const worker = (crcs = new CrcWorker(shared, CRC_NICE))
    const header = encodeHeader(src, name, checksum)
    let pos = 0
    const writeAll = async (buf: Uint8Array) => {
      for (let done = 0; done < buf.length; ) {
        const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done)
        done += bytesWritten
      }
      pos += buf.length
    }
    await writeAll(header)
    await writeAll(src.state)

    const staging = shared.map((b) => Buffer.from(b))
    let cur = 0
    let used = 0
    /** the CRCs of the chunks in staging[cur], each written after its chunk when it comes */
    let summed: Promise<void>[] = []
    const flush = async () => {
      await inFlight
      const buf = staging[cur].subarray(0, used)
      const crcsIn = Promise.all(summed)
      inFlight = crcsIn.then(() => writeAll(buf))
      inFlight.catch(() => undefined) // awaited later; not an unhandled rejection meanwhile
      summed = []
      cur ^= 1
      used = 0
    }
    const chunkCrcs = Buffer.alloc(Math.ceil(src.pages / CHUNK_PAGES) * CRC_BYTES)
    let nonZero = 0
    let encoded = header.length + src.state.length
    let sinceYield = 0
    for (let chunk = 0, first = 0; first < src.pages; chunk++, first += CHUNK_PAGES) {
      if (opts.signal?.aborted) throw aborted()
      if (STAGING_BYTES - used < MAX_CHUNK_BYTES) await flush()
      const buf = staging[cur]
      const start = used
      const count = Math.min(CHUNK_PAGES, src.pages - first)
      const bitmap = buf.subarray(start + ChunkHead.fields.bitmap.offset, start + CHUNK_HEAD_BYTES).fill(0)
      let at = start + CHUNK_HEAD_BYTES
      let stored = 0
      for (let i = 0; i < count; i++) {
        const p = src.page(first + i)
        if (p === null) continue
        if (p.length !== CHECKPOINT_PAGE_BYTES) throw new RangeError(`page ${first + i} is ${p.length} bytes, not ${CHECKPOINT_PAGE_BYTES}`)
        if (ZERO_PAGE.equals(p)) continue
        buf.set(p, at)
        bitmap[i >> 3] |= 1 << (i & 7)
        at += CHECKPOINT_PAGE_BYTES
        stored++
      }
      ChunkHead.assign(buf, { index: chunk, firstPage: first, pageCount: count, nonZeroPages: stored }, start)
      const crcAt = at
      const index = chunk
      const crcIn = worker.crc(buf.subarray(start, crcAt)).then((crc) => {
        buf.writeUInt32LE(crc, crcAt)
        chunkCrcs.writeUInt32LE(crc, index * CRC_BYTES)
      })
      crcIn.catch(() => undefined) // awaited by flush; not an unhandled rejection when the write stops first
      summed.push(crcIn)
      encoded += at + CRC_BYTES - start
      used = at + CRC_BYTES
      nonZero += stored
      opts.onProgress?.({ pagesDone: first + count, pages: src.pages, bytes: encoded })
      sinceYield += count
      if (sinceYield >= yieldEvery) {
        sinceYield = 0
        await nextTurn()
      }
    }
    if (opts.signal?.aborted) throw aborted()
    await flush()
    await inFlight
    await worker.close()

    const fileBytes = pos + TRAILER_BYTES
    const trailer = CheckpointTrailer.encode({
      magic: Buffer.from(TRAILER_MAGIC, 'latin1'),
      fileBytes,
      nonZeroPages: nonZero,
      chunksCrc: checksum(chunkCrcs),
      headerCrc: CheckpointHeader.get(header, 'headerCrc'),
      trailerCrc: 0,
    })
    CheckpointTrailer.set(trailer, 'trailerCrc', checksum(trailer.subarray(0, CheckpointTrailer.fields.trailerCrc.offset)))
    await writeAll(trailer)
    await fh.datasync()
    await fh.close()
    if (opts.signal?.aborted) throw aborted()
    await rename(tmp, path)
    published = true
    // Published. A folder that cannot be synced leaves, after a power loss, the previous
    // checkpoint or this one, never a torn one: no reason to report this one as not written.
    await syncDir(dirname(path)).catch(() => undefined)
    return { bytes: fileBytes, pagesWritten: nonZero, zeroPages: src.pages - nonZero, ms: now() - t0 }
  } catch (e) {
    await crcs?.close()
    await inFlight.catch(() => undefined)
    await fh.close().catch(() => undefined)
    if (!published) await unlink(tmp).catch(() => undefined)
    if (e instanceof CheckpointError || e instanceof RangeError) throw e
    throw new CheckpointError('io', `cannot write the checkpoint '${path}': ${systemMessage(e)}`, path, { cause: e })
  }
}

/** A checkpoint whose header, state and commit record have been checked; memory is read on demand. */
export interface OpenedCheckpoint {
  readonly file: string
  readonly header: CheckpointInfo
  /** the encoded VM state (its CRC checked) */
  readonly state: Buffer
  /**
   * Reads guest memory straight into `into` (the VM's RAM, memoryBytes long), chunk by chunk,
   * checking each chunk's CRC, then the commit record's totals; zero pages are zeroed unless
   * `zeroed` says `into` is all zero already (a new Memory: its untouched pages then take no
   * RAM). Closes the file. On a CheckpointError `into` holds a partial image and must not run.
   */
  loadMemory(into: Uint8Array, opts?: { zeroed?: boolean }): Promise<void>
  /** Closes the file without loading memory (idempotent). */
  close(): Promise<void>
}

export interface ReadCheckpointOptions {
  /** the VM's memory size: a checkpoint of another size is refused ('memory-size') */
  memoryBytes?: number
  /** the VM's guest image hash: a checkpoint of another image is refused ('image') */
  imageSha?: Buffer
}

/**
 * Opens a checkpoint and checks, in order: magic, version, header CRC, header bounds, the
 * commit record at the file's end (a torn or cut file has none: 'truncated'), the expected
 * memory size and image, the state's CRC. Memory is read by `loadMemory`.
 */
export async function readCheckpoint(path: string, opts: ReadCheckpointOptions = {}): Promise<OpenedCheckpoint> {
  const fail = (code: CheckpointErrorCode, msg: string) => new CheckpointError(code, msg, path)
  let fh: FileHandle
  try {
    fh = await open(path, 'r')
  } catch (e) {
    throw new CheckpointError('io', `cannot read the checkpoint '${path}': ${systemMessage(e)}`, path, { cause: e })
  }
  const readAt = async (len: number, at: number): Promise<Buffer> => {
    const buf = Buffer.alloc(len)
    for (let done = 0; done < len; ) {
      const { bytesRead } = await fh.read(buf, done, len - done, at + done)
      if (bytesRead === 0) throw fail('truncated', `'${path}' is truncated at byte ${at + done} (changed while being read)`)
      done += bytesRead
    }
    return buf
  }
  try {
    let fileBytes: number
    try {
      fileBytes = (await fh.stat()).size
    } catch (e) {
      throw new CheckpointError('io', `cannot read the checkpoint '${path}': ${systemMessage(e)}`, path, { cause: e })
    }
    const notOurs = fail('magic', `'${path}' is not a Tandem checkpoint (no ${CHECKPOINT_MAGIC} header)`)
    const head = await readAt(Math.min(fileBytes, HEADER_BYTES), 0)
    if (head.length < CHECKPOINT_MAGIC.length) {
      if (head.length > 0 && head.toString('latin1') === CHECKPOINT_MAGIC.slice(0, head.length)) {
        throw fail('truncated', `'${path}' is truncated at byte ${fileBytes} (inside the ${CHECKPOINT_MAGIC} magic)`)
      }
      throw notOurs
    }
    if (head.toString('latin1', 0, 8) !== CHECKPOINT_MAGIC) throw notOurs
    if (head.length < 12) throw fail('truncated', `'${path}' is truncated at byte ${fileBytes} (the header takes ${HEADER_BYTES} bytes)`)
    const version = CheckpointHeader.get(head, 'version')
    if (version !== CHECKPOINT_VERSION) throw fail('version', `'${path}': checkpoint version ${version}, this Tandem reads ${CHECKPOINT_VERSION}`)
    if (head.length < HEADER_BYTES) throw fail('truncated', `'${path}' is truncated at byte ${fileBytes} (the header takes ${HEADER_BYTES} bytes)`)
    const h = CheckpointHeader.decode(head)
    const headerCrc = crc32c(head.subarray(0, CheckpointHeader.fields.headerCrc.offset))
    if (h.headerCrc !== headerCrc) throw fail('crc', `'${path}': the header fails its CRC`)
    if (h.flags !== 0) throw fail('version', `'${path}': checkpoint flags 0x${h.flags.toString(16)}, this Tandem knows none`)

    const pages = h.memoryBytes / CHECKPOINT_PAGE_BYTES
    const bound = (ok: boolean, what: string) => {
      if (!ok) throw fail('corrupt', `'${path}': the header's ${what}`)
    }
    bound(h.headerBytes === HEADER_BYTES, `header size is ${h.headerBytes}, version 1 has ${HEADER_BYTES}`)
    bound(h.pageBytes === CHECKPOINT_PAGE_BYTES, `page size is ${h.pageBytes}, version 1 has ${CHECKPOINT_PAGE_BYTES}`)
    bound(h.chunkPages === CHUNK_PAGES, `chunk size is ${h.chunkPages} pages, version 1 has ${CHUNK_PAGES}`)
    bound(Number.isInteger(pages) && pages > 0 && pages <= MAX_PAGES, `memory size ${h.memoryBytes} is not 1 to ${MAX_PAGES} pages`)
    bound(h.chunkCount === Math.ceil(pages / CHUNK_PAGES), `chunk count ${h.chunkCount} does not cover ${pages} pages`)
    bound(h.stateBytes <= MAX_STATE_BYTES, `state size ${h.stateBytes} is over ${MAX_STATE_BYTES}`)
    bound(h.memoryOffset === HEADER_BYTES + h.stateBytes, `memory offset ${h.memoryOffset} is not after the state`)
    bound(h.nameBytes <= MAX_NAME_BYTES, `name length ${h.nameBytes} is over ${MAX_NAME_BYTES}`)

    // the smallest file of this header: every chunk with no page stored
    const smallest = h.memoryOffset + h.chunkCount * (CHUNK_HEAD_BYTES + CRC_BYTES) + TRAILER_BYTES
    const cut = `'${path}' is truncated at byte ${fileBytes} (no ${TRAILER_MAGIC} commit record at its end: the write did not finish)`
    if (fileBytes < smallest) throw fail('truncated', cut)
    const tail = await readAt(TRAILER_BYTES, fileBytes - TRAILER_BYTES)
    if (tail.toString('latin1', 0, 8) !== TRAILER_MAGIC) throw fail('truncated', cut)
    const tr = CheckpointTrailer.decode(tail)
    if (tr.trailerCrc !== crc32c(tail.subarray(0, CheckpointTrailer.fields.trailerCrc.offset))) throw fail('crc', `'${path}': the commit record fails its CRC`)
    if (tr.fileBytes > fileBytes) throw fail('truncated', `'${path}' is truncated at byte ${fileBytes} (its commit record says ${tr.fileBytes})`)
    if (tr.fileBytes < fileBytes) throw fail('corrupt', `'${path}' has ${fileBytes - tr.fileBytes} bytes after its commit record at byte ${tr.fileBytes - TRAILER_BYTES}`)
    if (tr.headerCrc !== headerCrc) throw fail('corrupt', `'${path}': the commit record belongs to another header`)
    const storedBytes = fileBytes - smallest
    if (tr.nonZeroPages > pages || tr.nonZeroPages * CHECKPOINT_PAGE_BYTES !== storedBytes) {
      throw fail('corrupt', `'${path}': the commit record counts ${tr.nonZeroPages} stored pages, the file holds ${storedBytes / CHECKPOINT_PAGE_BYTES}`)
    }

    if (opts.memoryBytes !== undefined && opts.memoryBytes !== h.memoryBytes) {
      throw fail('memory-size', `'${path}' holds ${size(h.memoryBytes)} of guest memory, this VM has ${size(opts.memoryBytes)}`)
    }
    if (opts.imageSha && !opts.imageSha.equals(h.imageSha256)) {
      throw fail('image', `'${path}' was taken of guest image ${h.imageSha256.toString('hex').slice(0, 16)}…, this VM runs ${opts.imageSha.toString('hex').slice(0, 16)}…`)
    }
    const state = await readAt(h.stateBytes, HEADER_BYTES)
    if (crc32c(state) !== h.stateCrc) throw fail('crc', `'${path}': the VM state fails its CRC`)

    const header: CheckpointInfo = {
      version,
      memoryBytes: h.memoryBytes,
      pageBytes: h.pageBytes,
      instret: h.instret,
      imageSha256: h.imageSha256,
      name: h.name.subarray(0, h.nameBytes).toString('utf8'),
      stateBytes: h.stateBytes,
      chunkCount: h.chunkCount,
      fileBytes,
      nonZeroPages: tr.nonZeroPages,
    }
    let closed = false
    const close = async () => {
      if (closed) return
      closed = true
      await fh.close().catch(() => undefined)
    }
    const loadMemory = async (into: Uint8Array, o: { zeroed?: boolean } = {}) => {
      if (closed) throw new Error(`the checkpoint '${path}' is closed (loadMemory runs once)`)
      try {
        if (into.length !== h.memoryBytes) throw fail('memory-size', `'${path}' holds ${size(h.memoryBytes)} of guest memory, this VM has ${size(into.length)}`)
        await loadChunks(fh, path, h, tr, into, o.zeroed === true, readAt)
      } finally {
        await close()
      }
    }
    return { file: path, header, state, loadMemory, close }
  } catch (e) {
    await fh.close().catch(() => undefined)
    if (e instanceof CheckpointError) throw e
    throw new CheckpointError('io', `cannot read the checkpoint '${path}': ${systemMessage(e)}`, path, { cause: e })
  }
}

type Header = ReturnType<typeof CheckpointHeader.decode>
type Trailer = ReturnType<typeof CheckpointTrailer.decode>

/**
 * Reads every chunk into `into`: one readv per chunk, of the chunk's stored pages (into their
 * places in `into`, runs of adjacent pages as one piece), its CRC and the next chunk's head.
 */
async function loadChunks(fh: FileHandle, path: string, h: Header, tr: Trailer, into: Uint8Array, zeroed: boolean, readAt: (len: number, at: number) => Promise<Buffer>): Promise<void> {
  const pages = h.memoryBytes / CHECKPOINT_PAGE_BYTES
  const bad = (chunk: number) => new CheckpointError('crc', `'${path}': memory chunk ${chunk} fails its CRC`, path)
  const memEnd = tr.fileBytes - TRAILER_BYTES
  let pos = h.memoryOffset
  let head = await readAt(CHUNK_HEAD_BYTES, pos)
  const chunkCrcs = Buffer.alloc(h.chunkCount * CRC_BYTES)
  let stored = 0
  for (let chunk = 0; chunk < h.chunkCount; chunk++) {
    const first = chunk * CHUNK_PAGES
    const count = Math.min(CHUNK_PAGES, pages - first)
    const c = ChunkHead.decode(head)
    if (c.index !== chunk || c.firstPage !== first || c.pageCount !== count) throw bad(chunk)
    let marked = 0
    for (let i = 0; i < CHUNK_PAGES; i++) {
      if (!(c.bitmap[i >> 3] & (1 << (i & 7)))) continue
      if (i >= count) throw bad(chunk)
      marked++
    }
    if (marked !== c.nonZeroPages) throw bad(chunk)
    const dataBytes = marked * CHECKPOINT_PAGE_BYTES
    const last = chunk === h.chunkCount - 1
    // the chunk's CRC and, but for the last chunk, the next chunk's head
    const tail = Buffer.alloc(CRC_BYTES + (last ? 0 : CHUNK_HEAD_BYTES))
    if (pos + CHUNK_HEAD_BYTES + dataBytes + tail.length > memEnd) throw bad(chunk)

    const pieces: Uint8Array[] = []
    for (let i = 0; i < count; ) {
      const on = (c.bitmap[i >> 3] >> (i & 7)) & 1
      let j = i + 1
      while (j < count && ((c.bitmap[j >> 3] >> (j & 7)) & 1) === on) j++
      const from = (first + i) * CHECKPOINT_PAGE_BYTES
      const to = (first + j) * CHECKPOINT_PAGE_BYTES
      if (on) pieces.push(into.subarray(from, to))
      else if (!zeroed) into.fill(0, from, to)
      i = j
    }
    pieces.push(tail)
    await readvFully(fh, path, pieces, pos + CHUNK_HEAD_BYTES)

    let crc = crc32c(head)
    for (let k = 0; k < pieces.length - 1; k++) crc = crc32c(pieces[k], crc)
    if (crc !== tail.readUInt32LE(0)) throw bad(chunk)
    chunkCrcs.writeUInt32LE(crc, chunk * CRC_BYTES)
    stored += marked
    pos += CHUNK_HEAD_BYTES + dataBytes + CRC_BYTES
    if (!last) head = tail.subarray(CRC_BYTES)
  }
  if (pos !== memEnd || stored !== tr.nonZeroPages || crc32c(chunkCrcs) !== tr.chunksCrc) {
    throw new CheckpointError('corrupt', `'${path}': the memory chunks do not match the commit record`, path)
  }
}

/** readv until every piece is full; a file that ends first is truncated. */
async function readvFully(fh: FileHandle, path: string, pieces: Uint8Array[], at: number): Promise<void> {
  let rest = pieces
  let pos = at
  while (rest.length) {
    const { bytesRead } = await fh.readv(rest, pos)
    if (bytesRead === 0) throw new CheckpointError('truncated', `'${path}' is truncated at byte ${pos} (changed while being read)`, path)
    pos += bytesRead
    let n = bytesRead
    while (rest.length && n >= rest[0].length) {
      n -= rest[0].length
      rest = rest.slice(1)
    }
    if (n > 0) rest = [rest[0].subarray(n), ...rest.slice(1)]
  }
}

import { Worker } from 'node:worker_threads'
import { makeCrc32c, type Crc32c } from '../../disk-formats/crc32c.js'

/** A request: the CRC-32C of bytes start..end of shared buffer `buffer` (an index). */
type CrcJob = [buffer: number, start: number, end: number]

interface WorkerData {
  buffers: SharedArrayBuffer[]
  nice: number
}

/**
 * The worker's body: lowers its thread's priority (Linux: a thread's nice value is its own), then
 * answers each request with its CRC, in the order asked. Self-contained, like makeCrc32c: the
 * worker runs it from its source text, so it reaches modules through `load` only.
 */
function serve(load: (id: string) => unknown, crc32c: Crc32c): void {
  const { parentPort, workerData } = load('node:worker_threads') as typeof import('node:worker_threads')
  const { buffers, nice } = workerData as WorkerData
  try {
    const tid = Number((load('node:fs') as typeof import('node:fs')).readlinkSync('/proc/thread-self').split('/').pop())
    ;(load('node:os') as typeof import('node:os')).setPriority(tid, nice)
  } catch {
    // no /proc/thread-self (not Linux): the worker runs at the process's priority
  }
  const views = buffers.map((b) => new Uint8Array(b))
  parentPort!.on('message', ([b, start, end]: CrcJob) => parentPort!.postMessage(crc32c(views[b].subarray(start, end))))
}

/**
 * The worker's program, as source text: the same from src/ (a test's TypeScript loader), from
 * dist/ and from an esbuild bundle, with no file of its own to find. It starts without the
 * parent's Node options (`execArgv: []`): a test loader's hooks would take seconds to start in it.
 * An esbuild-based loader (tsx) keeps function names by wrapping them in `__name(fn, name)`, so
 * the program defines that as the identity.
 */
const PROGRAM = `var __name = (f) => f;(${serve.toString()})(require, (${makeCrc32c.toString()})())`

/**
 * CRC-32C of ranges of shared buffers, computed on a worker thread: a checkpoint's checksums
 * (most of its writer's CPU) neither run on the VM's thread nor, at `nice` above the process's,
 * take a busy machine's CPU from it. The bytes are read in place: leave them alone until their
 * answer. Answers come in the order asked. `close()` when done; a worker that fails or ends
 * rejects every request still open and every later one.
 */
export class CrcWorker {
  private readonly worker: Worker
  private readonly waiting: { resolve(crc: number): void; reject(e: Error): void }[] = []
  private broken: Error | null = null

  /** `nice`: the worker thread's nice value (Linux; -20 to 19, raising it needs no privilege) */
  constructor(
    private readonly buffers: SharedArrayBuffer[],
    nice: number,
  ) {
    const workerData: WorkerData = { buffers, nice }
    this.worker = new Worker(PROGRAM, { eval: true, execArgv: [], workerData })
    this.worker.on('message', (crc: number) => this.waiting.shift()?.resolve(crc))
    this.worker.on('error', (e) => this.fail(new Error(`the CRC-32C worker failed: ${e.message}`, { cause: e })))
    this.worker.on('exit', (code) => this.fail(new Error(`the CRC-32C worker ended (exit code ${code})`)))
  }

  private fail(e: Error): void {
    this.broken ??= e
    for (const w of this.waiting.splice(0)) w.reject(this.broken)
  }

  /** The CRC-32C of `bytes`, a view of one of the worker's buffers. */
  crc(bytes: Uint8Array): Promise<number> {
    const b = this.buffers.indexOf(bytes.buffer as SharedArrayBuffer)
    if (b < 0) throw new TypeError("CrcWorker.crc takes a view of one of the worker's buffers")
    if (this.broken) return Promise.reject(this.broken)
    const answer = new Promise<number>((resolve, reject) => this.waiting.push({ resolve, reject }))
    answer.catch(() => undefined) // a caller that stops early leaves it unawaited: not an unhandled rejection
    const job: CrcJob = [b, bytes.byteOffset, bytes.byteOffset + bytes.length]
    this.worker.postMessage(job)
    return answer
  }

  /** Ends the worker; requests still open are rejected. */
  async close(): Promise<void> {
    this.fail(new Error('the CRC-32C worker is closed'))
    await this.worker.terminate()
  }
}

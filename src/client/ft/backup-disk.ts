import { FT_MARK, type LogEvent } from '../vm/events.js'
import { mediumRange, type DiskRequestInfo, type ScsiPath, type ScsiResult } from '../vm/scsi-path.js'

/** Where a backup's READ data comes from (`--backup-reads`). */
export type BackupReads = 'disk' | 'log'

/** A backup's read of the shared disk failed where the primary's succeeded: it can no longer follow. */
export class BackupDiskError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'BackupDiskError'
  }
}

interface Request {
  cdb: Buffer
  dataOut: Buffer | null
  dataInLength: number
  resolve: (r: ScsiResult) => void
  reject: (e: Error) => void
}

interface Outcome {
  status: number
  sense?: Buffer
  data: Buffer[]
}

const UNIT_ATTENTION_COMMANDS_CLEARED = Buffer.from([0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x2f, 0x00, 0, 0, 0, 0])

/**
 * The disk of a fault-tolerant backup (ft/SPEC.md "The backup's disk"). The guest's requests are
 * recorded at submit and never issued: a write is taken as done, and every request completes with
 * the primary's status and sense, from its DISKRESULT record. A READ's data comes, when its result
 * arrives, from the shared disk (`disk`: every write the primary made before it has landed, since the
 * primary's HBA runs requests in order) or from the log (`log`); other commands' data-in always
 * comes from the log. At go-live the requests still without a result go to the live path, in order.
 */
export class BackupDisk implements ScsiPath {
  private readonly requests = new Map<number, Request>()
  private readonly outcomes = new Map<number, Outcome>()
  private live: Promise<ScsiPath> | null = null
  private chain: Promise<unknown> = Promise.resolve()
  /** the highest request number whose READ the backup has made (or -1): the primary's writes wait for it */
  readsDone = -1
  /** the first failure of the shared disk; the backup is then broken */
  failed: BackupDiskError | null = null
  onFailed: ((e: BackupDiskError) => void) | null = null

  constructor(
    readonly shared: ScsiPath,
    readonly mode: BackupReads,
  ) {}

  get blocks(): number {
    return this.shared.blocks
  }

  execute(cdb: Buffer, dataOut: Buffer | null, dataInLength: number, req?: DiskRequestInfo): Promise<ScsiResult> {
    if (this.live) return this.live.then((p) => p.execute(cdb, dataOut, dataInLength, req))
    if (!req) return Promise.reject(new BackupDiskError('a backup disk request without its request number'))
    return new Promise<ScsiResult>((resolve, reject) => {
      this.requests.set(req.seq, { cdb, dataOut, dataInLength, resolve, reject })
      this.settle(req.seq)
    })
  }

  /** A DISKRESULT or DISKDATA record, as the replay reaches it. */
  record(e: LogEvent): void {
    const seq = e.value >>> 0
    let o = this.outcomes.get(seq)
    if (!o) this.outcomes.set(seq, (o = { status: -1, data: [] }))
    if (e.kind === FT_MARK.DISKDATA) {
      if (e.extra) o.data.push(e.extra)
      return
    }
    o.status = e.arg
    if (e.extra?.length) o.sense = e.extra
    this.settle(seq)
  }

  /** requests recorded and not yet completed (go-live issues them again) */
  get pending(): number {
    return this.requests.size
  }

  private settle(seq: number): void {
    const q = this.requests.get(seq)
    const o = this.outcomes.get(seq)
    if (!q || !o || o.status < 0) return
    this.requests.delete(seq)
    this.outcomes.delete(seq)
    const result: ScsiResult = { status: o.status, ...(o.sense ? { sense: o.sense } : {}) }
    const range = mediumRange(q.cdb)
    if (o.data.length) {
      q.resolve({ ...result, dataIn: o.data.length === 1 ? o.data[0] : Buffer.concat(o.data) })
      return
    }
    if (!range || range.write || o.status !== 0 || q.dataInLength === 0 || this.mode === 'log') {
      q.resolve(result)
      return
    }
    // a READ the primary made: made again on the shared disk, in order
    const read = this.chain.then(async () => {
      if (this.failed) throw this.failed
      const r = await this.shared.execute(q.cdb, null, q.dataInLength).catch((e: Error) => ({ status: -1, error: e }) as const)
      if (r.status !== 0) {
        const why = 'error' in r ? r.error.message : `status 0x${r.status.toString(16)}`
        this.failed = new BackupDiskError(`the backup's read of request ${seq} on the shared disk failed (${why}) where the primary's succeeded`)
        this.onFailed?.(this.failed)
        throw this.failed
      }
      this.readsDone = Math.max(this.readsDone, seq)
      return { ...result, ...('dataIn' in r && r.dataIn ? { dataIn: r.dataIn } : {}) }
    })
    this.chain = read.catch(() => undefined)
    read.then(q.resolve, q.reject)
  }

  /**
   * Go-live: from now on requests go to `live`; those recorded without a result are issued there,
   * in submission order. Writes are idempotent and reads are made again; a COMPARE AND WRITE is
   * never made twice: it completes with UNIT ATTENTION, commands cleared by another initiator.
   */
  goLive(live: ScsiPath | Promise<ScsiPath>): void {
    const path = Promise.resolve(live)
    this.live = path
    // a live path that cannot be had fails the requests, as a lost disk would
    path.catch((e: Error) => this.onFailed?.(new BackupDiskError(`the disk could not be opened for the live VM: ${e.message}`)))
    const seqs = [...this.requests.keys()] // in submission order
    for (const seq of seqs) {
      const q = this.requests.get(seq)!
      this.requests.delete(seq)
      this.outcomes.delete(seq)
      if (q.cdb[0] === 0x89) {
        q.resolve({ status: 0x02, sense: UNIT_ATTENTION_COMMANDS_CLEARED })
        continue
      }
      const run = this.chain.then(() => path).then((p) => p.execute(q.cdb, q.dataOut, q.dataInLength))
      this.chain = run.catch(() => undefined)
      run.then(q.resolve, q.reject)
    }
  }
}

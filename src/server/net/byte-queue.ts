/**
 * Bytes received on a socket, handed out in exact sizes. `read(n)` resolves when n bytes are
 * there, or rejects when the peer closed first. Reading past `limit` buffered bytes pauses the
 * source (backpressure) until the consumer catches up; a read of any size completes, a large one
 * being moved into its buffer as it arrives (so it is never held twice, nor needs to fit `limit`).
 */
const EMPTY = Buffer.alloc(0)

/**
 * The most a socket hands over in one chunk (libuv reads 64 KiB at a time): a larger read spans
 * chunks and is copied anyway, so it is moved as it arrives rather than buffered whole first.
 */
const ONE_CHUNK = 64 * 1024

export class ByteQueue {
  private chunks: Buffer[] = []
  private length = 0
  /** `take: false`: only wait until n bytes are there (readInto moves them itself) */
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void; take?: false } | null = null
  private ended: Error | null = null

  constructor(
    private readonly onPause: () => void,
    private readonly onResume: () => void,
    private readonly limit = 4 << 20,
  ) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk)
    this.length += chunk.length
    if (this.length > this.limit) this.onPause()
    this.serve()
  }

  end(err: Error): void {
    this.ended = err
    if (this.waiter && this.length < this.waiter.n) {
      const w = this.waiter
      this.waiter = null
      w.reject(err)
    }
  }

  get buffered(): number {
    return this.length
  }

  private take(n: number): Buffer {
    let out: Buffer
    const first = this.chunks[0]
    if (first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.chunks.shift()
      else this.chunks[0] = first.subarray(n)
    } else {
      out = Buffer.allocUnsafe(n)
      let at = 0
      while (at < n) {
        const c = this.chunks[0]
        const k = Math.min(c.length, n - at)
        c.copy(out, at, 0, k)
        at += k
        if (k === c.length) this.chunks.shift()
        else this.chunks[0] = c.subarray(k)
      }
    }
    this.length -= n
    if (this.length <= this.limit) this.onResume()
    return out
  }

  /** Moves the next n bytes into `target` at `at` (no intermediate buffer); null drops them. */
  private takeInto(target: Buffer | null, at: number, n: number): void {
    let done = 0
    while (done < n) {
      const c = this.chunks[0]
      const k = Math.min(c.length, n - done)
      if (target) c.copy(target, at + done, 0, k)
      done += k
      if (k === c.length) this.chunks.shift()
      else this.chunks[0] = c.subarray(k)
    }
    this.length -= n
    if (this.length <= this.limit) this.onResume()
  }

  /**
   * Reads the next n bytes straight into `target` at `at` (a large payload lands where it is
   * used, without a copy in between). Pieces are moved as they arrive.
   */
  readInto(target: Buffer, at: number, n: number): Promise<void> {
    return this.consume(target, at, n)
  }

  /** Drops the next n bytes as they arrive, holding none of them (a payload refused unread). */
  skip(n: number): Promise<void> {
    return this.consume(null, 0, n)
  }

  private async consume(target: Buffer | null, at: number, n: number): Promise<void> {
    if (this.waiter) throw new Error('ByteQueue: concurrent read')
    let done = 0
    while (done < n) {
      if (this.length === 0) {
        if (this.ended) throw this.ended
        await new Promise<void>((resolve, reject) => {
          this.waiter = { n: 1, resolve: () => resolve(), reject, take: false }
        })
        continue
      }
      const k = Math.min(this.length, n - done)
      this.takeInto(target, at + done, k)
      done += k
    }
  }

  private serve(): void {
    if (this.waiter && this.length >= this.waiter.n) {
      const w = this.waiter
      this.waiter = null
      w.resolve(w.take === false ? EMPTY : this.take(w.n))
    }
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('ByteQueue: concurrent read'))
    if (n === 0) return Promise.resolve(Buffer.alloc(0))
    if (this.length >= n) return Promise.resolve(this.take(n))
    if (this.ended) return Promise.reject(this.ended)
    if (n > ONE_CHUNK) return this.readArriving(n)
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject }
    })
  }

  private async readArriving(n: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n)
    await this.readInto(out, 0, n)
    return out
  }
}

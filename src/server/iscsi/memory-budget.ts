/**
 * The bytes one connection holds for its client: the data buffers of the commands it runs
 * (`reserved`) and the replies waiting on its socket (`queued`). A command takes its bytes before
 * it allocates them and gives them back once its reply is handed to the socket, where they count
 * as queued until the socket drains. Commands waiting for bytes are served in arrival order, so a
 * large one is not overtaken for ever by small ones.
 *
 * `queued` counts what the socket will report with a 'drain' event (Node's `writableNeedDrain`):
 * below its high-water mark a queue is ignored, and every wait ends on `give`, `drained` or `close`.
 */
export class MemoryBudget {
  private reserved = 0
  private closed = false
  private readonly waiting: { n: number; go: () => void }[] = []
  private readonly roomWaiting: (() => void)[] = []

  constructor(
    readonly limit: number,
    private readonly queued: () => number,
  ) {}

  get used(): number {
    return this.reserved + this.queued()
  }

  /** Takes n bytes if they fit now and no command waits before this one. */
  tryTake(n: number): boolean {
    if (!this.closed && (this.waiting.length > 0 || this.used + n > this.limit)) return false
    this.reserved += n
    return true
  }

  /** Takes n bytes (at most `limit`) when they fit; at once after `close`. */
  take(n: number): Promise<void> {
    if (this.tryTake(n)) return Promise.resolve()
    return new Promise((go) => this.waiting.push({ n, go }))
  }

  give(n: number): void {
    this.reserved -= n
    this.serve()
  }

  /** Resolves when the connection holds no more than its limit (or is closed). */
  room(): Promise<void> {
    if (this.closed || this.used <= this.limit) return Promise.resolve()
    return new Promise((go) => this.roomWaiting.push(go))
  }

  /** The socket's queue emptied (its 'drain' event). */
  drained(): void {
    this.serve()
  }

  /** The connection ended: every wait ends, and later takes succeed at once. */
  close(): void {
    this.closed = true
    this.serve()
  }

  private serve(): void {
    while (this.waiting.length > 0 && (this.closed || this.used + this.waiting[0].n <= this.limit)) {
      const w = this.waiting.shift()!
      this.reserved += w.n
      w.go()
    }
    if (this.roomWaiting.length > 0 && (this.closed || this.used <= this.limit)) for (const go of this.roomWaiting.splice(0)) go()
  }
}

/**
 * Polling for a connection's next request at queue depth 1.
 *
 * A client that waits for each reply before it sends the next request (queue depth 1) sends that
 * request some tens of microseconds after the reply. If the event loop has gone to sleep in
 * epoll_wait by then, the wake-up costs more than the request itself: on a virtual machine an idle
 * vCPU halts, and waking it is an interrupt and an exit to the hypervisor (measured here: 4 KiB
 * reads at QD1 over iSCSI went from ~8.5k to ~15k IOPS with a 200 µs window). So after a reply
 * to a request that came alone and leaves its connection with nothing else in flight, the loop
 * keeps turning (setImmediate, so each turn polls for I/O without sleeping) for a short window,
 * and takes the next request as soon as it arrives. qemu's event loop does the same
 * (`poll-max-ns`), as does Linux's busy polling of sockets. Requests of a client at a higher queue
 * depth arrive while others are in flight, so nothing polls for it: the CPU stays with the client
 * and the kernel's writeback, and requests are batched as before.
 *
 * The cost is CPU: while a QD1 client keeps sending within the window, one core stays busy. The
 * window is `tandem serve --poll-us` (0 turns polling off).
 */
export class Poller {
  private until = 0
  private active = false

  constructor(
    private windowMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The window in microseconds (0: never poll). */
  set windowUs(us: number) {
    this.windowMs = Math.max(0, us) / 1000
  }

  get windowUs(): number {
    return this.windowMs * 1000
  }

  /** Whether the loop is being kept awake now. */
  get polling(): boolean {
    return this.active
  }

  /** A reply left its connection idle: keep the loop awake for the window from now. */
  expectNext(): void {
    if (this.windowMs <= 0) return
    this.until = this.now() + this.windowMs
    if (!this.active) {
      this.active = true
      setImmediate(this.turn)
    }
  }

  /** Stops keeping the loop awake (at its next turn). */
  cancel(): void {
    this.until = 0
  }

  private readonly turn = (): void => {
    if (this.now() < this.until) setImmediate(this.turn)
    else this.active = false
  }
}

/** Default window: long enough to cover a client's turn-around on this kind of machine (~60–100 µs). */
export const DEFAULT_POLL_US = 200

/** The process's poller, shared by the NBD and iSCSI connections (`serve` sets its window). */
export const poller = new Poller(DEFAULT_POLL_US / 1000)

import { createHash } from 'node:crypto'
import { Clint, EntropyClock, Finisher, Hba, Nic, Uart, mtimeWord, randomWord, u32, type DeviceContext, type VmDevice } from './devices/index.js'
import { loadElf } from './elf.js'
import { EVENT, EVENT_NAMES, FT_MARK, MAX_DISK_DATA, ReplayError, type EventKind, type EventRecorder, type EventReplayer, type LogEvent } from './events.js'
import { Hart, IRQ, type Bus, type Fault } from './hart.js'
import { Memory } from './memory.js'
import { JitHart } from './jit.js'
import type { Engine } from './engines.js'
import { realTimers, type Timers } from './timers.js'
import type { CpuLimiter } from './cpu-limit.js'
import { mediumRange, type ScsiPath } from './scsi-path.js'
import type { SwitchPort } from './net.js'
import { StateError, StateReader, StateWriter } from './state-codec.js'
import { CounterRegs, HartRegs, MachineHost, MachineRegs, hashState, hashStateAsync, type VmState } from './state.js'

/**
 * A Tandem VM (SPEC.md): one RV32IM hart, RAM at 0x80000000, and memory-mapped devices at the
 * addresses of qemu's `virt` machine where one exists there (test finisher, CLINT, ns16550
 * UART), so that a guest that uses only those runs unchanged on qemu-system-riscv32.
 */
export const MMIO = {
  FINISHER: 0x00100000,
  CLINT: 0x02000000,
  UART: 0x10000000,
  ENTROPY: 0x10001000,
  HBA: 0x10002000,
  NIC: 0x10003000,
} as const
/** mtime ticks per second (qemu virt's timebase) */
export const TIMEBASE_HZ = 10_000_000
/**
 * Instructions per run slice, at least — and always while a disk request is in flight or the NIC
 * has a cable, whose completions and frames the guest sees only between slices.
 */
export const SLICE_MIN = 50_000
/** at most (~1.3 ms of the translator's fastest guest; a slice that turns slow — interpreted or
 * invalidated code at ~50 MIPS — still ends within ~40 ms, well inside a pair's loss timeout) */
export const SLICE_MAX = 2_000_000
/**
 * Otherwise a slice lasts about this long on the run's timers (at the rate the last slice ran),
 * and no longer than to the timer's deadline: the work between slices (an event-loop turn, the
 * run loop's resumption, its devices' polls) is paid ~1000 times a second however fast the
 * engine runs. At a fixed 50 000 instructions it was paid ~10 000 times a second under the block
 * translator, and V8's optimization of that loop and of the interpreter (which finishes each slice's
 * last partial block) cost more CPU than the `cpu` guest's whole run saved by them.
 */
export const SLICE_MS = 1
/**
 * A slice sized at the last one's rate ends by this many times its ms, at a block boundary, if its
 * code runs slower (cold or just-translated code at a tenth of the rate; the block translator
 * looks at the clock every 50 000 instructions or 2 048 block runs; the interpreter does not).
 * An FT pair's backup, which cannot start a slice before its primary has ended and logged it, fell
 * ~30–45 ms behind at a `cpu10` run's start on such slices (6 M instructions sized at 6 ms ran
 * 22 ms) and stayed there; with the deadline the primary's longest were ~11 ms.
 */
export const SLICE_LATE = 1.5

export interface HostClock {
  /** monotonic nanoseconds */
  now(): bigint
  /** wall-clock nanoseconds since the epoch */
  wall(): bigint
}
export const systemClock: HostClock = { now: () => process.hrtime.bigint(), wall: () => BigInt(Date.now()) * 1_000_000n }

export interface MachineOptions {
  image: Buffer
  imageName?: string
  memory: number
  /** how the virtual SCSI HBA reaches its disk: each guest CDB goes to it unchanged */
  disk?: ScsiPath
  record?: EventRecorder
  replay?: EventReplayer
  /**
   * When the replay log is over (complete, every record used), the VM goes on as a live run
   * instead of stopping: inputs are read live, the NIC joins its port (SPEC.md §Go-live).
   */
  goLive?: boolean
  maxInstructions?: number
  /** how the hart executes (SPEC.md §Engines): the block translator (default) or the interpreter */
  engine?: Engine
  clock?: HostClock
  entropy?: () => number
  /** console bytes as they are written */
  onConsole?: (b: number) => void
  /** the NIC's port on a virtual switch (absent: a NIC with no cable) */
  net?: SwitchPort
  /** the NIC's MAC address (default 02:00:00:00:00:01) */
  mac?: Buffer
  /**
   * Stops the run between two slices (Ctrl-C of `tandem vm run`): a recording ends with an END
   * record marked "stopped by the host", and its replay stops at the same instruction.
   */
  signal?: AbortSignal
  /** called at every multiple of `every` retired instructions, exactly there (tests compare runs) */
  observe?: { every: number; fn: (m: Machine) => void }
  /** how the host waits (WFI) and yields between slices (default: real timers) */
  timers?: Timers
  /**
   * A live slice's length on the run's timers and its most instructions (default SLICE_MS and
   * SLICE_MAX; SPEC.md §Hart). An FT pair runs longer slices (ft/primary.ts PAIR_SLICE).
   */
  slice?: { ms: number; maxInstructions: number }
  /** holds the run to a share of one core (SPEC.md "CPU limit"); WFI waits count as idle */
  limiter?: CpuLimiter
  /**
   * A fault-tolerant primary (src/client/ft/SPEC.md): each disk request's outcome is logged before
   * the DISK record that completes it, with its data-in — every command's (`data`), or only that
   * of commands other than READ, which the backup reads from the shared disk (`status`).
   */
  logDiskResults?: 'status' | 'data'
  /** A replay hands the DISKRESULT and DISKDATA records to this as it reaches them (a backup's disk). */
  onDiskResult?: (e: LogEvent) => void
  /** After every run slice, live or replayed, and before a WFI wait: a primary ships its log, a backup acknowledges. */
  afterSlice?: (m: Machine, waiting?: boolean) => void | Promise<void>
  /**
   * When the guest has exited (its END record logged or replayed), before the run's summary is made
   * (its state hash reads all of guest memory, ~70 ms for 64 MiB): a primary ships its last records,
   * a backup acknowledges its last instruction, with no wait behind the hash.
   */
  onExit?: (m: Machine) => void
  /** At go-live, before the first live instruction (a backup takes over the disk, the clock, the NIC). */
  onLive?: (m: Machine) => void
  /** Each frame a replay produces (it does not transmit them), with the instruction count that sent it. */
  onReplayedFrame?: (frame: Buffer, instret: number) => void
}
export type RunEnd = 'exit' | 'limit' | 'fault' | 'halt' | 'replay-error' | 'stopped'

export interface RunSummary {
  end: RunEnd
  exitCode: number | null
  instructions: number
  seconds: number
  /** CPU (user + system, every thread of the process) over the same span as `seconds` */
  cpuSeconds: number
  mips: number
  stateHash: string
  consoleHash: string
  console: string
  interrupts: number
  events: number
  message?: string
  fault?: Fault
}

export interface SaveOptions {
  /** include a copy of guest RAM (a checkpoint file writes RAM on its own) */
  memory?: boolean
}

export class Machine {
  readonly mem: Memory
  readonly hart: Hart
  private readonly clock: HostClock
  private startNs: bigint
  private observedAt = -1
  private stoppedByHost = false
  private halted: string | null = null
  /** when a replay last let I/O run (timers ms) */
  private yieldedAt = 0
  /** instructions per ms of the run's timers, as the last long-enough slice ran (0: not known yet) */
  private rate = 0
  private interrupts = 0
  readonly imageSha: Buffer
  readonly clint: Clint
  readonly uart: Uart
  readonly finisher: Finisher
  readonly hba: Hba
  readonly nic: Nic
  /** the devices in address order, each with its state section */
  readonly devices: readonly VmDevice[]
  private running = false
  private lastEnd: RunEnd | null = null
  private pause: { resolve: (instret: number) => void; promise: Promise<number>; at: number; resumed?: () => void } | null = null
  private wake: (() => void) | null = null
  /** a restored machine's replay starts after this many records (those before the state) */
  private logStart = 0
  /** the log being followed (until a go-live) */
  private replay: EventReplayer | undefined
  /** records of the log used before going live */
  private replayed = 0

  constructor(
    private readonly opts: MachineOptions,
    /** false: memory is left zero (a restore fills it), the image is only hashed */
    loadImage = true,
  ) {
    this.mem = new Memory(opts.memory)
    this.replay = opts.replay
    this.clock = opts.clock ?? systemClock
    this.startNs = this.clock.now()
    const bus: Bus = { load: (a, s) => this.load(a, s), store: (a, s, v) => this.store(a, s, v) }
    this.hart = new (opts.engine === 'interp' ? Hart : JitHart)(this.mem, bus, (high) => this.input(EVENT.TIME, high ? 3 : 2, () => mtimeWord(this.mtime(), high)))
    if (loadImage) this.hart.pc = loadElf(opts.image, this.mem, opts.imageName)
    this.imageSha = createHash('sha256').update(opts.image).digest()
    const m = this
    const ctx: DeviceContext = {
      mem: this.mem,
      hart: this.hart,
      get replaying() {
        return m.replay !== undefined
      },
      input: (kind, arg, live) => this.input(kind, arg, live),
      mtime: () => this.mtime(),
      updateExternalIrq: () => m.hart.setPending(IRQ.MEI, m.hba.irq || m.nic.irq),
      interruptRaised: () => m.interrupts++,
      replayedFrame: opts.onReplayedFrame ? (f) => opts.onReplayedFrame!(f, m.hart.instret) : undefined,
    }
    this.finisher = new Finisher(MMIO.FINISHER, ctx)
    this.clint = new Clint(MMIO.CLINT, ctx)
    this.uart = new Uart(MMIO.UART, opts.onConsole)
    const entropy = new EntropyClock(MMIO.ENTROPY, ctx, opts.entropy ?? randomWord, () => this.clock.wall())
    this.hba = new Hba(MMIO.HBA, ctx, opts.disk)
    this.nic = new Nic(MMIO.NIC, ctx, opts.mac ?? Buffer.from([2, 0, 0, 0, 0, 1]), opts.net)
    this.devices = [this.finisher, this.clint, this.uart, entropy, this.hba, this.nic]
  }

  /**
   * A machine that goes on from a saved state: the same guest image, memory from the state (or
   * loaded by the caller before it runs: a checkpoint file), devices, hart and guest clock as saved.
   * With `replay`, the log's records up to the state's position are skipped.
   */
  static fromState(state: VmState, opts: MachineOptions, o: { loadImage?: boolean } = {}): Machine {
    if (opts.memory !== state.memoryBytes) throw new StateError(`the state has ${state.memoryBytes} bytes of guest memory, this VM ${opts.memory}`)
    const m = new Machine(opts, o.loadImage ?? true)
    m.restore(state)
    return m
  }

  /**
   * Takes `state` in place (a quasi-lockstep secondary resynchronized from its primary): hart,
   * devices, guest clock and, when the state carries it, memory. Only between slices (paused).
   */
  loadState(state: VmState): void {
    if (this.running && !this.paused) throw new StateError('a running VM takes a state only while paused')
    if (state.memoryBytes !== this.mem.size) throw new StateError(`the state has ${state.memoryBytes} bytes of guest memory, this VM ${this.mem.size}`)
    this.restore(state)
    // a WFI wait of the old state is over: the run goes on from the new one
    this.kicked = true
  }
  /** set by loadState: the current WFI wait ends */
  private kicked = false

  private restore(state: VmState): void {
    const m = this
    if (!m.imageSha.equals(state.imageSha)) throw new StateError('the state was saved with a different guest image')
    if (state.memory) {
      if (state.memory.length !== state.memoryBytes) throw new StateError(`the state's memory is ${state.memory.length} bytes, ${state.memoryBytes} expected`)
      m.mem.bytes.set(state.memory)
    }
    const g = new StateReader(state.guest, 'the VM state (guest part)')
    const hart = g.section('HART', (r) => r.struct(HartRegs))
    g.section('MACH', (r) => (m.interrupts = r.struct(MachineRegs).interrupts))
    for (const d of m.devices) g.section(d.tag, (r) => d.restore(r))
    const cntr = g.optionalSection('CNTR', (r) => r.struct(CounterRegs))
    if (cntr) Object.assign(m.hart.counterOffset, { mcycle: [cntr.mcycleLo, cntr.mcycleHi], minstret: [cntr.minstretLo, cntr.minstretHi] })
    if (!g.done) throw new StateError('the VM state (guest part) has bytes after its last section')
    const h = new StateReader(state.host, 'the VM state (host part)')
    const host = h.section('MACH', (r) => r.struct(MachineHost))
    for (const d of m.devices) if (d.restoreHost) h.section(d.tag, (r) => d.restoreHost!(r))
    const x = m.hart.x
    for (let i = 0; i < 32; i++) x[i] = hart.x.readInt32LE(i * 4)
    x[0] = 0
    m.hart.pc = hart.pc | 0
    m.hart.instret = hart.instret
    for (const k of ['mstatus', 'mie', 'mip', 'mtvec', 'mepc', 'mcause', 'mtval', 'mscratch'] as const) m.hart[k] = hart[k] | 0
    // the guest clock goes on from the saved mtime
    m.startNs = m.clock.now() - (BigInt(host.mtime) * 1_000_000_000n) / BigInt(TIMEBASE_HZ)
    m.logStart = host.logPosition
  }

  /** The whole state (between slices: paused, or not running). */
  saveState(o: SaveOptions = {}): VmState {
    const h = new StateWriter()
    const logPosition = this.replay ? this.replay.position : (this.opts.record?.count ?? 0)
    h.section('MACH', (w) => w.struct(MachineHost, { mtime: Number(this.mtime()), logPosition }))
    for (const d of this.devices) if (d.saveHost) h.section(d.tag, (w) => d.saveHost!(w))
    return { memoryBytes: this.mem.size, imageSha: this.imageSha, instret: this.hart.instret, guest: this.guestState(), host: h.finish(), ...(o.memory ? { memory: new Uint8Array(this.mem.bytes) } : {}) }
  }

  /** The sections the guest can observe (what the state hash covers). */
  private guestState(): Buffer {
    const g = new StateWriter()
    g.section('HART', (w) => {
      const hart = this.hart
      const x = Buffer.alloc(128)
      for (let i = 0; i < 32; i++) x.writeInt32LE(hart.x[i], i * 4)
      w.struct(HartRegs, { x, pc: u32(hart.pc), instret: hart.instret, mstatus: u32(hart.mstatus), mie: u32(hart.mie), mip: u32(hart.mip), mtvec: u32(hart.mtvec), mepc: u32(hart.mepc), mcause: u32(hart.mcause), mtval: u32(hart.mtval), mscratch: u32(hart.mscratch) })
    })
    g.section('MACH', (w) => w.struct(MachineRegs, { interrupts: this.interrupts }))
    for (const d of this.devices) g.section(d.tag, (w) => d.save(w))
    const { mcycle, minstret } = this.hart.counterOffset
    if (mcycle[0] || mcycle[1] || minstret[0] || minstret[1]) g.section('CNTR', (w) => w.struct(CounterRegs, { mcycleLo: mcycle[0], mcycleHi: mcycle[1], minstretLo: minstret[0], minstretHi: minstret[1] }))
    return g.finish()
  }

  /**
   * Stops the VM between two run slices — or exactly when `at` instructions have retired — once
   * every disk request it has submitted has its result (not yet delivered to the guest): resolves
   * with the instruction count there. A VM that is not running resolves at once.
   */
  requestPause(at?: number): Promise<number> {
    if (this.pause) return this.pause.promise
    if (!this.running) return Promise.resolve(this.hart.instret)
    let resolve!: (n: number) => void
    const promise = new Promise<number>((r) => (resolve = r))
    this.pause = { resolve, promise, at: at ?? 0 }
    if (at === undefined || at <= this.hart.instret) this.wake?.()
    return promise
  }

  /** Lets a paused VM run on. */
  resume(): void {
    const p = this.pause
    this.pause = null
    p?.resumed?.()
  }

  /**
   * How the last run ended, until the next starts (null: running, or never run). Set before a pause
   * asked for during the run resolves, so the one who asked can tell a VM that ended from a paused one.
   */
  get ended(): RunEnd | null {
    return this.lastEnd
  }

  get paused(): boolean {
    return this.pause?.resumed !== undefined
  }

  /** A pause was asked for and is not over: waiting for its point (the next slice's end, in-flight disk results), or paused. */
  get pauseAsked(): boolean {
    return this.pause !== null
  }

  /** Between slices: where a requested pause happens. */
  private async pausePoint(): Promise<void> {
    const p = this.pause
    if (!p || p.resumed || this.hart.instret < p.at) return
    await this.hba.drain()
    const resumed = new Promise<void>((r) => (p.resumed = r))
    p.resolve(this.hart.instret)
    await resumed
  }

  // ---- non-deterministic inputs --------------------------------------------------------

  /** A value the guest reads that the outside world decides: live (and logged) or from the log. */
  private input(kind: EventKind, arg: number, live: () => number): number {
    const r = this.replay
    const at = this.hart.instret
    if (r && !r.peek() && this.logOver()) this.goLive()
    else if (r) {
      const e = r.next()
      if (!e) throw new ReplayError(`replay log ends (record ${r.position}) where the guest makes a ${EVENT_NAMES[kind]} at instruction ${at}`, at)
      if (e.kind !== kind || e.arg !== arg || e.instret !== at) {
        throw new ReplayError(`replay diverged at instruction ${at}: the guest makes a ${EVENT_NAMES[kind]}, the log has a ${EVENT_NAMES[e.kind] ?? e.kind} at instruction ${e.instret}`, at)
      }
      // the slice's limit stopped at this read, not at what follows it: a delivery next ends the slice here
      const n = r.peek()
      if (n && n.kind !== EVENT.TIME && n.kind !== EVENT.ENTROPY && n.kind !== EVENT.RTC) this.hart.requestStop()
      return e.value | 0
    }
    const v = live() | 0
    this.opts.record?.add(kind, arg, at, v)
    return v
  }

  private mtime(): bigint {
    return ((this.clock.now() - this.startNs) * BigInt(TIMEBASE_HZ)) / 1_000_000_000n
  }

  /** The guest's clock (mtime ticks, TIMEBASE_HZ a second). */
  get guestTicks(): bigint {
    return this.mtime()
  }

  /**
   * Moves the guest's clock on to `ticks` (never back): a backup going live continues from the
   * primary's last logged time, then on this host's clock.
   */
  setGuestTime(ticks: bigint): void {
    if (ticks > this.mtime()) this.startNs = this.clock.now() - (ticks * 1_000_000_000n) / BigInt(TIMEBASE_HZ)
  }

  // ---- the bus -------------------------------------------------------------------------

  private device(a: number): VmDevice | undefined {
    for (const d of this.devices) if (a >= d.base && a < d.base + d.size) return d
    return undefined
  }

  private load(addr: number, size: number): number | undefined {
    const a = addr >>> 0
    const d = this.device(a)
    return d ? d.read(a - d.base, size) : undefined
  }

  private store(addr: number, size: number, v: number): boolean {
    const a = addr >>> 0
    const d = this.device(a)
    return d ? d.write(a - d.base, size, v) : false
  }

  // ---- running ---------------------------------------------------------------------------

  private setIrq(irq: number, on: boolean): void {
    const was = (this.hart.mip & (1 << irq)) !== 0
    if (was === on) return
    this.hart.setPending(irq, on)
    if (on) this.interrupts++
    this.opts.record?.add(EVENT.IRQ, irq, this.hart.instret, on ? 1 : 0)
  }

  /** Record/plain mode, between slices: timer and disk completions become events now. */
  private async poll(wfi: boolean): Promise<'go' | 'halt'> {
    const { hba, nic, clint } = this
    for (;;) {
      const ready = hba.ready
      if (ready > 0) {
        if (this.opts.logDiskResults) this.logDiskResults(ready)
        this.opts.record?.add(EVENT.DISK, 0, this.hart.instret, ready)
        await hba.complete(ready)
      }
      while (nic.rxFree > 0 && nic.queued) {
        const frame = nic.takeQueued()!
        this.opts.record?.add(EVENT.NET, 0, this.hart.instret, frame.length, frame)
        nic.deliver(frame)
      }
      this.setIrq(IRQ.MTI, this.mtime() >= clint.mtimecmp)
      if (!wfi || this.hart.mip & this.hart.mie || this.takeKick()) return 'go'
      // WFI with nothing pending: wait for the timer, the disk or the NIC, whichever can come first
      const canTimer = (this.hart.mie & (1 << IRQ.MTI)) !== 0 && clint.armed
      const canDisk = hba.pending > 0 && (this.hart.mie & (1 << IRQ.MEI)) !== 0
      const canNet = nic.connected && nic.rxFree > 0 && (this.hart.mie & (1 << IRQ.MEI)) !== 0
      if (!canTimer && !canDisk && !canNet) return 'halt'
      const waits: Promise<unknown>[] = [new Promise<void>((r) => (this.wake = r))]
      if (canTimer) {
        const ns = ((clint.mtimecmp - this.mtime()) * 1_000_000_000n) / BigInt(TIMEBASE_HZ)
        waits.push((this.opts.timers ?? realTimers).sleep(Math.max(0, Math.min(Number(ns / 1_000_000n), 1000))))
      }
      if (canDisk) waits.push(hba.oldest())
      if (canNet) waits.push(nic.arrival())
      const signal = this.opts.signal
      if (signal?.aborted) return 'go'
      // what is logged so far goes out before the wait (a primary's held disk write needs it acknowledged)
      if (this.opts.afterSlice) await this.opts.afterSlice(this, true)
      let onAbort: (() => void) | undefined
      if (signal) waits.push(new Promise<void>((r) => signal.addEventListener('abort', (onAbort = () => r()), { once: true })))
      const woken = Promise.race(waits)
      await (this.opts.limiter ? this.opts.limiter.idle(woken) : woken)
      if (onAbort) signal!.removeEventListener('abort', onAbort)
      nic.stopWaiting()
      this.wake = null
      // halt() wakes the wait: the run loop sees it and ends
      if (signal?.aborted || this.halted !== null) return 'go'
      await this.pausePoint()
      if (this.takeKick()) return 'go'
    }
  }

  private takeKick(): boolean {
    const k = this.kicked
    this.kicked = false
    return k
  }

  /** A primary: the outcome of each request about to complete, and the data-in the backup cannot read itself. */
  private logDiskResults(count: number): void {
    const rec = this.opts.record
    if (!rec) return
    const at = this.hart.instret
    for (const { seq, cdb, result } of this.hba.results(count)) {
      const data = result.dataIn
      if (data && (this.opts.logDiskResults === 'data' || !mediumRange(cdb))) {
        for (let o = 0; o < data.length; o += MAX_DISK_DATA) rec.add(FT_MARK.DISKDATA, 0, at, seq, data.subarray(o, o + MAX_DISK_DATA))
      }
      rec.add(FT_MARK.DISKRESULT, result.status & 0xff, at, seq, result.sense?.subarray(0, 252))
    }
  }

  /** Runs to exit, fault, the instruction limit, or a replay error. */
  async run(): Promise<RunSummary> {
    const t0 = process.hrtime.bigint()
    const cpu0 = process.cpuUsage()
    const max = this.opts.maxInstructions ?? Number.MAX_SAFE_INTEGER
    const startReplay = this.replay
    let end: RunEnd = 'limit'
    let message: string | undefined
    this.running = true
    this.lastEnd = null
    // a pause the last run's end resolved (a rerun: a quasi-lockstep secondary given its primary's state)
    if (this.pause && !this.pause.resumed) this.pause = null
    try {
      if (startReplay) {
        const r = startReplay
        while (r.position < this.logStart) if (!r.next() && !(await r.more())) break
        if (r.position < this.logStart) throw new ReplayError(`the replay log ends (record ${r.position}) before the restored state (record ${this.logStart})`, this.hart.instret)
      }
      const timers = this.opts.timers ?? realTimers
      for (;;) {
        const replay = this.replay
        await this.pausePoint()
        // a state taken after the guest's exit (a quasi-lockstep resync of a primary that ended): nothing more runs
        if (this.finisher.exitCode !== null) {
          end = 'exit'
          break
        }
        if (this.hart.instret >= max) {
          end = 'limit'
          message = `stopped at the instruction limit (${max})`
          break
        }
        if (this.halted !== null) {
          end = 'stopped'
          message = this.halted
          break
        }
        if (this.stoppedByHost || (!replay && this.opts.signal?.aborted)) {
          end = 'stopped'
          message = `stopped by the host at instruction ${this.hart.instret}`
          if (!replay) this.opts.record?.add(EVENT.END, 1, this.hart.instret, 0)
          break
        }
        // a log still being written: run no further than every record has arrived
        if (replay) await replay.waitPast(this.hart.instret)
        if (this.halted !== null) continue
        const length = this.sliceLength()
        let limit = Math.min(this.hart.instret + length, max)
        if (replay) limit = Math.min(limit, Math.max(replay.horizon, this.hart.instret))
        const obs = this.opts.observe
        if (obs) limit = Math.min(limit, (Math.floor(this.hart.instret / obs.every) + 1) * obs.every)
        if (this.pause && this.pause.at > this.hart.instret) limit = Math.min(limit, this.pause.at)
        const next = replay?.peek()
        if (replay && next && next.instret < limit && next.kind !== EVENT.TIME && next.kind !== EVENT.ENTROPY && next.kind !== EVENT.RTC) limit = Math.max(next.instret, this.hart.instret)
        const from = this.hart.instret
        const t0 = timers.now()
        // a slice that only its length ends (not the log, a limit or a pause) may end a block short
        // (SPEC.md §Engines), and ends by SLICE_LATE × its ms whatever its count: code slower than
        // the rate it was sized at (cold, just translated) does not hold the host for long
        const soft = limit === from + length
        const reason = limit > from ? this.hart.run(limit, soft, soft ? { at: t0 + SLICE_LATE * (this.opts.slice?.ms ?? SLICE_MS), now: () => timers.now() } : undefined) : 'limit'
        this.learnRate(this.hart.instret - from, timers.now() - t0)
        if (obs && this.hart.instret % obs.every === 0 && this.hart.instret !== this.observedAt) {
          this.observedAt = this.hart.instret
          obs.fn(this)
        }
        if (reason === 'fault') {
          end = 'fault'
          message = this.hart.fault!.message
          break
        }
        if (this.finisher.exitCode !== null) {
          end = 'exit'
          break
        }
        if (this.opts.afterSlice) await this.opts.afterSlice(this)
        if (!this.replay || (await this.deliverReplayed(reason === 'wfi')) === 'live') {
          const p = await this.poll(reason === 'wfi')
          if (p === 'halt') {
            end = 'halt'
            message = `the guest waits for an interrupt (WFI) that cannot come, at instruction ${this.hart.instret}`
            break
          }
          if (reason === 'limit') await timers.yield()
          // a recording written as it runs: memory stays bounded however far the disk lags
          await this.opts.record?.drain()
        } else if (this.opts.afterSlice) {
          // a follower catching up still reads its feed (and acknowledges it) at least every ms
          const now = timers.now()
          if (now - this.yieldedAt >= 1) {
            this.yieldedAt = now
            await timers.yield()
          }
        }
        if (this.opts.limiter) await this.opts.limiter.afterSlice(this.opts.signal)
      }
      if (end === 'exit') {
        const code = this.finisher.exitCode
        const replay = this.replay
        if (replay) await replay.waitPast(this.hart.instret)
        if (replay && !replay.peek() && this.logOver()) this.goLive()
        if (this.replay) {
          const e = replay!.next()
          if (!e || e.kind !== EVENT.END || e.instret !== this.hart.instret || e.value !== code) {
            throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the guest exits with ${code}, the log has ${e ? `a ${EVENT_NAMES[e.kind]} at instruction ${e.instret}` : 'no end record'}`, this.hart.instret)
          }
        } else this.opts.record?.add(EVENT.END, 0, this.hart.instret, code ?? 0)
        this.opts.onExit?.(this)
      }
    } catch (e) {
      if (!(e instanceof ReplayError)) throw e
      end = this.halted !== null ? 'stopped' : 'replay-error'
      message = this.halted ?? e.message
    } finally {
      this.running = false
      this.lastEnd = end
      // a pause asked for as the run ended: resolved with the VM stopped (`ended` says so)
      this.pause?.resolve(this.hart.instret)
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9
    const cpu = process.cpuUsage(cpu0)
    return {
      end,
      exitCode: this.finisher.exitCode,
      instructions: this.hart.instret,
      seconds,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      mips: this.hart.instret / seconds / 1e6,
      // hashed a chunk per turn: a pair's acks and heartbeats go on meanwhile
      stateHash: await hashStateAsync(this.guestState(), this.mem.bytes),
      consoleHash: this.uart.hash(),
      console: this.uart.text(),
      interrupts: this.interrupts,
      events: this.replay ? this.replay.position : startReplay ? this.replayed : (this.opts.record?.count ?? 0),
      message,
      fault: this.hart.fault ?? undefined,
    }
  }

  /** The next slice's instruction count (SLICE_MIN, SLICE_MS): the limits of the log and of a pause come on top. */
  private sliceLength(): number {
    if (this.rate === 0 || (!this.replay && (this.hba.pending > 0 || this.nic.connected))) return SLICE_MIN
    const slice = this.opts.slice
    let n = this.rate * (slice?.ms ?? SLICE_MS)
    if (!this.replay && this.clint.armed) {
      // (a deadline already passed has its interrupt pending: nothing to look at sooner for)
      const ticks = this.clint.mtimecmp - this.mtime()
      if (ticks > 0n) n = Math.min(n, (this.rate * Number(ticks) * 1000) / TIMEBASE_HZ)
    }
    return Math.max(SLICE_MIN, Math.min(slice?.maxInstructions ?? SLICE_MAX, Math.floor(n)))
  }

  /** After a slice of `n` instructions that took `ms` on the run's timers. */
  private learnRate(n: number, ms: number): void {
    // a short slice (one cut by an event, a WFI) or one the timers did not see pass says little
    if (n >= SLICE_MIN / 2 && ms > 0) this.rate = n / ms
  }

  /** The replay log is complete and every record of it used, and the VM is to go on live. */
  private logOver(): boolean {
    return this.opts.goLive === true && this.halted === null && this.replay !== undefined && this.replay.ended && this.replay.peek() === null
  }

  /**
   * Go-live (SPEC.md §Go-live): the log is over, so inputs are read live from here, frames from the
   * switch reach the NIC, and what the guest sends leaves it. Disk requests in flight were already
   * issued at submit (a replay re-executes them): their completions are delivered live.
   */
  goLive(): void {
    if (!this.replay) return
    this.replayed = this.replay.position
    this.replay = undefined
    this.nic.connect()
    this.opts.onLive?.(this)
  }

  /** Replay mode: every interrupt and disk completion logged at this instruction, in order. */
  private async deliverReplayed(wfi: boolean): Promise<'live' | void> {
    const r = this.replay!
    await r.waitPast(this.hart.instret)
    if (!r.peek() && this.logOver()) {
      this.goLive()
      return 'live'
    }
    for (;;) {
      const e = r.peek()
      if (e && e.instret < this.hart.instret && (e.kind === EVENT.IRQ || e.kind === EVENT.DISK || e.kind === EVENT.NET || e.kind === EVENT.END || e.kind === FT_MARK.DISKRESULT || e.kind === FT_MARK.DISKDATA)) {
        throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log has a ${EVENT_NAMES[e.kind]} at instruction ${e.instret}, which the guest has passed`, this.hart.instret)
      }
      if (!e || e.instret !== this.hart.instret) break
      if (e.kind === EVENT.IRQ) {
        r.next()
        // only the timer's line is logged (the devices' line follows DISK and NET events)
        if (e.arg !== IRQ.MTI || e.value > 1) throw new ReplayError(`'${r.file}': record ${r.position - 1} is not a timer interrupt (line ${e.arg}, value ${e.value})`, this.hart.instret)
        const on = e.value === 1
        if (on && !(this.hart.mip & (1 << e.arg))) this.interrupts++
        this.hart.setPending(e.arg, on)
      } else if (e.kind === EVENT.DISK) {
        r.next()
        await this.hba.complete(e.value)
      } else if (e.kind === FT_MARK.DISKRESULT || e.kind === FT_MARK.DISKDATA) {
        r.next()
        this.opts.onDiskResult?.(e)
      } else if (e.kind === EVENT.NET) {
        r.next()
        if (this.nic.rxFree === 0) throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log delivers a network frame, the guest has no receive buffer posted`, this.hart.instret)
        this.nic.deliver(e.extra ?? Buffer.alloc(0))
      } else if (e.kind === EVENT.END && e.arg === 1) {
        // the recording was stopped by its host here: so is the replay
        r.next()
        this.stoppedByHost = true
        return
      } else if (e.kind === EVENT.END) {
        throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the log ends the run here, the guest goes on`, this.hart.instret)
      } else break // an input read: consumed by the instruction that makes it
    }
    if (wfi && !(this.hart.mip & this.hart.mie)) {
      const e = r.peek()
      if (!e) throw new ReplayError(`replay log ends at instruction ${this.hart.instret} while the guest waits for an interrupt`, this.hart.instret)
      if (e.instret > this.hart.instret && (e.kind === EVENT.IRQ || e.kind === EVENT.DISK || e.kind === EVENT.NET)) {
        throw new ReplayError(`replay diverged at instruction ${this.hart.instret}: the guest waits for an interrupt, the log has the next one at instruction ${e.instret}`, this.hart.instret)
      }
    }
  }

  /**
   * Stops the VM for good at the next slice boundary, live or replaying, and never lets a replay go
   * live (a fault-tolerant side that lost the VM's claim): the run ends 'stopped' with `why`.
   */
  halt(why: string): void {
    if (this.halted !== null) return
    this.halted = why
    this.hart.requestStop()
    this.wake?.()
    if (this.paused) this.resume()
  }

  /** SHA-256 of everything the guest can observe: the encoded guest state and memory (SPEC.md §VM state). */
  stateHash(): string {
    return hashState(this.guestState(), this.mem.bytes)
  }

  /** frames the guest has sent, and frames dropped for a full receive queue */
  get frames(): { out: number; dropped: number } {
    return { out: this.nic.r.framesOut, dropped: this.nic.framesDropped }
  }
}

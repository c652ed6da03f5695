import { createHash } from 'node:crypto'
import type { BlockDevice, ComparesAndWrites } from '../../disk-formats/block-device.js'
import { isStorageError } from '../../disk-formats/errors.js'
import * as C from './constants.js'
import { invalidField, invalidOpcode, SenseError, senseData, senseFor } from './sense.js'
import { PersistentReservations } from './persistent-reservations.js'
import { CopyManager } from './extended-copy.js'
import { BLOCK } from './limits.js'
import { naaDesignator } from './pages.js'
import { COMMANDS, commandFor, dataOutLength, type Command, type ScsiResult, type Task, type Unit } from './commands/index.js'

export interface LogicalUnitOptions {
  /** unit serial number (VPD 0x80) and the seed of the NAA identifier (VPD 0x83) */
  serial: string
  vendor?: string
  product?: string
  revision?: string
  /**
   * The LU's persistent reservations when they outlive this object: they survive I_T nexus loss
   * (SPC-4 5.13), so a target that closes the LU when its last session ends passes the same
   * ones to the next LogicalUnit of the disk.
   */
  reservations?: PersistentReservations
}

/** Shared for ordinary commands, exclusive for the table's exclusive ones (atomic against all others). */
class Gate {
  private readers = 0
  private writer = false
  private waiting: (() => void)[] = []
  private async acquire(exclusive: boolean): Promise<void> {
    while (this.writer || (exclusive && this.readers > 0)) await new Promise<void>((r) => this.waiting.push(r))
    if (exclusive) this.writer = true
    else this.readers++
  }
  private release(exclusive: boolean): void {
    if (exclusive) this.writer = false
    else this.readers--
    const w = this.waiting
    this.waiting = []
    for (const r of w) r()
  }
  async run<T>(exclusive: boolean, fn: () => Promise<T>): Promise<T> {
    await this.acquire(exclusive)
    try {
      return await fn()
    } finally {
      this.release(exclusive)
    }
  }
}

/**
 * SCSI block-command emulation of one logical unit over a BlockDevice (DESIGN §5), transport-free:
 * `execute(cdb, dataOut, initiator)` → status, data-in, sense. The command table (commands/) says
 * what each CDB is; this runs it: unit attentions, reservations, the gate, one decode, the row's
 * run. Storage errors are mapped to sense data by `senseFor`.
 */
export class LogicalUnit {
  private readonly gate = new Gate()
  private readonly tasks = new Set<Task>()
  private reservedBy: string | null = null
  /** I_T nexuses logged in to this LU (count of sessions) and their pending unit attentions, oldest first. */
  private readonly nexuses = new Map<string, { sessions: number; attentions: C.AscName[] }>()
  private readonly pr: PersistentReservations
  private readonly unit: Unit

  constructor(
    readonly dev: BlockDevice,
    readonly opts: LogicalUnitOptions,
  ) {
    const naa = naaDesignator(createHash('sha256').update(opts.serial).digest())
    this.pr = opts.reservations ?? new PersistentReservations()
    this.pr.notify = (nexus, asc) => this.attention(nexus, asc)
    const lu = this
    this.unit = {
      dev,
      pr: this.pr,
      copies: new CopyManager(dev, () => this.blocks, naa),
      ownCompareAndWrite: typeof (dev as Partial<ComparesAndWrites>).compareAndWrite === 'function',
      identity: { vendor: opts.vendor ?? 'TANDEM', product: opts.product ?? 'VIRTUAL-DISK', revision: opts.revision ?? '0001', serial: opts.serial, naa },
      commands: COMMANDS,
      get blocks() {
        return lu.blocks
      },
      get reservedBy() {
        return lu.reservedBy
      },
      set reservedBy(nexus) {
        lu.reservedBy = nexus
      },
      takeAttention: (nexus) => this.nexuses.get(nexus)?.attentions.shift(),
      abortTasks: (nexuses, self) => this.abortTasks(nexuses, self),
    }
  }

  /** A session of this I_T nexus logged in (unit attentions are kept per nexus). */
  nexusJoined(initiator: string): void {
    const n = this.nexuses.get(initiator)
    if (n) n.sessions++
    else this.nexuses.set(initiator, { sessions: 1, attentions: [] })
  }

  /** The I_T nexus went away (logout, connection loss): its RESERVE(6) reservation with it. */
  nexusLost(initiator: string): void {
    if (this.reservedBy === initiator) this.reservedBy = null
    const n = this.nexuses.get(initiator)
    if (n && --n.sessions <= 0) this.nexuses.delete(initiator)
  }

  /**
   * LUN RESET / target reset: RESERVE(6) reservations are cleared (SPC-2 5.5.1) and every I_T
   * nexus, the one that asked included, gets a unit attention (SAM-5 6.3.3 / 6.3.4).
   */
  reset(kind: 'lun' | 'target' = 'lun'): void {
    this.reservedBy = null
    const asc = kind === 'lun' ? 'BUS_DEVICE_RESET_FUNCTION_OCCURRED' : 'POWER_ON_RESET_OR_BUS_DEVICE_RESET'
    for (const n of this.nexuses.keys()) this.attention(n, asc)
  }

  /** Establish a unit attention for one nexus (a duplicate of a pending one is not queued twice). */
  attention(initiator: string, asc: C.AscName): void {
    const n = this.nexuses.get(initiator)
    if (n && !n.attentions.includes(asc)) n.attentions.push(asc)
  }

  get blocks(): number {
    return Math.floor(this.dev.size / BLOCK)
  }

  /**
   * `expected`: the bytes of data-out the transport carries (iSCSI's ExpectedDataTransferLength).
   * A WRITE whose transfer length is longer (an overflow, RFC 7143 §11.4.5) writes only the whole
   * blocks within it; the transport reports the residual.
   */
  async execute(cdb: Buffer, dataOut: Buffer | null, initiator: string, expected?: number): Promise<ScsiResult> {
    const task: Task = { nexus: initiator, aborted: false, running: null }
    this.tasks.add(task)
    try {
      if (expected !== undefined) {
        const need = dataOutLength(cdb)
        if (need?.shrink && expected < need.bytes) cdb = need.shrink(Math.floor(expected / BLOCK))
      }
      if (cdb.length < 6) throw invalidOpcode()
      const cmd = commandFor(cdb)
      // A pending unit attention ends any command but those that pass it, and is then cleared
      // (SAM-5 5.14, SPC-4 5.9).
      const ua = this.nexuses.get(initiator)?.attentions
      if (ua?.length && !cmd?.passesUnitAttention) {
        return { status: C.CHECK_CONDITION, sense: senseData(new SenseError(C.UNIT_ATTENTION, ua.shift()!)) }
      }
      if (this.reservedBy !== null && this.reservedBy !== initiator && !cmd?.reservationExempt) {
        return { status: C.RESERVATION_CONFLICT }
      }
      if (this.pr.conflicts(initiator, cmd?.access ?? 'other')) return { status: C.RESERVATION_CONFLICT }
      return await this.gate.run(cmd?.exclusive?.(this.unit) ?? false, () => {
        if (task.aborted) return Promise.resolve({ status: C.TASK_ABORTED })
        return (task.running = this.run(cmd, cdb, dataOut ?? Buffer.alloc(0), task))
      })
    } catch (e) {
      const s = e instanceof SenseError ? e : isStorageError(e) ? senseFor(e.code) : new SenseError(C.HARDWARE_ERROR, 'INTERNAL_TARGET_FAILURE')
      return { status: C.CHECK_CONDITION, sense: senseData(s) }
    } finally {
      this.tasks.delete(task)
    }
  }

  /** The CDB decoded once (read, then checked against the medium and the data-out), then run. */
  private async run(cmd: Command | undefined, cdb: Buffer, out: Buffer, task: Task): Promise<ScsiResult> {
    if (!cmd) throw invalidOpcode()
    if (cdb.length < cmd.cdbLength) throw invalidField(0)
    const f = cmd.fields(cdb)
    cmd.check?.(f, { blocks: this.blocks, dataOut: out.length })
    return cmd.run(this.unit, f, out, task)
  }

  /**
   * Aborts the task sets of `nexuses`, `self` (the PREEMPT AND ABORT) excepted. A task that does
   * not hold the gate yet answers TASK ABORTED (TAS=1) and has no effect; a running one cannot be
   * recalled (its write may be issued), so this waits for its end. Either way, once this resolves
   * no command of those nexuses admitted before it changes the medium any more.
   */
  private async abortTasks(nexuses: ReadonlySet<string>, self: Task): Promise<void> {
    const running: Promise<ScsiResult>[] = []
    for (const t of this.tasks) {
      if (t === self || !nexuses.has(t.nexus)) continue
      if (t.running) running.push(t.running)
      else t.aborted = true
    }
    await Promise.allSettled(running)
  }
}

import type { EventKind } from '../events.js'
import type { Hart } from '../hart.js'
import type { Memory } from '../memory.js'
import type { StateReader, StateWriter } from '../state-codec.js'

/**
 * A memory-mapped device of the VM (SPEC.md §Devices). Its registers are one field table, saved and
 * restored whole, so a register cannot be left out of the VM's state; its queues are saved beside.
 */
export interface VmDevice {
  /** the tag of its state section (4 characters) */
  readonly tag: string
  readonly base: number
  readonly size: number
  /** a guest load at `offset` into the device; `undefined`: an access fault */
  read(offset: number, size: number): number | undefined
  /** a guest store; `false`: an access fault */
  write(offset: number, size: number, value: number): boolean
  /** what the guest can observe (in the state hash) */
  save(w: StateWriter): void
  restore(r: StateReader): void
  /** host-side state the guest has not seen yet (queued frames, disk results): saved, not hashed */
  saveHost?(w: StateWriter): void
  restoreHost?(r: StateReader): void
}

/** What devices reach of the machine. */
export interface DeviceContext {
  readonly mem: Memory
  readonly hart: Hart
  /** true while following a replay log: outputs are produced but not sent */
  readonly replaying: boolean
  /** a value the outside world decides: live (and logged) or from the replay log */
  input(kind: EventKind, arg: number, live: () => number): number
  /** the guest's mtime (host time since the VM started, in timebase ticks) */
  mtime(): bigint
  /** the external interrupt line (MEI) is the OR of the devices' lines: look again */
  updateExternalIrq(): void
  /** an interrupt was raised (RunSummary.interrupts) */
  interruptRaised(): void
  /** a frame the guest sent while replaying (not transmitted) */
  replayedFrame?: (frame: Buffer) => void
}

/** a 32-bit register value as a field table stores it (unsigned) */
export const u32 = (v: number) => v >>> 0

import { defineStruct, type StructValue } from '../../../disk-formats/struct.js'
import type { StateReader, StateWriter } from '../state-codec.js'
import type { DeviceContext, VmDevice } from './device.js'

export const FinisherRegs = defineStruct({
  /** 1 once the guest has asked to end */
  exited: { offset: 0, type: 'u8' },
  code: { offset: 4, type: 'u32' },
})

/** qemu's sifive_test finisher: the guest ends its run with an exit code. */
export class Finisher implements VmDevice {
  readonly tag = 'FINI'
  readonly size = 4
  r: StructValue<typeof FinisherRegs> = { exited: 0, code: 0 }

  constructor(
    readonly base: number,
    private readonly ctx: DeviceContext,
  ) {}

  get exitCode(): number | null {
    return this.r.exited ? this.r.code : null
  }

  read(): number | undefined {
    return undefined
  }

  write(r: number, size: number, v: number): boolean {
    if (size !== 4 || r !== 0) return false
    const code = v & 0xffff
    if (code === 0x5555) this.r = { exited: 1, code: 0 }
    else if (code === 0x3333) this.r = { exited: 1, code: (v >>> 16) & 0xffff }
    else if (code === 0x7777) this.r = { exited: 1, code: 0 } // reset: ends the run
    else return true
    this.ctx.hart.requestStop()
    return true
  }

  save(w: StateWriter): void {
    w.struct(FinisherRegs, this.r)
  }

  restore(r: StateReader): void {
    this.r = r.struct(FinisherRegs)
  }
}

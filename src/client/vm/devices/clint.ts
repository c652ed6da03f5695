import { defineStruct, type StructValue } from '../../../disk-formats/struct.js'
import { EVENT } from '../events.js'
import { IRQ } from '../hart.js'
import type { StateReader, StateWriter } from '../state-codec.js'
import { u32, type DeviceContext, type VmDevice } from './device.js'

export const ClintRegs = defineStruct({
  mtimecmpLo: { offset: 0, type: 'u32' },
  mtimecmpHi: { offset: 4, type: 'u32' },
})

/** The CLINT: software interrupt (msip), the timer compare register and mtime (an input). */
export class Clint implements VmDevice {
  readonly tag = 'CLNT'
  readonly size = 0x10000
  r: StructValue<typeof ClintRegs> = { mtimecmpLo: 0xffffffff, mtimecmpHi: 0xffffffff }

  constructor(
    readonly base: number,
    private readonly ctx: DeviceContext,
  ) {}

  get mtimecmp(): bigint {
    return (BigInt(this.r.mtimecmpHi) << 32n) | BigInt(this.r.mtimecmpLo)
  }

  /** the timer can fire: a compare value has been set */
  get armed(): boolean {
    return this.r.mtimecmpLo !== 0xffffffff || this.r.mtimecmpHi !== 0xffffffff
  }

  read(r: number, size: number): number | undefined {
    if (size !== 4) return undefined
    if (r === 0) return this.ctx.hart.mip & (1 << IRQ.MSI) ? 1 : 0
    if (r === 0x4000) return this.r.mtimecmpLo | 0
    if (r === 0x4004) return this.r.mtimecmpHi | 0
    if (r === 0xbff8 || r === 0xbffc) return this.ctx.input(EVENT.TIME, r === 0xbffc ? 1 : 0, () => mtimeWord(this.ctx.mtime(), r === 0xbffc))
    return 0
  }

  write(r: number, size: number, v: number): boolean {
    if (size !== 4) return false
    const hart = this.ctx.hart
    if (r === 0) hart.setPending(IRQ.MSI, (v & 1) === 1) // deterministic: the guest's own store
    else if (r === 0x4000) this.r.mtimecmpLo = u32(v)
    else if (r === 0x4004) this.r.mtimecmpHi = u32(v)
    else return true
    hart.requestStop() // the host looks at the timer (or the new software interrupt) now
    return true
  }

  save(w: StateWriter): void {
    w.struct(ClintRegs, this.r)
  }

  restore(r: StateReader): void {
    this.r = r.struct(ClintRegs)
  }
}

/** one 32-bit half of a 64-bit time value */
export function mtimeWord(t: bigint, high: boolean): number {
  return Number(high ? (t >> 32n) & 0xffffffffn : t & 0xffffffffn)
}

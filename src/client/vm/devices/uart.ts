import { createHash } from 'node:crypto'
import { defineStruct, type StructValue } from '../../../disk-formats/struct.js'
import { StateError, type StateReader, type StateWriter } from '../state-codec.js'
import type { VmDevice } from './device.js'

/** console bytes hashed as one block of the chain */
const BLOCK = 4096
/** console bytes kept for display (`RunSummary.console`, the host's view); older ones are dropped */
export const CONSOLE_KEEP = 1 << 20

export const UartRegs = defineStruct({
  /** console bytes written since the VM started */
  total: { offset: 0, type: 'f64' },
  /** SHA-256 chained over the full blocks: chain = SHA-256(chain ‖ block) */
  chain: { offset: 8, type: { bytes: 32 } },
  /** bytes in the block not yet chained */
  blockLength: { offset: 40, type: 'u16' },
})

/**
 * An ns16550 UART, output only: each byte written to THR is a console byte. The console is kept
 * as a hash chain over 4 KiB blocks (so its hash survives a checkpoint in bounded space) and its
 * last CONSOLE_KEEP bytes.
 */
export class Uart implements VmDevice {
  readonly tag = 'UART'
  readonly size = 8
  r: StructValue<typeof UartRegs> = { total: 0, chain: Buffer.alloc(32), blockLength: 0 }
  private block = Buffer.alloc(BLOCK)
  private kept: Buffer[] = []
  private keptBytes = 0
  private current = Buffer.alloc(BLOCK)
  private currentLength = 0

  constructor(
    readonly base: number,
    private readonly onConsole?: (b: number) => void,
  ) {}

  read(r: number, size: number): number | undefined {
    if (size !== 1) return undefined
    return r === 5 ? 0x60 : 0 // LSR: transmitter empty, no input
  }

  write(r: number, size: number, v: number): boolean {
    if (size !== 1) return false
    if (r === 0) this.put(v & 0xff)
    return true
  }

  private put(b: number): void {
    this.r.total++
    this.block[this.r.blockLength++] = b
    if (this.r.blockLength === BLOCK) {
      this.r.chain = createHash('sha256').update(this.r.chain).update(this.block).digest()
      this.r.blockLength = 0
    }
    this.current[this.currentLength++] = b
    if (this.currentLength === BLOCK) this.keep()
    this.onConsole?.(b)
  }

  private keep(): void {
    if (!this.currentLength) return
    this.kept.push(Buffer.from(this.current.subarray(0, this.currentLength)))
    this.keptBytes += this.currentLength
    this.currentLength = 0
    while (this.keptBytes - this.kept[0].length >= CONSOLE_KEEP) this.keptBytes -= this.kept.shift()!.length
  }

  /** the console's last bytes (up to CONSOLE_KEEP and a block) */
  text(): string {
    return Buffer.concat([...this.kept, this.current.subarray(0, this.currentLength)]).toString('latin1')
  }

  /** SHA-256 of the chain and the unchained rest: equal for equal console output */
  hash(): string {
    return createHash('sha256').update(this.r.chain).update(this.block.subarray(0, this.r.blockLength)).digest('hex')
  }

  save(w: StateWriter): void {
    w.struct(UartRegs, this.r)
    w.bytes(this.block.subarray(0, this.r.blockLength))
  }

  restore(r: StateReader): void {
    this.r = r.struct(UartRegs)
    const b = r.bytes() ?? Buffer.alloc(0)
    if (b.length !== this.r.blockLength || b.length >= BLOCK) throw new StateError(`console block of ${b.length} bytes, ${this.r.blockLength} expected`)
    this.block = Buffer.alloc(BLOCK)
    b.copy(this.block)
  }

  saveHost(w: StateWriter): void {
    this.keep()
    w.bytes(Buffer.from(this.text(), 'latin1'))
  }

  restoreHost(r: StateReader): void {
    const t = r.bytes() ?? Buffer.alloc(0)
    this.kept = t.length ? [t.subarray(Math.max(0, t.length - CONSOLE_KEEP))] : []
    this.keptBytes = Math.min(t.length, CONSOLE_KEEP)
    this.currentLength = 0
  }
}

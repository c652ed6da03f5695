import { readFile, writeFile } from 'node:fs/promises'
import type { BlockDevice } from '../../disk-formats/index.js'
import { LogicalUnit } from '../../server/scsi/index.js'
import { EventRecorder, EventReplayer, ReplayError, encodeHeader } from './events.js'
import { Machine, type RunSummary } from './machine.js'
import { ANONYMOUS_VM_IQN, logicalUnitPath, nexusName, vmIsid, type ScsiPath } from './scsi-path.js'
import type { SwitchPort } from './net.js'
import { guestPath } from './guests.js'
import { CpuLimiter } from './cpu-limit.js'
import { createHash } from 'node:crypto'

export interface VmRunOptions {
  guest: string
  memory: number
  /** the disk as a block device (a file, an NBD export): an in-process LU under `identity` */
  disk?: BlockDevice
  /** or the disk as a SCSI path (an iSCSI session): the guest's CDBs go there unchanged */
  scsi?: ScsiPath
  /** the VM's iSCSI name, the I_T nexus of an in-process LU (default ANONYMOUS_VM_IQN) */
  identity?: string
  record?: string
  replay?: string
  maxInstructions?: number
  onConsole?: (b: number) => void
  /** the NIC's port on a virtual switch */
  net?: SwitchPort
  mac?: Buffer
  /** stops the run between slices (the log of a recording is still written) */
  signal?: AbortSignal
  /** the VM's share of one core in percent, 1 to 100 (default 100: no limit) */
  cpuLimit?: number
}

/** Runs a guest to its end; with `record`, writes the event log; with `replay`, follows one. */
export async function runVm(o: VmRunOptions): Promise<RunSummary> {
  const limiter = o.cpuLimit !== undefined ? new CpuLimiter(o.cpuLimit) : undefined
  const file = guestPath(o.guest)
  let image: Buffer
  try {
    image = await readFile(file)
  } catch (e) {
    throw new Error(`cannot read the guest image '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
  }
  const sha = createHash('sha256').update(image).digest()
  const record = o.record ? new EventRecorder(encodeHeader(o.memory, sha)) : undefined
  let replay: EventReplayer | undefined
  if (o.replay) {
    try {
      replay = await EventReplayer.open(o.replay, o.memory, sha)
    } catch (e) {
      if (e instanceof ReplayError) throw new Error(e.message)
      throw e
    }
  }
  if (o.disk && o.scsi) throw new Error('runVm: give the disk as a block device or as a SCSI path, not both')
  const iqn = o.identity ?? ANONYMOUS_VM_IQN
  const disk = o.scsi ?? (o.disk ? logicalUnitPath(new LogicalUnit(o.disk, { serial: 'tandem-vm-disk' }), nexusName(iqn, vmIsid(iqn))) : undefined)
  const m = new Machine({ image, imageName: file, memory: o.memory, disk, record, replay, maxInstructions: o.maxInstructions, onConsole: o.onConsole, net: o.net, mac: o.mac, signal: o.signal, limiter })
  const summary = await m.run()
  if (record && o.record) await writeFile(o.record, record.bytes())
  return summary
}

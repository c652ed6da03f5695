import { readFile, unlink } from 'node:fs/promises'
import type { BlockDevice } from '../../disk-formats/index.js'
import { LogicalUnit } from '../../server/scsi/index.js'
import { EventSource, FileEventSink, ReplayError, encodeHeader, followEventLog } from './events.js'
import { Machine, type RunSummary } from './machine.js'
import { ANONYMOUS_VM_IQN, logicalUnitPath, nexusName, vmIsid, type ScsiPath } from './scsi-path.js'
import type { SwitchPort } from './net.js'
import { guestPath } from './guests.js'
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
  /** the event log written while the VM runs (complete, with its close mark, however the run ends) */
  record?: string
  replay?: string
  /** `replay` is a log still being written: read it as it grows, to its END or close mark */
  follow?: boolean
  maxInstructions?: number
  onConsole?: (b: number) => void
  /** the NIC's port on a virtual switch */
  net?: SwitchPort
  mac?: Buffer
  /** stops the run between slices (the log of a recording is still written) */
  signal?: AbortSignal
}

/** Runs a guest to its end; with `record`, writes the event log; with `replay`, follows one. */
export async function runVm(o: VmRunOptions): Promise<RunSummary> {
  const file = guestPath(o.guest)
  let image: Buffer
  try {
    image = await readFile(file)
  } catch (e) {
    throw new Error(`cannot read the guest image '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`)
  }
  const sha = createHash('sha256').update(image).digest()
  let replay: EventSource | undefined
  if (o.follow && !o.replay) throw new Error('runVm: follow needs a replay log')
  if (o.replay) {
    try {
      replay = o.follow ? await followEventLog(o.replay, o.memory, sha, { signal: o.signal }) : await EventSource.open(o.replay, o.memory, sha)
    } catch (e) {
      if (e instanceof ReplayError) throw new Error(e.message)
      throw e
    }
  }
  if (o.disk && o.scsi) throw new Error('runVm: give the disk as a block device or as a SCSI path, not both')
  const iqn = o.identity ?? ANONYMOUS_VM_IQN
  const disk = o.scsi ?? (o.disk ? logicalUnitPath(new LogicalUnit(o.disk, { serial: 'tandem-vm-disk' }), nexusName(iqn, vmIsid(iqn))) : undefined)
  const record = o.record ? await FileEventSink.create(o.record, encodeHeader(o.memory, sha)) : undefined
  let m: Machine
  try {
    m = new Machine({ image, imageName: file, memory: o.memory, disk, record, replay, maxInstructions: o.maxInstructions, onConsole: o.onConsole, net: o.net, mac: o.mac, signal: o.signal })
  } catch (e) {
    // not a guest: no log, as before the run began
    if (record) {
      await record.close().catch(() => {})
      await unlink(record.file).catch(() => {})
    }
    throw e
  }
  let summary: RunSummary
  try {
    summary = await m.run()
  } catch (e) {
    await record?.close().catch(() => {})
    throw e
  }
  await record?.close()
  return summary
}

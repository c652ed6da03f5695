import { readFile, unlink } from 'node:fs/promises'
import type { BlockDevice } from '../../disk-formats/index.js'
import { LogicalUnit } from '../../server/scsi/index.js'
import { EventSource, FileEventSink, ReplayError, encodeHeader, followEventLog } from './events.js'
import type { Engine } from './engines.js'
import { Machine, type MachineOptions, type RunSummary } from './machine.js'
import type { FtReport, FtRole } from '../ft/run-ft.js'
import { ANONYMOUS_VM_IQN, logicalUnitPath, nexusName, vmIsid, type ScsiPath } from './scsi-path.js'
import type { SwitchPort } from './net.js'
import { guestForImage, guestPath } from './guests.js'
import { readCheckpoint } from './checkpoint-file.js'
import { CpuLimiter, checkCpuPercent } from './cpu-limit.js'
import { createHash } from 'node:crypto'
import { StorageError } from '../../disk-formats/errors.js'
import { restoreCheckpoint, takeCheckpoint, type DiskSwitch } from './checkpoint.js'
import type { VmControl } from './control.js'

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
  /** the hart's engine (default jit) */
  engine?: Engine
  onConsole?: (b: number) => void
  /** the NIC's port on a virtual switch */
  net?: SwitchPort
  mac?: Buffer
  /** stops the run between slices (the log of a recording is still written) */
  signal?: AbortSignal
  /** the VM's share of one core in percent, 1 to 100 (default 100: no limit) */
  cpuLimit?: number
  /** a control socket (SPEC.md §Control socket): status, pause, resume, checkpoint */
  control?: string
  /** its priority under a host's DoS guard: only reported in the control socket's status */
  priority?: number
  /** start from this checkpoint file instead of the guest's first instruction */
  restore?: string
  /**
   * How a checkpoint switches this VM's disk onto a new delta: from the checkpoint request (a
   * datastore disk names its server). None: a VM with a disk cannot be checkpointed.
   */
  diskSwitch?: (req: Record<string, unknown>) => DiskSwitch | undefined
  /**
   * A fault-tolerant pair's role (src/client/ft/run-ft.ts): made once the guest image is known,
   * with the VM's disk path; it shapes the machine's options and reports beside the summary.
   */
  ft?: (vm: { memoryBytes: number; imageSha: Buffer; disk?: ScsiPath; limiter?: CpuLimiter; signal?: AbortSignal }) => Promise<FtRole>
}

/** A run's summary; a pair's role adds its report. */
export type VmRunSummary = RunSummary & { ft?: FtReport }

/** Runs a guest to its end; with `record`, writes the event log; with `replay`, follows one. */
export async function runVm(o: VmRunOptions): Promise<VmRunSummary> {
  // the control socket's HTTP stack (express, pino: ~0.1 s of a `vm run`'s start-up CPU) loaded
  // only when asked for, and first: evaluating it blocks the event loop, which must not happen
  // once a pair's channel is up (a silent side past the loss timeout is taken for dead)
  const control0 = o.control ? await import('./control.js') : undefined
  // a primary always has a limiter (its lag control moves it), and so has a VM whose control socket may set one
  const limiter = o.cpuLimit !== undefined || o.ft || o.control ? new CpuLimiter(o.cpuLimit ?? 100) : undefined
  if (o.restore) {
    // the checkpoint says how much memory, and (by its image hash) which committed guest
    const c = await readCheckpoint(o.restore)
    await c.close()
    o = { ...o, memory: c.header.memoryBytes, guest: o.guest || guestForImage(c.header.imageSha256) }
  }
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
  if (o.ft && (o.record || o.replay || o.restore)) throw new Error('runVm: a fault-tolerant pair records and replays over its channel (no --record, --replay or --restore)')
  const role = o.ft ? await o.ft({ memoryBytes: o.memory, imageSha: sha, disk, limiter, signal: o.signal }) : undefined
  const record = o.record ? await FileEventSink.create(o.record, encodeHeader(o.memory, sha)) : undefined
  const base: MachineOptions = { image, imageName: file, memory: o.memory, disk, record, replay, maxInstructions: o.maxInstructions, engine: o.engine, onConsole: o.onConsole, net: o.net, mac: o.mac, signal: o.signal, limiter }
  const opts = role ? role.machineOptions(base) : base
  let m: Machine
  try {
    // a side that runs no VM while paired makes it when it goes live (or ends without one)
    const s = role?.standby ? await role.standby(opts) : undefined
    if (s && 'summary' in s) return { ...s.summary, ft: await role!.finish(s.summary) }
    // a backup started from a running primary's state (FT redundancy restore) is built from it
    m = s ? s.machine : o.restore ? await restoreCheckpoint(o.restore, opts) : role?.state ? Machine.fromState(role.state, opts, { loadImage: false }) : new Machine(opts)
  } catch (e) {
    // not a guest (or not a checkpoint): no log, as before the run began
    if (record) {
      await record.close().catch(() => {})
      await unlink(record.file).catch(() => {})
    }
    throw e
  }
  role?.attach(m)
  const control = o.control && control0 ? await control0.serveControl(o.control, vmControl(m, o, disk !== undefined, limiter, role)) : undefined
  let summary: VmRunSummary
  try {
    summary = await runUnder(m, role)
  } catch (e) {
    await record?.close().catch(() => {})
    throw e
  } finally {
    await control?.close()
  }
  await record?.close()
  return summary
}

/** Runs `m` under `role` (none: once): again while the role asks (FtRole.runAgain), then the role's finish. */
export async function runUnder(m: Machine, role: FtRole | undefined): Promise<VmRunSummary> {
  let summary = await m.run()
  if (!role) return summary
  while (role.runAgain && (await role.runAgain(summary))) {
    const before = summary
    const again = await m.run()
    // the figures of every run (instructions: the count at the end, from the state it ran again from)
    const seconds = before.seconds + again.seconds
    summary = { ...again, seconds, cpuSeconds: before.cpuSeconds + again.cpuSeconds, mips: again.instructions / seconds / 1e6 }
  }
  return { ...summary, ft: await role.finish(summary) }
}

/** What the control socket of a VM run by runVm does. */
function vmControl(m: Machine, o: VmRunOptions, hasDisk: boolean, limiter: CpuLimiter | undefined, role: FtRole | undefined): VmControl {
  let busy = false
  return {
    status: () => ({ guest: o.guest, memory: m.mem.size, instructions: m.hart.instret, paused: m.paused, checkpointing: busy, cpuPercent: limiter?.percent ?? 100, ...(o.priority !== undefined ? { priority: o.priority } : {}), ...(role ? { ft: role.status() } : {}) }),
    ...(role?.handover ? { handover: async () => ({ handedOver: true, ...(await role.handover!()) }) } : {}),
    ...(role?.restore ? { ftRestore: async (to: { host: string; port: number }) => ({ ...(await role.restore!(to)) }) } : {}),
    setCpuLimit(percent) {
      if (!limiter) throw new StorageError('Unsupported', 'this VM runs without a CPU limiter')
      limiter.setPercent(checkCpuPercent(percent, 'CPU limit'))
      return limiter.percent
    },
    pause: () => m.requestPause(),
    resume: () => m.resume(),
    async checkpoint(req) {
      const file = req.file
      if (typeof file !== 'string' || !file.startsWith('/')) throw new StorageError('InvalidArgument', '"file" must be an absolute path for the checkpoint file')
      const afterwards = req.afterwards ?? 'keep'
      if (afterwards !== 'keep' && afterwards !== 'copy-and-commit') throw new StorageError('InvalidArgument', '"afterwards" must be "keep" or "copy-and-commit"')
      const sw = o.diskSwitch?.(req)
      if (hasDisk && !sw) throw new StorageError('Unsupported', 'this VM\'s disk cannot be switched onto a new layer, so it cannot be checkpointed')
      if (busy) throw new StorageError('Busy', 'a checkpoint of this VM is being written')
      busy = true
      try {
        return { ...(await takeCheckpoint(m, { file, name: typeof req.name === 'string' ? req.name : undefined, disk: sw, afterwards })) }
      } finally {
        busy = false
      }
    },
  }
}

import { readCheckpoint, writeCheckpoint } from './checkpoint-file.js'
import { freeze } from './freeze.js'
import { Machine, type MachineOptions } from './machine.js'
import { decodeState, encodeState } from './state.js'
import type { Afterwards, DiskSwitch, SwitchedDisk } from '../checkpoint/disk-switch.js'

export type { Afterwards, DiskSwitch } from '../checkpoint/disk-switch.js'

export interface CheckpointOptions {
  file: string
  /** the VM's name (in the file) */
  name?: string
  disk?: DiskSwitch
  afterwards?: Afterwards
  /** the snapshot's name on the disk (default: from the checkpoint file's name) */
  snapshot?: string
  signal?: AbortSignal
}

export interface CheckpointSummary {
  file: string
  instructions: number
  /** VM stopped to VM running */
  stunMs: number
  /** the background write of device state and memory, from the resume */
  writeMs: number
  bytes: number
  /** MiB of guest memory per second of background write */
  writeMiBps: number
  /** pages the guest wrote before the writer reached them, copied first */
  cowPages: number
  zeroPages: number
  /** the checkpoint's disk: the frozen layer (keep) or the standalone copy (copy-and-commit) */
  disk: string | null
  afterwards: Afterwards | null
}

/** a snapshot name from a checkpoint file name (datastore names: letters, digits, . _ -) */
const snapshotName = (file: string) =>
  `ckpt-${(file.split('/').pop() ?? 'vm').replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 40)}-${Date.now().toString(36)}`

/**
 * A checkpoint of a running VM, in the seed's order (SPEC.md §Checkpoints): the disk's delta is
 * prepared while it runs; the stun (freeze) arms copy-on-write memory, saves device state and
 * switches the disk; the VM runs on while its state and the unmodified pages are written to `file`
 * in the background; then the disk is kept or copied out and committed back.
 */
export async function takeCheckpoint(m: Machine, o: CheckpointOptions): Promise<CheckpointSummary> {
  const snapshot = o.snapshot ?? snapshotName(o.file)
  const prepared = o.disk ? await o.disk.prepare(snapshot) : undefined
  let switched: SwitchedDisk | undefined
  let f
  try {
    f = await freeze(m, { switchDisk: prepared ? async () => void (switched = await prepared.commit()) : undefined })
  } catch (e) {
    if (!switched) await prepared?.abort().catch(() => undefined)
    throw e
  }
  const frozen = f
  let w
  try {
    w = await writeCheckpoint(o.file, { memoryBytes: m.mem.size, imageSha256: m.imageSha, instret: frozen.instret, name: o.name, state: encodeState(frozen.state), pages: frozen.pages, page: (i) => frozen.page(i) }, { signal: o.signal })
  } finally {
    frozen.release()
  }
  const afterwards = switched ? (o.afterwards ?? 'keep') : null
  // copy-and-commit: the standalone copy of the frozen layer goes beside the checkpoint file
  const disk = switched && afterwards ? (await switched.afterwards(afterwards, { copyTo: `${o.file.replace(/\.[^./]*$/, '')}-disk.vmdk` })).disk : null
  return {
    file: o.file,
    instructions: frozen.instret,
    stunMs: frozen.stunMs,
    writeMs: w.ms,
    bytes: w.bytes,
    writeMiBps: m.mem.size / (1 << 20) / (w.ms / 1000),
    cowPages: frozen.copied,
    zeroPages: w.zeroPages,
    disk,
    afterwards,
  }
}

/**
 * A machine restored from a checkpoint file: state and memory (zero pages untouched), ready to
 * run. `opts` gives the guest image (checked against the file) and the disk, network, log…
 */
export async function restoreCheckpoint(file: string, opts: Omit<MachineOptions, 'memory'>): Promise<Machine> {
  const c = await readCheckpoint(file)
  try {
    const state = decodeState(c.state, `'${file}'`)
    const m = Machine.fromState(state, { ...opts, memory: c.header.memoryBytes }, { loadImage: false })
    await c.loadMemory(m.mem.bytes, { zeroed: true })
    return m
  } finally {
    await c.close()
  }
}

import { readFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { Machine, encodeHeader, guestPath, logicalUnitPath, type RunSummary, type ScsiPath } from '../../src/client/vm/index.js'
import { EventSource } from '../../src/client/vm/events.js'
import { LogicalUnit } from '../../src/server/scsi/index.js'
import type { BlockDevice } from '../../src/disk-formats/index.js'
import { FtPrimary, type Ack } from '../../src/client/ft/primary.js'
import { FtBackup } from '../../src/client/ft/backup.js'
import { BackupDisk, type BackupReads } from '../../src/client/ft/backup-disk.js'
import { OutputGate } from '../../src/client/ft/output-gate.js'
import { LagMeter } from '../../src/client/ft/lag.js'
import { WriteAfterReadGuard } from '../../src/client/ft/write-after-read.js'
import { realTimers } from '../../src/client/vm/timers.js'
import type { SwitchPort } from '../../src/client/vm/net.js'

const NEXUS_P = 'iqn.2026-11.local.tandem:vm:pair,i,0x800000000001'
const NEXUS_B = 'iqn.2026-11.local.tandem:vm:pair,i,0x800000000002'

export interface PairOptions {
  guest: string
  memory?: number
  dev?: BlockDevice
  reads?: BackupReads
  /** the primary's and the backup's ports on a switch */
  net?: { primary: SwitchPort; backup: SwitchPort }
  mac?: Buffer
  /** what the link does with each message: deliver it now (default) or later */
  deliver?: (fn: () => void) => void
  maxInstructions?: number
}

/**
 * A fault-tolerant pair in one process: primary and backup machines joined by an in-memory link
 * (log one way, acks the other). `cut()` makes the link lose everything from then on (the primary's
 * host gone); `failover()` then takes the backup live.
 */
export function localPair(o: PairOptions) {
  const image = readFileSync(guestPath(o.guest))
  const memory = o.memory ?? 16 << 20
  const sha = createHash('sha256').update(image).digest()
  const reads = o.reads ?? 'disk'
  const deliver = o.deliver ?? ((fn) => fn())
  let cut = false
  const source = new EventSource('(primary)', { memoryBytes: memory, imageSha: sha })
  source.push(encodeHeader(memory, sha))
  const lu = o.dev ? new LogicalUnit(o.dev, { serial: 'pair' }) : undefined
  const primaryPath: ScsiPath | undefined = lu && logicalUnitPath(lu, NEXUS_P)
  const backupPath: ScsiPath | undefined = lu && logicalUnitPath(lu, NEXUS_B)
  const gate = new OutputGate(realTimers)
  const lag = new LagMeter()
  const war = reads === 'disk' && lu ? new WriteAfterReadGuard() : undefined
  const consoleP: number[] = []
  const consoleB: number[] = []
  const acks: Ack[] = []
  let primary!: FtPrimary
  const backup = new FtBackup({
    source,
    disk: backupPath && new BackupDisk(backupPath, reads),
    ack: (a) => {
      acks.push(a)
      if (!cut) deliver(() => !cut && primary.ack(a))
    },
    timers: realTimers,
  })
  primary = new FtPrimary({
    link: {
      log: (b) => {
        const copy = Buffer.from(b)
        if (!cut) deliver(() => !cut && backup.received(copy))
      },
      bufferedBytes: 0,
      drained: async () => {},
    },
    gate,
    lag,
    timers: realTimers,
    reads,
    war,
  })
  const pm = new Machine({ image, memory, maxInstructions: o.maxInstructions, ...primary.machineOptions({ disk: primaryPath, net: o.net?.primary, onConsole: (b) => consoleP.push(b) }), mac: o.mac })
  primary.attach(pm)
  const bm = new Machine({ image, memory, ...backup.machineOptions({ net: o.net?.backup, mac: o.mac, onConsole: (b) => consoleB.push(b) }) })
  backup.attach(bm)
  return {
    primary,
    backup,
    pm,
    bm,
    gate,
    lag,
    war,
    source,
    acks,
    console: { primary: consoleP, backup: consoleB },
    /** the link loses everything from now on */
    cut(): void {
      cut = true
      backup.peerLost()
      war?.lost()
    },
    /** the backup won the claim: replay to the horizon, then live */
    failover(): void {
      backup.failover()
    },
    /** the primary ended: the log is complete */
    finish(): void {
      void primary.sink.close().then(() => backup.received(Buffer.alloc(0)))
    },
  }
}

export type LocalPair = ReturnType<typeof localPair>
export type { RunSummary }

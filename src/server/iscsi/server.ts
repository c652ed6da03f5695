import type { Logger } from 'pino'
import type { BlockDevice } from '../../disk-formats/block-device.js'
import { IQN_PREFIX, LOCKSPACE_IQN, type Datastore, type ExportHandle } from '../datastore/index.js'
import type { Metrics } from '../metrics.js'
import { LogicalUnit, PersistentReservations } from '../scsi/index.js'
import { IscsiConnection } from './connection.js'
import type { Reinstatable, TargetDirectory } from './login.js'
import { TcpService, type ConnectionLimits } from '../net/tcp-service.js'
import { refuseLogin } from './refuse.js'

/** The datastore's lockspace as a LUN (its disk namesake, if any, is not reachable over iSCSI). */
export { LOCKSPACE_IQN }

interface Shared {
  lu: LogicalUnit
  handle: ExportHandle
  refs: number
  /** the disk and its creation time, for `reservations` */
  key: string
  reservations: PersistentReservations
}

/**
 * The iSCSI target (RFC 7143): one target per disk, `iqn.2026-11.local.tandem:<disk>`, LUN 0,
 * on the same datastore handle as the NBD export (a write through one is read through the other).
 * One LogicalUnit per disk is shared by every session, so COMPARE AND WRITE and reservations hold
 * across sessions. A non-empty access list hides the target from, and refuses the login of, any
 * other initiator. `lockspace`, when given, is the LUN of LOCKSPACE_IQN, open to every initiator.
 */
export class IscsiServer {
  private readonly tcp: TcpService
  private readonly units = new Map<string, Promise<Shared>>()
  /**
   * Persistent reservations of disks no session has open, by disk and creation time (a disk
   * deleted and made again starts with none). They survive the loss of every I_T nexus (SPC-4
   * 5.13), not a restart of the server (APTPL is not offered). Kept only while some exist.
   */
  private readonly reservations = new Map<string, PersistentReservations>()
  private readonly lockspace: LogicalUnit | null
  /** normal sessions by key (initiator name, ISID, target), for reinstatement */
  private readonly sessions = new Map<string, Reinstatable>()
  portal = ''

  constructor(
    private readonly ds: Datastore,
    log: Logger,
    metrics: Metrics,
    limits: ConnectionLimits = {},
    lockspace?: BlockDevice,
  ) {
    this.lockspace = lockspace ? new LogicalUnit(lockspace, { serial: 'tandem-lockspace', product: 'LOCKSPACE' }) : null
    const dir: TargetDirectory = {
      get portal() {
        return self.portal
      },
      visibleTargets: async (initiator) => {
        const out: string[] = this.lockspace ? [LOCKSPACE_IQN] : []
        for (const d of await ds.listDisks()) if (!(this.lockspace && IQN_PREFIX + d === LOCKSPACE_IQN) && (await this.allowed(d, initiator))) out.push(IQN_PREFIX + d)
        return out
      },
      findTarget: async (iqn, initiator) => {
        if (iqn === LOCKSPACE_IQN && this.lockspace) {
          const lu = this.lockspace
          return { name: 'lockspace', open: async () => ({ lu, release: async () => {} }) }
        }
        if (!iqn.startsWith(IQN_PREFIX)) return { refused: 'not-found' }
        const disk = iqn.slice(IQN_PREFIX.length)
        if (!(await ds.listDisks()).includes(disk)) return { refused: 'not-found' }
        if (!(await this.allowed(disk, initiator))) return { refused: 'not-authorized' }
        const chap = (await ds.readRecord(disk)).access.chap
        const open = async () => {
          const u = await this.unit(disk)
          const unnote = ds.noteClient(disk, `iscsi ${initiator}`)
          return { lu: u.lu, release: () => (unnote(), u.release()) }
        }
        return { name: disk, open, ...(chap ? { chap } : {}) }
      },
      reinstate: async (key, conn) => {
        const old = this.sessions.get(key)
        this.sessions.set(key, conn)
        if (old && old !== conn) await old.end()
      },
      ended: (key, conn) => {
        if (this.sessions.get(key) === conn) this.sessions.delete(key)
      },
    }
    const self = this
    // over the limit a Login Request hears "out of resources" (refuse.ts)
    this.tcp = new TcpService(
      (sock, established) => {
        metrics.connectionsTotal.inc({ protocol: 'iscsi' })
        return new IscsiConnection(sock, dir, log, metrics).run(established)
      },
      { name: 'iscsi', log, refuse: refuseLogin, ...limits },
    )
  }

  private async allowed(disk: string, initiator: string): Promise<boolean> {
    const r = await this.ds.readRecord(disk).catch(() => null)
    if (!r) return false
    return r.access.initiators.length === 0 || r.access.initiators.includes(initiator)
  }

  private async unit(disk: string): Promise<{ lu: LogicalUnit; release(): Promise<void> }> {
    let p = this.units.get(disk)
    if (!p) {
      p = (async () => {
        const key = `${disk}\0${(await this.ds.readRecord(disk)).createdAt}`
        const handle = await this.ds.openExport(disk)
        const reservations = this.reservations.get(key) ?? new PersistentReservations()
        this.reservations.delete(key)
        return { handle, refs: 0, key, reservations, lu: new LogicalUnit(handle.device, { serial: `tandem-${disk}`.slice(0, 32), reservations }) }
      })()
      this.units.set(disk, p)
      p.catch(() => this.units.delete(disk))
    }
    const s = await p
    s.refs++
    let released = false
    return {
      lu: s.lu,
      release: async () => {
        if (released) return
        released = true
        if (--s.refs === 0) {
          this.units.delete(disk)
          if (s.reservations.active) this.reservations.set(s.key, s.reservations)
          await s.handle.release()
        }
      },
    }
  }

  async listen(port: number, host: string): Promise<number> {
    const p = await this.tcp.listen(port, host)
    this.portal = `${host}:${p}`
    return p
  }

  /** See TcpService.close: established sessions get until `grace` resolves. */
  close(grace: Promise<void>): Promise<void> {
    return this.tcp.close(grace)
  }
}

import { createServer, type Server, type Socket } from 'node:net'
import type { Logger } from 'pino'
import type { Datastore, ExportHandle } from '../datastore/index.js'
import { IQN_PREFIX } from '../http/app.js'
import type { Metrics } from '../metrics.js'
import { LogicalUnit } from '../scsi/index.js'
import { IscsiConnection, type TargetDirectory } from './connection.js'

interface Shared {
  lu: LogicalUnit
  handle: ExportHandle
  refs: number
}

/**
 * The iSCSI target (RFC 7143): one target per disk, `iqn.2026-11.local.tandem:<disk>`, LUN 0,
 * on the same datastore handle as the NBD export (a write through one is read through the other).
 * One LogicalUnit per disk is shared by every session, so COMPARE AND WRITE and reservations hold
 * across sessions. A non-empty access list hides the target from, and refuses the login of, any
 * other initiator.
 */
export class IscsiServer {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()
  private readonly running = new Set<Promise<void>>()
  private readonly units = new Map<string, Promise<Shared>>()
  portal = ''

  constructor(
    private readonly ds: Datastore,
    log: Logger,
    metrics: Metrics,
  ) {
    const dir: TargetDirectory = {
      get portal() {
        return self.portal
      },
      visibleTargets: async (initiator) => {
        const out: string[] = []
        for (const d of await ds.listDisks()) if (await this.allowed(d, initiator)) out.push(IQN_PREFIX + d)
        return out
      },
      openTarget: async (iqn, initiator) => {
        if (!iqn.startsWith(IQN_PREFIX)) return { refused: 'not-found' }
        const disk = iqn.slice(IQN_PREFIX.length)
        if (!(await ds.listDisks()).includes(disk)) return { refused: 'not-found' }
        if (!(await this.allowed(disk, initiator))) return { refused: 'not-authorized' }
        return this.unit(disk)
      },
    }
    const self = this
    this.server = createServer((sock) => {
      this.sockets.add(sock)
      metrics.connectionsTotal.inc({ protocol: 'iscsi' })
      const run = new IscsiConnection(sock, dir, log, metrics).run().finally(() => {
        this.sockets.delete(sock)
        this.running.delete(run)
      })
      this.running.add(run)
    })
  }

  private async allowed(disk: string, initiator: string): Promise<boolean> {
    const r = await this.ds.readRecord(disk).catch(() => null)
    if (!r) return false
    return r.access.initiators.length === 0 || r.access.initiators.includes(initiator)
  }

  private async unit(disk: string): Promise<{ lu: LogicalUnit; release(): Promise<void> }> {
    let p = this.units.get(disk)
    if (!p) {
      p = this.ds.openExport(disk).then((handle) => ({ handle, refs: 0, lu: new LogicalUnit(handle.device, { serial: `tandem-${disk}`.slice(0, 32) }) }))
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
          await s.handle.release()
        }
      },
    }
  }

  listen(port: number, host: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(port, host, () => {
        this.server.off('error', reject)
        const a = this.server.address()
        const p = typeof a === 'object' && a ? a.port : port
        this.portal = `${host}:${p}`
        resolve(p)
      })
    })
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()))
    for (const s of this.sockets) s.end()
    await Promise.race([Promise.all(this.running), new Promise((r) => setTimeout(r, 2000).unref())])
    for (const s of this.sockets) s.destroy()
    await Promise.all(this.running)
  }
}

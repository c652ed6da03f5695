import express, { type NextFunction, type Request, type Response } from 'express'
import type { Logger } from 'pino'
import { isStorageError, StorageError } from '../../disk-formats/errors.js'
import { IQN_PREFIX, validIdentity, validKey, type Datastore, type DiskInfo, type PskKeys } from '../datastore/index.js'
import type { Metrics } from '../metrics.js'
import { jsonErrors, noRoute, wrongMethod } from './errors.js'
import { requireToken, type ApiAuth } from './auth.js'
import { openApi } from './openapi.js'
import { consoleRoutes } from './console.js'
import type { LockspaceView } from '../locks.js'
import { parseFaults, type FaultInjection } from '../fault-injection.js'
import { HostRegistry } from '../host-registry.js'
import { vmsOfHosts } from '../host-vms.js'
import type { HostView, LockView } from '../../disk-formats/lock-region/index.js'

export interface AppOptions {
  ds: Datastore
  /** the datastore's lockspace, when there is one */
  locks?: LockspaceView
  /** the NBD TLS-PSK keys, when the server has them */
  nbdKeys?: PskKeys
  log: Logger
  metrics: Metrics
  /** host and ports clients should use in the URIs a disk shows */
  advertise: { host: string; nbdPort: number; iscsiPort: number }
  /** where the hosts' REST APIs are (default: a new, empty registry) */
  hosts?: HostRegistry
  /** who may ask (auth.ts): the server's token, or AUTH_OFF_FOR_TESTS given explicitly */
  auth: ApiAuth
  /** run-time disk faults (`serve --fault-injection`); without them /api/v1/faults is 404 */
  faults?: FaultInjection
}

/** The lock a VM holds while it runs on a host (`tandem host`). */
export const VM_LOCK_PREFIX = 'vm/'

/**
 * A host of the lockspace as `GET /api/v1/hosts` shows it: the lockspace's view, its heartbeat in
 * one word, its REST API if it registered one, and the VMs whose `vm/<name>` lock it holds.
 */
export function hostView(h: HostView, locks: LockView[], hosts: HostRegistry) {
  const heartbeat = h.state === 'left' ? 'left' : h.state === 'damaged' || h.alive === null ? 'unknown' : h.alive ? 'live' : 'expired'
  const vms = locks.filter((l) => l.state === 'exclusive' && l.owner === h.name && l.name.startsWith(VM_LOCK_PREFIX)).map((l) => l.name.slice(VM_LOCK_PREFIX.length))
  return { ...h, heartbeat, api: hosts.get(h.name)?.api ?? null, vms }
}

function parseSize(v: unknown): number {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) return v
  if (typeof v === 'string') {
    const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?B)?$/.exec(v.trim())
    if (m) {
      const mult: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }
      const n = Math.ceil(Number(m[1]) * mult[m[2].toLowerCase()])
      if (Number.isSafeInteger(n) && n > 0) return n
    }
  }
  throw new StorageError('InvalidArgument', `invalid size ${JSON.stringify(v)}: a positive number of bytes, or a string like "64M" or "10G"`)
}

function body(req: Request): Record<string, unknown> {
  const b: unknown = req.body
  if (b === undefined) return {}
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw new StorageError('InvalidArgument', 'the request body must be a JSON object')
  return b as Record<string, unknown>
}

/** The REST API (DESIGN §7) and /metrics. Errors are `{"error":{"code","message"}}`. */
export function createApp(o: AppOptions): express.Express {
  const { ds, metrics } = o
  const app = express()
  app.disable('x-powered-by')
  // the console's files (GET/HEAD of one path segment) come before any check of who is asking:
  // the page must load to ask for the API token
  app.get(/^\/[^/]*$/, consoleRoutes())
  app.use(requireToken(o.auth))
  app.use(express.json({ limit: '64kb' }))
  const view = (d: DiskInfo) => ({
    ...d,
    nbd: `nbd://${o.advertise.host}:${o.advertise.nbdPort}/${d.name}`,
    iscsi: { iqn: `${IQN_PREFIX}${d.name}`, portal: `${o.advertise.host}:${o.advertise.iscsiPort}`, lun: 0 },
  })
  const hosts = o.hosts ?? new HostRegistry()
  const wrap =
    (fn: (req: Request, res: Response) => Promise<void>) =>
    (req: Request, res: Response, next: NextFunction) =>
      fn(req, res).catch(next)

  app.get('/api/v1/health', (_req, res) => {
    res.json({ status: 'ok', datastore: ds.dir })
  })
  app.get('/api/v1/openapi.json', (_req, res) => {
    res.json(openApi)
  })
  app.get(
    '/api/v1/disks',
    wrap(async (_req, res) => {
      const out = []
      for (const n of await ds.listDisks()) {
        // a disk deleted since the folder was listed is left out
        const d = await ds.describe(n).catch((e: unknown) => {
          if (isStorageError(e, 'NotFound')) return null
          throw e
        })
        if (d) out.push(view(d))
      }
      res.json({ disks: out })
    }),
  )
  app.post(
    '/api/v1/disks',
    wrap(async (req, res) => {
      const b = body(req)
      if (b.name === undefined) throw new StorageError('InvalidArgument', 'missing "name"')
      if (b.size === undefined) throw new StorageError('InvalidArgument', 'missing "size"')
      const d = await ds.createDisk(b.name as string, parseSize(b.size))
      res.status(201).location(`/api/v1/disks/${d.name}`).json(view(d))
    }),
  )
  app.get(
    '/api/v1/disks/:name',
    wrap(async (req, res) => {
      res.json(view(await ds.describe(req.params.name as string)))
    }),
  )
  app.delete(
    '/api/v1/disks/:name',
    wrap(async (req, res) => {
      await ds.deleteDisk(req.params.name as string)
      res.status(204).end()
    }),
  )
  app.post(
    '/api/v1/disks/:name/clones',
    wrap(async (req, res) => {
      const b = body(req)
      if (typeof b.name !== 'string') throw new StorageError('InvalidArgument', 'missing "name" (the new disk)')
      if (b.snapshot !== undefined && typeof b.snapshot !== 'string') throw new StorageError('InvalidArgument', '"snapshot" must be a snapshot name')
      if (b.linked !== undefined && typeof b.linked !== 'boolean') throw new StorageError('InvalidArgument', '"linked" must be true or false')
      const d = await ds.cloneDisk(req.params.name as string, b.name, { snapshot: b.snapshot as string | undefined, linked: b.linked !== false })
      res.status(201).location(`/api/v1/disks/${d.name}`).json(view(d))
    }),
  )
  app.post(
    '/api/v1/disks/:name/grow',
    wrap(async (req, res) => {
      const b = body(req)
      if (b.size === undefined) throw new StorageError('InvalidArgument', 'missing "size" (the new size)')
      res.json(view(await ds.growDisk(req.params.name as string, parseSize(b.size))))
    }),
  )
  app.get(
    '/api/v1/disks/:name/snapshots',
    wrap(async (req, res) => {
      const d = await ds.describe(req.params.name as string)
      res.json({ current: d.current, snapshots: d.snapshots })
    }),
  )
  app.post(
    '/api/v1/disks/:name/snapshots',
    wrap(async (req, res) => {
      const b = body(req)
      if (b.name === undefined) throw new StorageError('InvalidArgument', 'missing "name"')
      if (b.prepare !== undefined && typeof b.prepare !== 'boolean') throw new StorageError('InvalidArgument', '"prepare" must be true or false')
      if (b.description !== undefined && typeof b.description !== 'string') throw new StorageError('InvalidArgument', '"description" must be a string')
      const description = b.description as string | undefined
      if (b.prepare) {
        const p = await ds.prepareSnapshot(req.params.name as string, b.name as string, { description })
        res.status(201).json({ ...p, isCurrent: false })
        return
      }
      const s = await ds.createSnapshot(req.params.name as string, b.name as string, { description })
      res.status(201).location(`/api/v1/disks/${req.params.name}/snapshots/${s.name}`).json({ name: s.name, parent: s.parent, createdAt: s.createdAt, description: s.description ?? '', isCurrent: true, state: 'committed' })
    }),
  )
  app.post(
    '/api/v1/disks/:name/snapshots/:snap/commit',
    wrap(async (req, res) => {
      const s = await ds.commitSnapshot(req.params.name as string, req.params.snap as string)
      res.json({ name: s.name, parent: s.parent, createdAt: s.createdAt, description: s.description ?? '', isCurrent: true, state: 'committed' })
    }),
  )
  app.post(
    '/api/v1/disks/:name/snapshots/:snap/revert',
    wrap(async (req, res) => {
      const b = body(req)
      if (b.force !== undefined && typeof b.force !== 'boolean') throw new StorageError('InvalidArgument', '"force" must be true or false')
      await ds.revertSnapshot(req.params.name as string, req.params.snap as string, { force: b.force === true })
      const d = await ds.describe(req.params.name as string)
      res.json({ current: d.current, snapshots: d.snapshots })
    }),
  )
  app.get(
    '/api/v1/disks/:name/snapshots/:snap',
    wrap(async (req, res) => {
      res.json(await ds.describeSnapshot(req.params.name as string, req.params.snap as string))
    }),
  )
  app.delete(
    '/api/v1/disks/:name/snapshots/:snap',
    wrap(async (req, res) => {
      await ds.deleteSnapshot(req.params.name as string, req.params.snap as string)
      res.status(204).end()
    }),
  )
  app.put(
    '/api/v1/disks/:name/access',
    wrap(async (req, res) => {
      const b = body(req)
      const list = b.initiators
      if (!Array.isArray(list) || !list.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 223)) {
        throw new StorageError('InvalidArgument', '"initiators" must be an array of iSCSI names (strings up to 223 bytes)')
      }
      let chap: { user: string; secret: string; mutualUser?: string; mutualSecret?: string } | undefined
      if (b.chap !== undefined) {
        const c = b.chap as Record<string, unknown>
        if (typeof c !== 'object' || c === null || typeof c.user !== 'string' || typeof c.secret !== 'string' || c.secret.length < 12) {
          throw new StorageError('InvalidArgument', '"chap" needs "user" and "secret" (a secret of at least 12 characters, as RFC 7143 asks)')
        }
        chap = { user: c.user, secret: c.secret }
        if (c.mutualUser !== undefined || c.mutualSecret !== undefined) {
          if (typeof c.mutualUser !== 'string' || typeof c.mutualSecret !== 'string' || c.mutualSecret.length < 12) {
            throw new StorageError('InvalidArgument', 'mutual CHAP needs "mutualUser" and "mutualSecret" (at least 12 characters)')
          }
          chap.mutualUser = c.mutualUser
          chap.mutualSecret = c.mutualSecret
        }
      }
      await ds.setAccess(req.params.name as string, { initiators: list as string[], ...(chap ? { chap } : {}) })
      res.json((await ds.describe(req.params.name as string)).access)
    }),
  )
  const nbdKeys = () => {
    if (!o.nbdKeys) throw new StorageError('NotFound', 'this server has no NBD keys')
    return o.nbdKeys
  }
  // Keys are write-only: no response carries one.
  app.get('/api/v1/nbd/keys', (_req, res) => {
    res.json({ identities: nbdKeys().identities() })
  })
  app.put(
    '/api/v1/nbd/keys/:identity',
    wrap(async (req, res) => {
      const identity = validIdentity(req.params.identity)
      const key = validKey(body(req).key)
      const added = await nbdKeys().set(identity, key)
      res.status(added ? 201 : 200).json({ identity })
    }),
  )
  app.delete(
    '/api/v1/nbd/keys/:identity',
    wrap(async (req, res) => {
      await nbdKeys().delete(validIdentity(req.params.identity))
      res.status(204).end()
    }),
  )
  const lockView = async () => {
    if (!o.locks) throw new StorageError('NotFound', 'this server has no lockspace')
    return o.locks.view()
  }
  // A lockspace that cannot be read is 503 with the reason (jsonErrors) — never an empty list.
  app.get('/api/v1/lockspace', (_req, res) => {
    if (!o.locks) throw new StorageError('NotFound', 'this server has no lockspace')
    const iscsi = { iqn: `${IQN_PREFIX}lockspace`, portal: `${o.advertise.host}:${o.advertise.iscsiPort}`, lun: 0 }
    res.json({ host: o.locks.hostName, iscsi, uri: `iscsi://${iscsi.portal}/${iscsi.iqn}/${iscsi.lun}` })
  })
  app.get(
    '/api/v1/locks',
    wrap(async (_req, res) => {
      res.json({ locks: (await lockView()).locks })
    }),
  )
  app.get(
    '/api/v1/locks/:name',
    wrap(async (req, res) => {
      const l = (await lockView()).locks.find((x) => x.name === req.params.name)
      if (!l) throw new StorageError('NotFound', `no lock named '${req.params.name}'`)
      res.json(l)
    }),
  )
  app.get(
    '/api/v1/hosts',
    wrap(async (_req, res) => {
      const v = await lockView()
      res.json({ hosts: v.hosts.map((h) => hostView(h, v.locks, hosts)) })
    }),
  )
  app.get(
    '/api/v1/hosts/:name',
    wrap(async (req, res) => {
      const v = await lockView()
      const h = v.hosts.find((x) => x.name === req.params.name)
      if (!h) throw new StorageError('NotFound', `no host named '${req.params.name}' in the lockspace`)
      res.json(hostView(h, v.locks, hosts))
    }),
  )
  // the VMs of the live hosts, asked of their APIs (a hung host costs the request its timeout)
  app.get(
    '/api/v1/vms',
    wrap(async (_req, res) => {
      const v = await lockView()
      res.json(await vmsOfHosts(v.hosts.map((h) => hostView(h, v.locks, hosts)).filter((h) => h.heartbeat === 'live')))
    }),
  )
  app.put('/api/v1/hosts/:name', (req, res) => {
    res.json(hosts.register(req.params.name as string, body(req)))
  })
  const faults = () => {
    if (!o.faults) throw new StorageError('NotFound', 'fault injection is off: start tandem serve with --fault-injection')
    return o.faults
  }
  app.get('/api/v1/faults', (_req, res) => {
    res.json({ faults: faults().list() })
  })
  app.put('/api/v1/faults', (req, res) => {
    const f = faults()
    const list = parseFaults(body(req))
    f.set(list)
    o.log.warn({ faults: list }, 'disk faults set')
    res.json({ faults: f.list() })
  })
  app.get(
    '/metrics',
    wrap(async (_req, res) => {
      res.type(metrics.registry.contentType).send(await metrics.registry.metrics())
    }),
  )
  app.use(wrongMethod(app))
  app.use(noRoute)
  app.use(jsonErrors(o.log))
  return app
}

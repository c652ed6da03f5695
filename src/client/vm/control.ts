import express, { type NextFunction, type Request, type Response } from 'express'
import { createServer, type Server } from 'node:http'
import { connect } from 'node:net'
import { chmod, unlink } from 'node:fs/promises'
import pino from 'pino'
import { StorageError } from '../../disk-formats/errors.js'
import { jsonErrors, noRoute } from '../../server/http/errors.js'
import { parseHostPort } from '../ft/address.js'

/** What a running VM's control socket can do (SPEC.md §Control socket). */
export interface VmControl {
  status(): Record<string, unknown>
  /** stops the VM between slices: the instruction count there */
  pause(): Promise<number>
  resume(): void
  /** a checkpoint to `file`; the answer is its summary */
  checkpoint(req: Record<string, unknown>): Promise<Record<string, unknown>>
  /** a fault-tolerant primary: planned switchover to its backup (absent: not a pair's primary) */
  handover?(): Promise<Record<string, unknown>>
  /**
   * a fault-tolerant VM running alone: protect it again with the new backup waiting at `to` (absent:
   * not a pair's VM)
   */
  ftRestore?(to: { host: string; port: number }): Promise<Record<string, unknown>>
  /** sets the VM's CPU limit (whole percent of a core, 1 to 100; InvalidArgument otherwise): the limit now */
  setCpuLimit(percent: unknown): number
}

const wrap = (fn: (req: Request, res: Response) => Promise<void>) => (req: Request, res: Response, next: NextFunction) => fn(req, res).catch(next)

/** Is something listening on the Unix socket `path`. */
function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path)
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

/**
 * The control socket of a running VM (`tandem vm run --control PATH`): HTTP with JSON bodies on a
 * Unix socket (mode 0600), as the host agent and `tandem vm checkpoint --control PATH` reach it.
 * A stale socket file is replaced; one a live VM listens on is refused.
 */
export async function serveControl(path: string, ctl: VmControl): Promise<{ close(): Promise<void> }> {
  if (await listening(path)) throw new StorageError('Busy', `a VM already listens on the control socket '${path}'`)
  await unlink(path).catch(() => undefined)
  const app = express()
  app.disable('x-powered-by')
  app.use(express.json({ limit: '16kb' }))
  app.get('/api/v1/vm', (_req, res) => void res.json(ctl.status()))
  app.post('/api/v1/vm/pause', wrap(async (_req, res) => void res.json({ paused: true, instructions: await ctl.pause() })))
  app.post('/api/v1/vm/resume', (_req, res) => {
    ctl.resume()
    res.json({ paused: false })
  })
  app.post('/api/v1/vm/cpu-limit', (req, res) => void res.json({ cpuPercent: ctl.setCpuLimit((req.body as { percent?: unknown } | undefined)?.percent) }))
  app.post('/api/v1/vm/checkpoint', wrap(async (req, res) => void res.status(201).json(await ctl.checkpoint((req.body ?? {}) as Record<string, unknown>))))
  app.post(
    '/api/v1/vm/ft/handover',
    wrap(async (_req, res) => {
      if (!ctl.handover) throw new StorageError('InvalidArgument', 'this VM is not the primary of a fault-tolerant pair')
      res.json(await ctl.handover())
    }),
  )
  app.post(
    '/api/v1/vm/ft/restore',
    wrap(async (req, res) => {
      if (!ctl.ftRestore) throw new StorageError('InvalidArgument', 'this VM is not part of a fault-tolerant pair (vm run --ft-primary or --ft-backup)')
      res.json(await ctl.ftRestore(parseHostPort((req.body as { backup?: unknown } | undefined)?.backup, '"backup"')))
    }),
  )
  app.use(noRoute)
  app.use(jsonErrors(pino({ level: 'error' }, process.stderr)))
  const server: Server = createServer(app)
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new StorageError('IoError', `cannot listen on the control socket '${path}': ${(e as NodeJS.ErrnoException).code ?? e.message}`)))
    server.listen(path, () => resolve())
  })
  await chmod(path, 0o600)
  return {
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
      await unlink(path).catch(() => undefined)
    },
  }
}

import type { Express, NextFunction, Request, Response } from 'express'
import type { Logger } from 'pino'
import { isStorageError, type StorageErrorCode } from '../../disk-formats/errors.js'

/** The one mapping of storage errors to HTTP statuses. */
export function httpStatus(code: StorageErrorCode): number {
  switch (code) {
    case 'InvalidArgument':
    case 'OutOfRange':
      return 400
    case 'NotFound':
      return 404
    case 'Exists':
    case 'Busy':
    case 'ReadOnly':
      return 409
    case 'NoSpace':
      return 507
    case 'Unsupported':
      return 501
    case 'Corrupt':
    case 'BadMagic':
    case 'ChainMismatch':
    case 'IoError':
      return 500
  }
}

/**
 * An error marked `unavailable: true` (a StorageError subclass: the lockspace is unusable, a host
 * has no valid lease) is 503 with its message, whatever its code.
 */
const isUnavailable = (e: unknown): boolean => isStorageError(e) && (e as { unavailable?: unknown }).unavailable === true

/** A route that does not exist: 404 JSON. */
export function noRoute(req: Request, res: Response): void {
  res.status(404).json({ error: { code: 'NotFound', message: `no route for ${req.method} ${req.path}` } })
}

interface RouteLayer {
  match(path: string): boolean
  route?: { _methods(): string[] }
}

/**
 * A known path asked with a method it does not have: 405 JSON with `Allow` (put after every
 * route, before noRoute). The methods are the app's own routes', so the answer cannot drift.
 */
export function wrongMethod(app: Express) {
  return (req: Request, res: Response, next: NextFunction): void => {
    const stack = (app as unknown as { router: { stack: RouteLayer[] } }).router.stack
    const allowed = new Set<string>()
    for (const l of stack) if (l.route && l.match(req.path)) for (const m of l.route._methods()) allowed.add(m.toUpperCase())
    if (allowed.size === 0) return next()
    if (allowed.has('GET')) allowed.add('HEAD')
    const allow = [...allowed].sort().join(', ')
    res.status(405).set('allow', allow).json({ error: { code: 'MethodNotAllowed', message: `${req.method} is not allowed on ${req.path} (allowed: ${allow})` } })
  }
}

/**
 * The JSON error edge of an express app (tandem serve's REST API, a host's): `{"error":{"code",
 * "message"}}` with the status `httpStatus` gives, fields an error carries in `details` added to
 * the error object; a malformed body is 400; anything else 500 "internal error" (logged), never a
 * stack trace.
 */
export function jsonErrors(log: Logger) {
  return (err: unknown, _req: Request, res: Response, _next: NextFunction): void => {
    void _next
    if (isStorageError(err)) {
      const details = (err as { details?: Record<string, unknown> }).details ?? {}
      const code = isUnavailable(err) ? 'Unavailable' : err.code
      res.status(isUnavailable(err) ? 503 : httpStatus(err.code)).json({ error: { code, message: err.message, ...details } })
      return
    }
    const e = err as { type?: string; status?: number; message?: string }
    if (e?.type === 'entity.parse.failed' || e?.type === 'entity.too.large' || e?.status === 400 || e?.status === 413) {
      res.status(e.status ?? 400).json({ error: { code: 'InvalidArgument', message: `invalid request body: ${e.message}` } })
      return
    }
    log.error({ err }, 'http: unexpected error')
    res.status(500).json({ error: { code: 'IoError', message: 'internal error' } })
  }
}

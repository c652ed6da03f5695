import { randomBytes, timingSafeEqual } from 'node:crypto'
import { mkdir, open, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { NextFunction, Request, Response } from 'express'
import { StorageError, fromSystemError } from '../../disk-formats/errors.js'

/**
 * REST authentication of `tandem serve` (the one module that decides who may ask).
 *
 * Contract (for every client, the web console included):
 * - the token is sent as `Authorization: Bearer <token>`;
 * - a mutating request (any method but GET, HEAD, OPTIONS) needs it; with `everyRequest` (the
 *   server listens on an address other than loopback) every request does, except the paths
 *   `open(req)` lets through (e.g. the console's static files, which hold no data);
 * - a request that needs it and lacks it, or sends another, is answered 401
 *   `{"error":{"code":"Unauthorized","message"}}` with `WWW-Authenticate: Bearer realm="tandem"`.
 * `AUTH_OFF_FOR_TESTS` turns the check off: only in-process test servers pass it, explicitly.
 */
export type ApiAuth = { token: string; everyRequest: boolean } | typeof AUTH_OFF_FOR_TESTS

/** No authentication: an explicit choice of an in-process test server, never a default. */
export const AUTH_OFF_FOR_TESTS = 'off-for-tests' as const

/** The token file in a datastore: `<datastore>/.tandem/api-token`. */
export const API_TOKEN_FILE = join('.tandem', 'api-token')

const READ_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS'])

/** True for addresses only this machine can reach (the loopback interface). */
export function isLoopback(listen: string): boolean {
  const a = listen.trim().toLowerCase().replace(/^\[|\]$/g, '')
  return a === 'localhost' || a === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(a) || /^::ffff:127\./.test(a)
}

/**
 * Reads the token file, or creates it (32 random bytes as hex, mode 0600) when there is none.
 * A file others may read (any group/other permission bit) or an empty one is refused
 * (InvalidArgument naming it): a token anyone on the machine can read protects nothing.
 */
export async function loadOrCreateToken(file: string): Promise<string> {
  try {
    await mkdir(dirname(file), { recursive: true })
    const fh = await open(file, 'wx', 0o600)
    const token = randomBytes(32).toString('hex')
    try {
      await fh.writeFile(token + '\n')
      await fh.sync()
    } finally {
      await fh.close()
    }
    return token
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw fromSystemError(e, file, 'Could not create the API token file')
  }
  let st
  try {
    st = await stat(file)
  } catch (e) {
    throw fromSystemError(e, file, 'Could not read the API token file')
  }
  if ((st.mode & 0o077) !== 0) throw new StorageError('InvalidArgument', `the API token file '${file}' may be read by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`)
  const fh = await open(file, 'r').catch((e: unknown) => Promise.reject(fromSystemError(e, file, 'Could not read the API token file')))
  let token: string
  try {
    token = (await fh.readFile('utf8')).trim()
  } finally {
    await fh.close()
  }
  if (token.length < 16 || /\s/.test(token)) throw new StorageError('InvalidArgument', `the API token file '${file}' must hold one token of at least 16 characters`)
  return token
}

function sameToken(given: string, token: string): boolean {
  const a = Buffer.from(given)
  const b = Buffer.from(token)
  return a.length === b.length && timingSafeEqual(a, b)
}

/** The express middleware carrying out the contract above. */
export function requireToken(auth: ApiAuth, o: { open?: (req: Request) => boolean } = {}) {
  if (auth !== AUTH_OFF_FOR_TESTS && typeof auth?.token !== 'string') throw new TypeError('requireToken: a token, or AUTH_OFF_FOR_TESTS given explicitly')
  return (req: Request, res: Response, next: NextFunction): void => {
    if (auth === AUTH_OFF_FOR_TESTS) return next()
    const needed = auth.everyRequest ? !o.open?.(req) : !READ_METHODS.has(req.method)
    if (!needed) return next()
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.get('authorization') ?? '')
    if (m && sameToken(m[1], auth.token)) return next()
    const why = m ? 'the bearer token is not this server\'s' : 'this request needs the API token (Authorization: Bearer <token>; the token is in <datastore>/.tandem/api-token)'
    res.status(401).set('www-authenticate', 'Bearer realm="tandem"').json({ error: { code: 'Unauthorized', message: why } })
  }
}

import { readFile } from 'node:fs/promises'
import { request as httpRequest } from 'node:http'
import { join } from 'node:path'
import { StorageError, type StorageErrorCode } from '../../disk-formats/errors.js'

const CODES: ReadonlySet<string> = new Set<StorageErrorCode>(['OutOfRange', 'ReadOnly', 'NoSpace', 'Corrupt', 'BadMagic', 'Unsupported', 'InvalidArgument', 'NotFound', 'Exists', 'ChainMismatch', 'Busy', 'IoError'])

/**
 * An error answer of a Tandem REST API (`{"error":{"code","message",…}}`), as a StorageError of
 * the same code (IoError for a code it does not know, e.g. `Unavailable`); `status` is the HTTP
 * status, `details` the error object's other fields (e.g. `holder`).
 */
export class ApiError extends StorageError {
  constructor(
    code: StorageErrorCode,
    message: string,
    readonly status: number,
    readonly details: Record<string, unknown>,
  ) {
    super(code, message)
  }
}

/** StorageError's instanceof is a brand check every StorageError passes (and ApiError inherits it): test the mark. */
export const isApiError = (e: unknown): e is ApiError => e instanceof StorageError && typeof (e as { status?: unknown }).status === 'number'

/** A URL as given on the command line, without its trailing slash. */
export const baseUrl = (url: string): string => String(url).replace(/\/+$/, '')

/** `unix:/path/to.sock`: an API on a Unix socket (a VM's control socket) */
const UNIX = /^unix:(.+)$/

/** One HTTP exchange over a Unix socket (fetch has no Unix sockets in Node 20). */
function unixRequest(socketPath: string, method: string, path: string, body: string | undefined, timeoutMs: number): Promise<{ status: number; ok: boolean; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath, method, path, headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ok: (res.statusCode ?? 0) < 300, text: Buffer.concat(chunks).toString('utf8') }))
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })))
    req.on('error', reject)
    req.end(body)
  })
}

/** The token file of a datastore (as src/server/http/auth.ts names it). */
const TOKEN_FILE = join('.tandem', 'api-token')

/** Per API base, the token its datastore holds (null: none could be read). */
const found = new Map<string, Promise<string | null>>()

async function readToken(datastore: string): Promise<string | null> {
  try {
    return (await readFile(join(datastore, TOKEN_FILE), 'utf8')).trim() || null
  } catch {
    return null
  }
}

/**
 * The bearer token for `base`, looked for once a request was refused (401): TANDEM_API_TOKEN,
 * else the token file of the datastore in TANDEM_DATASTORE, else that of the datastore the
 * server names in its health answer (readable when the server runs on this machine as this
 * user, or shares the datastore with it).
 */
function discoverToken(base: string, timeoutMs: number): Promise<string | null> {
  let p = found.get(base)
  if (!p) {
    p = (async () => {
      const env = process.env.TANDEM_API_TOKEN?.trim()
      if (env) return env
      if (process.env.TANDEM_DATASTORE) {
        const t = await readToken(process.env.TANDEM_DATASTORE)
        if (t) return t
      }
      try {
        const r = await exchange(base, 'GET', '/api/v1/health', undefined, undefined, timeoutMs)
        const ds = (JSON.parse(r.text) as { datastore?: unknown }).datastore
        return typeof ds === 'string' ? await readToken(ds) : null
      } catch {
        return null
      }
    })()
    found.set(base, p)
  }
  return p
}

async function exchange(base: string, method: string, path: string, json: string | undefined, token: string | undefined, timeoutMs: number): Promise<{ status: number; ok: boolean; text: string }> {
  const unix = UNIX.exec(base)
  if (unix) return unixRequest(unix[1], method, path, json, timeoutMs)
  const headers: Record<string, string> = {}
  if (json !== undefined) headers['content-type'] = 'application/json'
  if (token !== undefined) headers.authorization = `Bearer ${token}`
  const res = await fetch(`${baseUrl(base)}${path}`, { method, headers, body: json, signal: AbortSignal.timeout(timeoutMs) })
  return { status: res.status, ok: res.ok, text: await res.text() }
}

/**
 * One JSON request to a Tandem REST API (`tandem serve`, `tandem host`, a VM's control socket as
 * `unix:PATH`). Resolves to the parsed body (null for 204); an error answer throws ApiError with
 * the API's own message; an API that cannot be reached throws IoError naming it. `token` is sent
 * as the bearer token; without one, a request refused 401 is sent again once with the token
 * discoverToken finds, if any.
 */
export async function requestJson<T>(base: string, method: string, path: string, body?: unknown, o: { timeoutMs?: number; token?: string } = {}): Promise<T> {
  const url = `${baseUrl(base)}${path}`
  const json = body === undefined ? undefined : JSON.stringify(body)
  const timeoutMs = o.timeoutMs ?? 30_000
  let res: { status: number; ok: boolean; text: string }
  try {
    const known = o.token ?? (await found.get(baseUrl(base))) ?? undefined
    res = await exchange(base, method, path, json, known, timeoutMs)
    if (res.status === 401 && o.token === undefined) {
      found.delete(baseUrl(base)) // a token found earlier may be another server's that had the same address
      const t = await discoverToken(baseUrl(base), timeoutMs)
      if (t !== null && t !== known) res = await exchange(base, method, path, json, t, timeoutMs)
    }
  } catch (e) {
    const why = (e as { cause?: { code?: string; message?: string } }).cause ?? (e as { code?: string; message?: string })
    throw new StorageError('IoError', `could not reach ${baseUrl(base)}: ${why?.code ?? why?.message ?? (e as Error).message}`)
  }
  const text = res.text
  let parsed: unknown = null
  try {
    parsed = text ? JSON.parse(text) : null
  } catch {
    /* not JSON: reported below when it matters */
  }
  if (!res.ok) {
    const err = (parsed as { error?: Record<string, unknown> } | null)?.error
    const code = typeof err?.code === 'string' && CODES.has(err.code) ? (err.code as StorageErrorCode) : 'IoError'
    let message = typeof err?.message === 'string' ? err.message : `${method} ${url} answered ${res.status}`
    if (res.status === 401) message += ' — give it in TANDEM_API_TOKEN (the server\'s <datastore>/.tandem/api-token)'
    const { code: _c, message: _m, ...details } = err ?? {}
    void _c, void _m
    throw new ApiError(code, message, res.status, details)
  }
  if (res.status !== 204 && parsed === null) throw new StorageError('IoError', `${method} ${url}: the answer is not JSON`)
  return parsed as T
}

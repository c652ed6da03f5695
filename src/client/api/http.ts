import { request as httpRequest } from 'node:http'
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

/**
 * One JSON request to a Tandem REST API (`tandem serve`, `tandem host`, a VM's control socket as
 * `unix:PATH`). Resolves to the parsed body (null for 204); an error answer throws ApiError with
 * the API's own message; an API that cannot be reached throws IoError naming it.
 */
export async function requestJson<T>(base: string, method: string, path: string, body?: unknown, o: { timeoutMs?: number } = {}): Promise<T> {
  const url = `${baseUrl(base)}${path}`
  const json = body === undefined ? undefined : JSON.stringify(body)
  let res: { status: number; ok: boolean; text(): Promise<string> | string }
  try {
    const unix = UNIX.exec(base)
    if (unix) {
      const r = await unixRequest(unix[1], method, path, json, o.timeoutMs ?? 30_000)
      res = { ...r, text: () => r.text }
    } else {
      res = await fetch(url, {
        method,
        headers: json === undefined ? {} : { 'content-type': 'application/json' },
        body: json,
        signal: AbortSignal.timeout(o.timeoutMs ?? 30_000),
      })
    }
  } catch (e) {
    const why = (e as { cause?: { code?: string; message?: string } }).cause ?? (e as { code?: string; message?: string })
    throw new StorageError('IoError', `could not reach ${baseUrl(base)}: ${why?.code ?? why?.message ?? (e as Error).message}`)
  }
  const text = await res.text()
  let parsed: unknown = null
  try {
    parsed = text ? JSON.parse(text) : null
  } catch {
    /* not JSON: reported below when it matters */
  }
  if (!res.ok) {
    const err = (parsed as { error?: Record<string, unknown> } | null)?.error
    const code = typeof err?.code === 'string' && CODES.has(err.code) ? (err.code as StorageErrorCode) : 'IoError'
    const message = typeof err?.message === 'string' ? err.message : `${method} ${url} answered ${res.status}`
    const { code: _c, message: _m, ...details } = err ?? {}
    void _c, void _m
    throw new ApiError(code, message, res.status, details)
  }
  if (res.status !== 204 && parsed === null) throw new StorageError('IoError', `${method} ${url}: the answer is not JSON`)
  return parsed as T
}

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

/**
 * One JSON request to a Tandem REST API (`tandem serve`, `tandem host`). Resolves to the parsed
 * body (null for 204); an error answer throws ApiError with the API's own message; an API that
 * cannot be reached throws IoError naming it.
 */
export async function requestJson<T>(base: string, method: string, path: string, body?: unknown, o: { timeoutMs?: number } = {}): Promise<T> {
  const url = `${baseUrl(base)}${path}`
  let res: Response
  try {
    res = await fetch(url, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(o.timeoutMs ?? 30_000),
    })
  } catch (e) {
    const why = (e as { cause?: { code?: string; message?: string } }).cause
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

import { StorageError } from '../../disk-formats/errors.js'

/** `HOST:PORT` (an IPv6 host in brackets), or InvalidArgument naming `what`. */
export function parseHostPort(v: unknown, what: string): { host: string; port: number } {
  const m = typeof v === 'string' ? /^(.+):(\d{1,5})$/.exec(v) : null
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new StorageError('InvalidArgument', `${what} must be HOST:PORT (e.g. 127.0.0.1:7700), not ${JSON.stringify(v)}`)
  return { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) }
}

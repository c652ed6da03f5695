import { StorageError } from '../../disk-formats/errors.js'

export interface UdpAddress {
  host: string
  port: number
}

/**
 * `udp:HOST:PORT` (or, with `bare`, also `HOST:PORT` and `PORT` on 127.0.0.1); an IPv6 host in
 * brackets. Anything else is an InvalidArgument naming the option.
 */
export function parseUdpAddress(spec: string, option: string, bare = false): UdpAddress {
  const m = /^(?:udp:)?(?:(\[[0-9a-f:.]+\]|[^:\s[\]]+):)?(\d{1,5})$/i.exec(spec)
  const explicit = spec.startsWith('udp:')
  const port = m ? Number(m[2]) : NaN
  if (!m || port > 65535 || (!bare && (!explicit || m[1] === undefined))) {
    throw new StorageError('InvalidArgument', `invalid ${option} '${spec}' (${bare ? 'HOST:PORT or PORT' : 'udp:HOST:PORT'}, e.g. ${bare ? '127.0.0.1:5555' : 'udp:127.0.0.1:5555'})`)
  }
  return { host: (m[1] ?? '127.0.0.1').replace(/^\[|\]$/g, ''), port }
}

/** `HOST:PORT`, with an IPv6 host in brackets. */
export function formatAddress(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}

/** 02:00:00:00:00:01 as a 6-byte buffer, or an InvalidArgument naming the option. */
export function parseMac(s: string, option: string): Buffer {
  if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(s)) throw new StorageError('InvalidArgument', `invalid ${option} '${s}' (six hex bytes, e.g. 02:00:00:00:00:01)`)
  return Buffer.from(s.split(':').map((x) => parseInt(x, 16)))
}

export function formatMac(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':')
}

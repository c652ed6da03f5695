import { StorageError } from '../../../disk-formats/errors.js'

/** An NBD URI (the NBD project's URI specification, doc/uri.md): nbd://HOST[:PORT]/EXPORT. */
export interface NbdUri {
  host: string
  port: number
  exportName: string
  /** nbds://: TLS-PSK with the key of `identity` (the URI's user, or tls-username) from `pskFile` (tls-psk-file) */
  tls?: { pskFile: string; identity?: string }
}

export const NBD_DEFAULT_PORT = 10809

/** True for a string that names an NBD export rather than a file. */
export function isNbdUri(s: string): boolean {
  return /^nbds?(\+tcp)?:\/\//i.test(s)
}

/**
 * Parses `nbd://HOST[:PORT][/EXPORT]` (the export name is the path without its leading slash,
 * percent-decoded; empty is the default export). `nbds://[USER@]HOST[:PORT]/EXPORT?tls-psk-file=FILE`
 * asks for TLS-PSK as libnbd spells it (the key of USER, or of `tls-username`, in psktool's
 * identity:hexkey file); certificates and Unix sockets are refused with a message saying so.
 */
export function parseNbdUri(s: string): NbdUri {
  let u: URL
  try {
    u = new URL(s)
  } catch {
    throw new StorageError('InvalidArgument', `'${s}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT)`)
  }
  const scheme = u.protocol.toLowerCase()
  const tls = scheme === 'nbds:' || scheme === 'nbds+tcp:'
  if (!tls && scheme !== 'nbd:' && scheme !== 'nbd+tcp:') throw new StorageError('InvalidArgument', `'${s}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT)`)
  if (!u.hostname) throw new StorageError('InvalidArgument', `'${s}': no host`)
  const port = u.port === '' ? NBD_DEFAULT_PORT : Number(u.port)
  let exportName: string
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''))
  } catch {
    throw new StorageError('InvalidArgument', `'${s}': the export name is not valid percent-encoding`)
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1')
  if (!tls) return { host, port, exportName }
  const pskFile = u.searchParams.get('tls-psk-file')
  if (!pskFile) throw new StorageError('Unsupported', `'${s}': nbds:// needs ?tls-psk-file=FILE (TLS-PSK; certificates are not supported)`)
  const identity = u.searchParams.get('tls-username') ?? (u.username ? decodeURIComponent(u.username) : undefined)
  return { host, port, exportName, tls: { pskFile, ...(identity ? { identity } : {}) } }
}

export function formatNbdUri(u: NbdUri): string {
  const host = u.host.includes(':') ? `[${u.host}]` : u.host
  if (!u.tls) return `nbd://${host}:${u.port}/${encodeURIComponent(u.exportName)}`
  const user = u.tls.identity ? `${encodeURIComponent(u.tls.identity)}@` : ''
  return `nbds://${user}${host}:${u.port}/${encodeURIComponent(u.exportName)}?tls-psk-file=${encodeURIComponent(u.tls.pskFile)}`
}

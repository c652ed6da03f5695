import { StorageError } from '../../../disk-formats/errors.js'

/** An NBD URI (the NBD project's URI specification, doc/uri.md): nbd://HOST[:PORT]/EXPORT. */
export interface NbdUri {
  host: string
  port: number
  exportName: string
}

export const NBD_DEFAULT_PORT = 10809

/** True for a string that names an NBD export rather than a file. */
export function isNbdUri(s: string): boolean {
  return /^nbds?(\+tcp)?:\/\//i.test(s)
}

/**
 * Parses `nbd://HOST[:PORT][/EXPORT]` (the export name is the path without its leading slash,
 * percent-decoded; empty is the default export). TLS (`nbds://`) and Unix sockets are refused with
 * a message saying so.
 */
export function parseNbdUri(s: string): NbdUri {
  let u: URL
  try {
    u = new URL(s)
  } catch {
    throw new StorageError('InvalidArgument', `'${s}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT)`)
  }
  const scheme = u.protocol.toLowerCase()
  if (scheme === 'nbds:' || scheme === 'nbds+tcp:') throw new StorageError('Unsupported', `'${s}': TLS (nbds://) is not supported by this client yet`)
  if (scheme !== 'nbd:' && scheme !== 'nbd+tcp:') throw new StorageError('InvalidArgument', `'${s}' is not an NBD URI (nbd://HOST[:PORT]/EXPORT)`)
  if (!u.hostname) throw new StorageError('InvalidArgument', `'${s}': no host`)
  const port = u.port === '' ? NBD_DEFAULT_PORT : Number(u.port)
  let exportName: string
  try {
    exportName = decodeURIComponent(u.pathname.replace(/^\//, ''))
  } catch {
    throw new StorageError('InvalidArgument', `'${s}': the export name is not valid percent-encoding`)
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1')
  return { host, port, exportName }
}

export function formatNbdUri(u: NbdUri): string {
  const host = u.host.includes(':') ? `[${u.host}]` : u.host
  return `nbd://${host}:${u.port}/${encodeURIComponent(u.exportName)}`
}

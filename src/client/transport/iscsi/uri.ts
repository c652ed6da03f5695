import { StorageError } from '../../../disk-formats/errors.js'

/**
 * An iSCSI URI as libiscsi and qemu write it:
 * `iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET-IQN/LUN`.
 */
export interface IscsiUri {
  host: string
  port: number
  target: string
  lun: number
  user?: string
  password?: string
}

export const ISCSI_DEFAULT_PORT = 3260

export function isIscsiUri(s: string): boolean {
  return /^iscsi:\/\//i.test(s)
}

export function parseIscsiUri(s: string): IscsiUri {
  const m = /^iscsi:\/\/(?:([^@/]*)@)?(\[[^\]]+\]|[^/:]+)(?::(\d+))?\/([^/]+)\/(\d+)$/i.exec(s)
  if (!m) throw new StorageError('InvalidArgument', `'${s}' is not an iSCSI URI (iscsi://[USER[%PASSWORD]@]HOST[:PORT]/TARGET-IQN/LUN)`)
  const [, cred, host, port, target, lun] = m
  const p = port === undefined ? ISCSI_DEFAULT_PORT : Number(port)
  if (p < 1 || p > 65535) throw new StorageError('InvalidArgument', `'${s}': port ${port} out of range`)
  const out: IscsiUri = { host: host.replace(/^\[(.*)\]$/, '$1'), port: p, target: decodeURIComponent(target), lun: Number(lun) }
  if (out.lun > 255) throw new StorageError('InvalidArgument', `'${s}': LUN ${lun} out of range (0 to 255)`)
  if (cred !== undefined) {
    const pct = cred.indexOf('%')
    out.user = decodeURIComponent(pct < 0 ? cred : cred.slice(0, pct))
    if (pct >= 0) out.password = decodeURIComponent(cred.slice(pct + 1))
  }
  return out
}

import { StorageError } from '../errors.js'

/** One extent line: `ACCESS SECTORS TYPE "FILENAME" [OFFSET]` (SPEC.md §2). */
export interface ExtentLine {
  access: 'RW' | 'RDONLY' | 'NOACCESS'
  sectors: number
  type: 'SPARSE' | 'FLAT' | 'ZERO' | 'VMFS' | 'VMFSSPARSE' | 'VMFSRDM' | 'VMFSRAW' | 'SESPARSE'
  file?: string
  offset?: number
}

export interface Descriptor {
  version: number
  /** content id, 32-bit */
  cid: number
  /** CID of the parent at the time the child was created or last synced; 0xffffffff = none */
  parentCid: number
  createType: string
  parentFileNameHint?: string
  extents: ExtentLine[]
  /** DDB entries in file order, without the `ddb.` prefix removed: e.g. ['ddb.adapterType', 'ide'] */
  ddb: [string, string][]
  /** other header keys (encoding, isNativeSnapshot…), kept in order */
  extra: [string, string][]
}

export const CID_NOPARENT = 0xffffffff

export const CREATE_TYPES = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
  'vmfs',
  'vmfsSparse',
  'seSparse',
] as const

const ACCESS = new Set(['RW', 'RDONLY', 'NOACCESS'])
const TYPES = new Set(['SPARSE', 'FLAT', 'ZERO', 'VMFS', 'VMFSSPARSE', 'VMFSRDM', 'VMFSRAW', 'SESPARSE'])
/** A descriptor is a few hundred bytes; anything beyond 1 MiB is not one (bounds the parse). */
export const MAX_DESCRIPTOR_BYTES = 1 << 20

/**
 * Is this text a VMDK descriptor? qemu's probe: after `#` comment lines and blank lines, the
 * first line is exactly `version=1|2|3`.
 */
export function looksLikeDescriptor(text: string): boolean {
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '')
    if (line.trim() === '' || line.startsWith('#')) continue
    return /^version=[123]$/.test(line)
  }
  return false
}

function unquote(v: string): string {
  const t = v.trim()
  return t.length >= 2 && t.startsWith('"') && t.endsWith('"') ? t.slice(1, -1) : t
}

export function parseDescriptor(text: string, file: string): Descriptor {
  const nul = text.indexOf('\0')
  if (nul >= 0) text = text.slice(0, nul)
  const bad = (lineNo: number, what: string) =>
    new StorageError('Corrupt', `'${file}': invalid descriptor, line ${lineNo}: ${what}`, file)
  const d: Partial<Descriptor> & { extents: ExtentLine[]; ddb: [string, string][]; extra: [string, string][] } = {
    extents: [],
    ddb: [],
    extra: [],
  }
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].replace(/\r$/, '').trim()
    const no = i + 1
    if (line === '' || line.startsWith('#')) continue
    const ext = /^(\S+)\s+(\d+)\s+(\S+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$/.exec(line)
    if (ext && ACCESS.has(ext[1])) {
      if (!TYPES.has(ext[3])) throw bad(no, `unknown extent type '${ext[3]}'`)
      const e: ExtentLine = { access: ext[1] as ExtentLine['access'], sectors: Number(ext[2]), type: ext[3] as ExtentLine['type'] }
      if (!Number.isSafeInteger(e.sectors)) throw bad(no, `extent size '${ext[2]}' is too large`)
      if (ext[4] !== undefined) e.file = ext[4]
      if (ext[5] !== undefined) e.offset = Number(ext[5])
      if (e.type !== 'ZERO' && e.file === undefined) throw bad(no, `extent '${line}' names no file`)
      if (e.type === 'FLAT' && e.offset === undefined) throw bad(no, `FLAT extent '${line}' has no offset`)
      // qemu: only FLAT takes an offset; a VMFS extent always starts at byte 0 of its file.
      if (e.type !== 'FLAT' && e.offset !== undefined) throw bad(no, `${e.type} extent '${line}' must not have an offset`)
      d.extents.push(e)
      continue
    }
    const eq = line.indexOf('=')
    if (eq <= 0) throw bad(no, `expected 'key=value' or an extent line, found '${line.slice(0, 80)}'`)
    const key = line.slice(0, eq).trim()
    const value = unquote(line.slice(eq + 1))
    if (key.startsWith('ddb.')) {
      d.ddb.push([key, value])
      continue
    }
    switch (key) {
      case 'version':
        d.version = Number(value)
        if (![1, 2, 3].includes(d.version)) throw bad(no, `unsupported descriptor version '${value}'`)
        break
      case 'CID':
      case 'parentCID': {
        if (!/^[0-9a-fA-F]{1,8}$/.test(value)) throw bad(no, `${key} '${value}' is not a 32-bit hex number`)
        const n = parseInt(value, 16)
        if (key === 'CID') d.cid = n
        else d.parentCid = n
        break
      }
      case 'createType':
        d.createType = value
        break
      case 'parentFileNameHint':
        d.parentFileNameHint = value
        break
      default:
        d.extra.push([key, value])
    }
  }
  if (d.version === undefined) throw new StorageError('Corrupt', `'${file}': invalid descriptor: no 'version=' line`, file)
  if (d.cid === undefined) throw new StorageError('Corrupt', `'${file}': invalid descriptor: no 'CID=' line`, file)
  if (d.createType === undefined) throw new StorageError('Corrupt', `'${file}': invalid descriptor: no 'createType=' line`, file)
  if (d.extents.length === 0) throw new StorageError('Corrupt', `'${file}': invalid descriptor: no extent lines`, file)
  d.parentCid ??= CID_NOPARENT
  return d as Descriptor
}

/** Serializes in qemu's template order, which keeps qemu's strstr-based parser happy. */
export function serializeDescriptor(d: Descriptor): string {
  const out: string[] = ['# Disk DescriptorFile', `version=${d.version}`]
  for (const [k, v] of d.extra) if (k === 'encoding') out.push(`${k}="${v}"`)
  out.push(`CID=${d.cid.toString(16).padStart(8, '0')}`)
  out.push(`parentCID=${d.parentCid.toString(16).padStart(8, '0')}`)
  for (const [k, v] of d.extra) if (k !== 'encoding') out.push(`${k}="${v}"`)
  out.push(`createType="${d.createType}"`)
  if (d.parentFileNameHint !== undefined) out.push(`parentFileNameHint="${d.parentFileNameHint}"`)
  out.push('', '# Extent description')
  for (const e of d.extents) {
    let line = `${e.access} ${e.sectors} ${e.type}`
    if (e.file !== undefined) line += ` "${e.file}"`
    if (e.offset !== undefined) line += ` ${e.offset}`
    out.push(line)
  }
  out.push('', '# The Disk Data Base', '#DDB', '')
  for (const [k, v] of d.ddb) out.push(`${k} = "${v}"`)
  return out.join('\n') + '\n'
}

/** A fresh content id: random, never CID_NOPARENT. */
export function newCid(): number {
  for (;;) {
    const c = Math.floor(Math.random() * 0x100000000)
    if (c !== CID_NOPARENT) return c
  }
}

export function ddbGet(d: Descriptor, key: string): string | undefined {
  return d.ddb.find(([k]) => k === key)?.[1]
}

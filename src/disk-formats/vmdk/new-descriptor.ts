import { CID_NOPARENT, newCid, type Descriptor, type ExtentLine } from './descriptor.js'

export const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const
export type Subformat = (typeof SUBFORMATS)[number]
export const ADAPTER_TYPES = ['ide', 'lsilogic', 'buslogic', 'legacyESX'] as const
export type AdapterType = (typeof ADAPTER_TYPES)[number]

export interface CreateOptions {
  size: number
  subformat?: Subformat
  adapterType?: AdapterType
  hwVersion?: string
  /** GTE 1 means "reads as zero" (header version 2, flags bit 2) */
  zeroedGrain?: boolean
  /** parent layer for a delta: its path, as the hint is resolved from the child's folder */
  parent?: { path: string; cid: number }
  /** grain size in sectors (default 128 = 64 KiB) */
  grainSectors?: number
  /** fail if the file exists */
  exclusive?: boolean
}

/** The descriptor of a new disk of `createType` over `extents` (a fresh CID; geometry from the size and adapter). */
export function baseDescriptor(o: CreateOptions, createType: string, extents: ExtentLine[]): Descriptor {
  const adapter = o.adapterType ?? 'ide'
  const heads = adapter === 'ide' ? 16 : 255
  const d: Descriptor = {
    version: 1,
    cid: newCid(),
    parentCid: o.parent ? o.parent.cid : CID_NOPARENT,
    createType,
    extents,
    ddb: [
      ['ddb.virtualHWVersion', o.hwVersion ?? '4'],
      ['ddb.geometry.cylinders', String(Math.floor(o.size / (63 * heads * 512)))],
      ['ddb.geometry.heads', String(heads)],
      ['ddb.geometry.sectors', '63'],
      ['ddb.adapterType', adapter],
      ['ddb.toolsVersion', '2147483647'],
    ],
    extra: [],
  }
  return d
}

import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import { LineCounter, parseDocument } from 'yaml'
import { StorageError } from '../../disk-formats/errors.js'
import { parseBounds } from '../net/dos-guard.js'
import { validate } from './json-schema.js'
import { SCENARIO_SCHEMA } from './schema.js'

export type At = number | [number, number]
export type Target = string
export type Workload =
  | { kind: 'kv'; vm: string; keys?: number; rate?: number; durationMs: number; window?: number }
  | { kind: 'lock'; lock: string; contenders?: number; holdMs?: number; durationMs: number }
  | { kind: 'fio'; disk: string; sizeMiB?: number; bs?: string; durationMs: number }
export type Fault =
  | { fault: 'kill'; atMs: At; target: Target }
  | { fault: 'stop'; atMs: At; target: Target; forMs: number }
  | { fault: 'partition'; atMs: At; node?: string; pair?: [string, string]; forMs: number }
  | { fault: 'link'; atMs: At; path: string; delayMs?: number; jitterMs?: number; loss?: number; forMs: number }
  | { fault: 'disk'; atMs: At; disk: string; mode: 'delay' | 'error' | 'stall'; ms?: number; op?: 'read' | 'write' | 'any'; forMs: number }
  | { fault: 'clock'; atMs: At; target: string; jumpMs: number }
  | { fault: 'flood'; atMs: At; target: string; pps?: number; size?: number; forMs: number }
export type Checker =
  | { kind: 'kv-acked'; vm: string; forgeAck?: boolean }
  | { kind: 'failover'; vm: string; withinMs: number }
  | { kind: 'single-holder'; lock: string; forgeHolder?: boolean }
  | { kind: 'takeover'; lock: string; withinMs: number }
  | { kind: 'fio-verify'; disk: string }
  | { kind: 'dos-suspended'; vm: string; withinMs?: number }
  | { kind: 'disks-clean' }

export interface VmSpec {
  name: string
  guest: 'kvstore' | 'disklog' | 'ticker' | 'diskio'
  host: string
  ft?: string
  disk?: string
  mac?: string
  backupReads?: 'disk' | 'log'
  priority?: number
}

export interface Scenario {
  name: string
  description?: string
  network?: 'auto' | 'loopback' | 'netns'
  lease?: { heartbeatMs?: number; leaseMs?: number; fenceMarginMs?: number }
  ftLossMs?: number
  server?: { faultInjection?: boolean; disks?: { name: string; size: string }[] }
  hosts: { name: string; address?: string; dosGuard?: 'off' | 'monitor' | 'on'; dosBounds?: string }[]
  vms?: VmSpec[]
  workloads: Workload[]
  timeline?: Fault[]
  checkers?: Checker[]
}

/**
 * A scenario as parsed JSON, checked against SCENARIO_SCHEMA and then for what a schema cannot
 * say (names that must refer to each other, reserved features): InvalidArgument listing each
 * problem with its path (`$.vms[0].host: no host 'h9' in $.hosts`).
 */
export function checkScenario(value: unknown, source = 'scenario'): Scenario {
  const errs = validate(SCENARIO_SCHEMA, value)
  if (errs.length === 0) errs.push(...crossCheck(value as Scenario))
  if (errs.length) throw new StorageError('InvalidArgument', `${source}: ${errs.length} problem${errs.length > 1 ? 's' : ''}:\n${errs.map((e) => `  ${e.path}: ${e.message}`).join('\n')}`)
  return value as Scenario
}

/**
 * Reads and checks a scenario file: YAML when its name ends in .yaml or .yml, JSON otherwise; then
 * the same checks (checkScenario). Text that does not parse is InvalidArgument naming the line and
 * column.
 */
export function loadScenario(file: string): Scenario {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new StorageError('NotFound', `cannot read scenario ${file}: ${(e as Error).message}`)
  }
  const ext = extname(file).toLowerCase()
  return checkScenario(ext === '.yaml' || ext === '.yml' ? parseYaml(text, file) : parseJson(text, file), file)
}

function parseJson(text: string, file: string): unknown {
  try {
    return JSON.parse(text)
  } catch (e) {
    throw new StorageError('InvalidArgument', `${file}: not JSON: ${(e as Error).message}`)
  }
}

/**
 * One YAML document (YAML 1.2 core schema: no custom tags, no timestamps, duplicate keys refused)
 * as plain data. Aliases expand to at most 100 nodes each (a small file cannot grow into a huge one).
 */
function parseYaml(text: string, file: string): unknown {
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, schema: 'core', merge: false })
  const [e] = [...doc.errors, ...doc.warnings]
  if (e) {
    const { line, col } = lines.linePos(e.pos[0])
    const message = e.code === 'MULTIPLE_DOCS' ? 'a scenario is one document (no second ---)' : e.message.split('\n')[0]
    throw new StorageError('InvalidArgument', `${file}: not YAML: line ${line}, column ${col}: ${message}`)
  }
  try {
    return doc.toJS({ maxAliasCount: 100 })
  } catch (e) {
    throw new StorageError('InvalidArgument', `${file}: not YAML: ${(e as Error).message.split('\n')[0]}`)
  }
}

function crossCheck(s: Scenario): { path: string; message: string }[] {
  const errs: { path: string; message: string }[] = []
  const hosts = new Set(s.hosts.map((h) => h.name))
  const disks = new Set((s.server?.disks ?? []).map((d) => d.name))
  const vms = new Map((s.vms ?? []).map((v) => [v.name, v]))
  const locks = new Set(s.workloads.flatMap((w) => (w.kind === 'lock' ? [w.lock] : [])))
  const dup = (list: string[], path: string) => list.forEach((n, i) => list.indexOf(n) !== i && errs.push({ path: `${path}[${i}].name`, message: `'${n}' named twice` }))
  dup(s.hosts.map((h) => h.name), '$.hosts')
  dup((s.vms ?? []).map((v) => v.name), '$.vms')
  s.hosts.forEach((h, i) => {
    if (h.dosBounds === undefined) return
    try {
      parseBounds(h.dosBounds, 'dosBounds')
    } catch (e) {
      errs.push({ path: `$.hosts[${i}].dosBounds`, message: (e as Error).message })
    }
  })
  s.hosts.forEach((h, i) => h.address !== undefined && errs.push({ path: `$.hosts[${i}].address`, message: 'real machines (a host given by address) are reserved in the format but not supported yet' }))
  const host = (n: string, path: string) => !hosts.has(n) && errs.push({ path, message: `no host '${n}' in $.hosts` })
  const vm = (n: string, path: string, guest?: string) => {
    const v = vms.get(n)
    if (!v) errs.push({ path, message: `no VM '${n}' in $.vms` })
    else if (guest && v.guest !== guest) errs.push({ path, message: `VM '${n}' runs ${v.guest}, not ${guest}` })
    return v
  }
  const disk = (n: string, path: string) => !disks.has(n) && errs.push({ path, message: `no disk '${n}' in $.server.disks` })
  ;(s.vms ?? []).forEach((v, i) => {
    host(v.host, `$.vms[${i}].host`)
    if (v.ft !== undefined) {
      host(v.ft, `$.vms[${i}].ft`)
      if (v.ft === v.host) errs.push({ path: `$.vms[${i}].ft`, message: 'a pair\'s backup must run on another host than its primary' })
    }
    if (v.disk !== undefined) disk(v.disk, `$.vms[${i}].disk`)
  })
  s.workloads.forEach((w, i) => {
    const p = `$.workloads[${i}]`
    if (w.kind === 'kv') vm(w.vm, `${p}.vm`, 'kvstore')
    if (w.kind === 'fio') disk(w.disk, `${p}.disk`)
  })
  ;(s.timeline ?? []).forEach((f, i) => {
    const p = `$.timeline[${i}]`
    if (Array.isArray(f.atMs) && f.atMs[0] > f.atMs[1]) errs.push({ path: `${p}.atMs`, message: `[min, max] with min ${f.atMs[0]} above max ${f.atMs[1]}` })
    if (f.fault === 'kill' || f.fault === 'stop') {
      const [kind, n, side] = f.target.split(':')
      if (kind === 'vm') {
        const v = vm(n, `${p}.target`)
        if (v && side && !v.ft) errs.push({ path: `${p}.target`, message: `VM '${n}' is not a pair: no ${side} side` })
      }
      if (kind === 'host') host(n, `${p}.target`)
      if (kind === 'lock-holder' && locks.size === 0) errs.push({ path: `${p}.target`, message: 'no lock workload: no holder' })
    }
    if (f.fault === 'partition') {
      if ((f.node === undefined) === (f.pair === undefined)) errs.push({ path: p, message: 'give node or pair (one of them)' })
      if (f.node !== undefined && f.node !== 'server') host(f.node, `${p}.node`)
      f.pair?.forEach((n, j) => n !== 'server' && host(n, `${p}.pair[${j}]`))
      if (f.pair && f.pair[0] === f.pair[1]) errs.push({ path: `${p}.pair`, message: 'a pair of two different nodes' })
    }
    if (f.fault === 'link') {
      if (f.path.startsWith('storage:')) {
        host(f.path.slice(8), `${p}.path`)
        if (f.loss) errs.push({ path: `${p}.loss`, message: 'no loss on a TCP path (storage:HOST): a stream cannot lose bytes; use a partition' })
      }
    }
    if (f.fault === 'disk') {
      disk(f.disk, `${p}.disk`)
      if (!s.server?.faultInjection) errs.push({ path: `${p}`, message: 'disk faults need $.server.faultInjection: true' })
    }
    if (f.fault === 'clock') host(f.target.slice(5), `${p}.target`)
    if (f.fault === 'flood') {
      const v = vm(f.target.slice(3), `${p}.target`)
      if (v?.ft) errs.push({ path: `${p}.target`, message: `VM '${v.name}' is a pair: the DoS guard meters VMs alone` })
    }
  })
  ;(s.checkers ?? []).forEach((c, i) => {
    const p = `$.checkers[${i}]`
    if (c.kind === 'kv-acked' && vm(c.vm, `${p}.vm`, 'kvstore') && !s.workloads.some((w) => w.kind === 'kv' && w.vm === c.vm)) errs.push({ path: `${p}.vm`, message: `no kv workload on '${c.vm}'` })
    if (c.kind === 'failover' && vm(c.vm, `${p}.vm`) && !vms.get(c.vm)!.ft) errs.push({ path: `${p}.vm`, message: `VM '${c.vm}' is not a pair` })
    if ((c.kind === 'single-holder' || c.kind === 'takeover') && !locks.has(c.lock)) errs.push({ path: `${p}.lock`, message: `no lock workload on '${c.lock}'` })
    if (c.kind === 'dos-suspended' && vm(c.vm, `${p}.vm`)) {
      if (!(s.timeline ?? []).some((f) => f.fault === 'flood' && f.target === `vm:${c.vm}`)) errs.push({ path: `${p}.vm`, message: `no flood at '${c.vm}' in $.timeline` })
      const h = s.hosts.find((x) => x.name === vms.get(c.vm)!.host)
      if (h && h.dosGuard !== 'on') errs.push({ path: `${p}.vm`, message: `VM '${c.vm}' runs on '${h.name}', whose dosGuard is ${h.dosGuard ?? 'off'}, not on: nothing suspends it` })
    }
    if (c.kind === 'fio-verify' && !s.workloads.some((w) => w.kind === 'fio' && w.disk === c.disk)) errs.push({ path: `${p}.disk`, message: `no fio workload on '${c.disk}'` })
  })
  return errs
}

import { appendFileSync, existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { readAckLog } from '../kv/ack-log.js'
import { requestJson } from '../api/http.js'
import type { DosEvent } from '../net/dos-guard.js'
import { runCommand } from './net.js'
import type { Cluster } from './cluster.js'
import type { FaultRun } from './faults.js'
import { readHolders, uptimeMs, type HolderLine } from './holders.js'
import type { Checker } from './scenario.js'
import type { Workloads } from './workloads.js'

export interface Verdict {
  name: string
  ok: boolean
  detail: string
  /** a measured time, when the checker has one (failover, takeover) */
  ms?: number
}

/**
 * Never two holders, from the holders' own lines in the order they were appended: each
 * generation's lines form one unbroken run, generations only grow, and a generation has one host.
 * Returns the first violation, or null.
 */
export function twoHolders(lines: HolderLine[]): string | null {
  const done = new Set<number>()
  const owner = new Map<number, string>()
  let cur: HolderLine | null = null
  for (const [i, l] of lines.entries()) {
    const o = owner.get(l.generation)
    if (o !== undefined && o !== l.host) return `line ${i + 1}: generation ${l.generation} written by ${l.host} and by ${o}`
    owner.set(l.generation, l.host)
    if (!cur || l.generation === cur.generation) {
      cur = l
      continue
    }
    if (done.has(l.generation) || l.generation < cur.generation) return `line ${i + 1}: ${l.host} (generation ${l.generation}) wrote after ${cur.host} took the lock at generation ${cur.generation}: two holders`
    done.add(cur.generation)
    cur = l
  }
  return null
}

export interface CheckContext {
  cluster: Cluster
  workloads: Workloads
  faults: FaultRun
  /** per pair: ms after the start when its backup was seen live */
  liveAt: Map<string, number>
}

/** The checkers that judge a running cluster (every one but disks-clean, which needs it stopped). */
export async function checkLive(ch: Checker, x: CheckContext): Promise<Verdict> {
  const c = x.cluster
  switch (ch.kind) {
    case 'kv-acked': {
      const k = x.workloads.kv.find((w) => w.vm === ch.vm)!
      const load = await k.summary
      const name = `kv-acked ${ch.vm}`
      if (ch.forgeAck) {
        // test input: an acknowledgement the VM never gave, for a sequence above every one sent
        const max = existsSync(k.log) ? readAckLog(k.log).maxSeq : 0
        appendFileSync(k.log, JSON.stringify({ key: 'k0', value: `k0@${max + 1_000_000}`, seq: max + 1_000_000, t: Date.now() }) + '\n')
      }
      const acked = existsSync(k.log) ? readAckLog(k.log).records.length : 0
      if (acked === 0) return { name, ok: false, detail: `kv load acknowledged nothing (exit ${load.code}): ${load.stderr.trim().slice(-300)}` }
      const vm = c.vms.get(ch.vm)!
      const r = await runCommand(c.tandem[0], [...c.tandem.slice(1), 'kv', 'check', '--switch', c.switchUrl, '--vm-mac', vm.mac, '--log', k.log, '--timeout', '20', '--json'], 120_000)
      let s: { keys?: number; exact?: number; newer?: number } = {}
      try {
        s = JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}')
      } catch {
        /* no summary */
      }
      const loadNote = `kv load exit ${load.code}${load.json ? `, ${load.json.acked ?? acked} acked, rtt p99 ${(load.json.rttMs as { p99?: number } | undefined)?.p99 ?? '?'} ms` : ''}`
      if (r.status !== 0) return { name, ok: false, detail: `kv check exit ${r.status}: ${r.stderr.trim().slice(0, 600)} (${loadNote})` }
      if (load.code !== 0) return { name, ok: false, detail: `kv check passed, but ${loadNote}: ${load.stderr.trim().slice(-300)}` }
      return { name, ok: true, detail: `${acked} acknowledged SETs; ${s.keys ?? '?'} keys hold their last acknowledged value (${s.exact ?? '?'} exact, ${s.newer ?? '?'} newer) (${loadNote})` }
    }
    case 'failover': {
      const name = `failover ${ch.vm}`
      const lost = x.faults.primaryLost.get(ch.vm)
      if (lost === undefined) return { name, ok: false, detail: 'no fault of the timeline took the primary: nothing to fail over' }
      const live = x.liveAt.get(ch.vm)
      if (live === undefined) return { name, ok: false, detail: `the backup was not seen live (fault at ${lost} ms)` }
      const ms = live - lost
      if (ms < 0) return { name, ok: false, ms, detail: `the backup was live at ${live} ms, before the fault at ${lost} ms: the pair split by itself` }
      return { name, ok: ms <= ch.withinMs, ms, detail: `backup live ${ms} ms after the fault at ${lost} ms (bound ${ch.withinMs} ms; seen by polling every 50 ms)` }
    }
    case 'single-holder': {
      const l = x.workloads.lock.find((w) => w.lock === ch.lock)!
      if (ch.forgeHolder) {
        const first = readHolders(l.records)[0]
        if (first) appendFileSync(l.records, `${first.host} ${first.generation} ${Date.now()} ${uptimeMs()}\n`)
      }
      const lines = readHolders(l.records)
      const gens = new Set(lines.map((h) => h.generation)).size
      const name = `single-holder ${ch.lock}`
      if (gens < 2) return { name, ok: false, detail: `only ${gens} holding(s) recorded: the lock never changed hands` }
      const bad = twoHolders(lines)
      return { name, ok: bad === null, detail: bad ?? `${lines.length} lines of ${gens} holdings by ${new Set(lines.map((h) => h.host)).size} contenders; one holder at a time` }
    }
    case 'takeover': {
      const name = `takeover ${ch.lock}`
      const l = x.workloads.lock.find((w) => w.lock === ch.lock)!
      const lost = x.faults.holderLost.get(ch.lock)
      if (lost === undefined) return { name, ok: false, detail: 'no fault of the timeline hit the holder' }
      const lines = readHolders(l.records)
      // on the machine's monotonic clock: a host's clock jump moves the lines' wall times, not this
      const before = [...lines].reverse().find((h) => h.mono <= lost)
      const next = lines.find((h) => h.mono > lost && h.generation > (before?.generation ?? -1))
      if (!next) return { name, ok: false, detail: `nobody took the lock after its holder was hit` }
      const ms = next.mono - lost
      return { name, ok: ms <= ch.withinMs, ms, detail: `${next.host} holds it (generation ${next.generation}) ${ms} ms after ${before?.host ?? 'the holder'} (generation ${before?.generation ?? '?'}) was hit (bound ${ch.withinMs} ms)` }
    }
    case 'dos-suspended': {
      const name = `dos-suspended ${ch.vm}`
      const flood = x.faults.floods.get(ch.vm)
      if (!flood || flood.startedAt === null || flood.endedAt === null) return { name, ok: false, detail: `the flood did not run: ${flood?.error ?? 'no flood fault was applied'}` }
      const host = c.vms.get(ch.vm)!.primary
      const { events } = await requestJson<{ events: DosEvent[] }>(host.url, 'GET', '/api/v1/dos/events')
      const mine = events.filter((e) => e.vm === ch.vm && e.at >= flood.startedAt! - 50)
      const detected = mine.find((e) => e.kind === 'detected')
      const suspended = mine.find((e) => e.kind === 'suspended')
      const resumed = mine.find((e) => e.kind === 'resumed' && e.at >= flood.endedAt!)
      const others = events.filter((e) => e.vm !== ch.vm && e.kind === 'suspended').map((e) => e.vm)
      const sent = `${flood.frames} frames at ${Math.round(flood.pps)}/s`
      if (!detected || !suspended) return { name, ok: false, detail: `the guard on ${host.name} did not ${detected ? 'suspend' : 'detect'} the flood at ${ch.vm} (${sent}; events: ${events.map((e) => `${e.vm} ${e.kind}`).join(', ') || 'none'})` }
      const ms = Math.round(detected.at - flood.startedAt)
      const notes = [`detected ${ms} ms after the flood's first frame${ch.withinMs ? ` (bound ${ch.withinMs} ms)` : ''} (${detected.reason ?? ''})`, `suspended`]
      if (!resumed) return { name, ok: false, ms, detail: `${notes.join(', ')}, but not resumed after the flood ended (${sent})` }
      notes.push(`resumed ${Math.round(resumed.at - flood.endedAt)} ms after its last frame`)
      if (others.length) return { name, ok: false, ms, detail: `${notes.join(', ')}; but other VMs were suspended too: ${[...new Set(others)].join(', ')}` }
      return { name, ok: ch.withinMs === undefined || ms <= ch.withinMs, ms, detail: `${notes.join(', ')}; no other VM suspended (${sent})` }
    }
    case 'fio-verify': {
      const f = x.workloads.fio.find((w) => w.disk === ch.disk)!
      const bad = f.passes.find((p) => p.code !== 0)
      return { name: `fio-verify ${ch.disk}`, ok: f.passes.length > 0 && !bad, detail: bad ? `fio exit ${bad.code}: ${bad.out.trim().slice(-400)}` : `${f.passes.length} write+verify passes, every block read back with its crc32c` }
    }
    case 'disks-clean':
      throw new Error('disks-clean judges a stopped cluster (checkStopped)')
  }
}

/** disks-clean: the server exited 0 (its disks flushed and marked clean) and every disk's top VMDK passes qemu-img check. */
export async function checkDisks(c: Cluster, serverExit: { code: number | null; signal: string | null } | null): Promise<Verdict> {
  const name = 'disks-clean'
  const disks = c.scenario.server?.disks ?? []
  if (!serverExit || serverExit.code !== 0) return { name, ok: false, detail: `the server did not stop cleanly: ${serverExit ? `exit ${serverExit.code ?? serverExit.signal}` : 'still running after 15 s (killed)'}` }
  const notes: string[] = []
  for (const d of disks) {
    const rec = JSON.parse(readFileSync(join(c.server.datastore, d.name, 'disk.json'), 'utf8')) as { top: string }
    const r = await runCommand('qemu-img', ['check', '-f', 'vmdk', join(c.server.datastore, d.name, rec.top)])
    if (r.status === 127) return { name, ok: false, detail: 'qemu-img is not installed: the disks were not checked' }
    if (r.status !== 0) return { name, ok: false, detail: `${d.name}: qemu-img check exit ${r.status}: ${(r.stdout + r.stderr).trim().slice(0, 400)}` }
    notes.push(`${d.name} clean`)
  }
  return { name, ok: true, detail: `server exit 0; ${disks.length ? notes.join(', ') : 'no disks'}` }
}

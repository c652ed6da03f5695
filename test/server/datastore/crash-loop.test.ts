import t, { type Test } from 'tap'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { pattern, rng, run, shmTmp, tandem } from '../../helpers/peers.js'
import { bearer, startServe } from '../../helpers/server.js'

type ServeProcess = Awaited<ReturnType<typeof startServe>>
import { TestNbdClient } from '../../helpers/nbd-client.js'
import { checkImage } from '../../../src/disk-formats/index.js'

/**
 * The crash loop: `tandem serve` SIGKILLed at a random moment of a round in which a client writes
 * and flushes while snapshots are created, reverted and deleted and a disk is deleted and
 * re-created. After each restart every layer checks clean (qemu-img check and Tandem's check),
 * every disk opens, every snapshot holds its content, every flushed write reads back, and the
 * name of whatever was in flight is usable. The second test does the same on a small tmpfs kept
 * nearly full, so that operations also fail with ENOSPC (507, NBD ENOSPC), then get room again.
 * TANDEM_CRASH_LOOP_SEED reproduces a run (the seed is printed on failure).
 */
// ~40 server starts: about a minute of CPU; far longer on a loaded machine
t.setTimeout(900_000)

const ROUNDS = Number(process.env.TANDEM_CRASH_LOOP_ROUNDS ?? 30)
const FULL_ROUNDS = Number(process.env.TANDEM_CRASH_LOOP_FULL_ROUNDS ?? 6)
const SEED = Number(process.env.TANDEM_CRASH_LOOP_SEED ?? Date.now() % 1_000_000_000)
const SIZE = 1 << 20
const NBD_ENOSPC = 28
const LAYER = /^l-\d{4,}\.vmdk$/
const MAX_SNAPS = 3

interface DiskModel {
  current: Buffer
  snaps: Map<string, Buffer>
}

/** What was in flight when the server died: its outcome is read back after the restart. */
type Pending =
  | { kind: 'none' }
  | { kind: 'write'; disk: string; writes: [number, Buffer][] }
  | { kind: 'snap' | 'revert' | 'delsnap'; disk: string; name: string }
  | { kind: 'mkdisk' | 'rmdisk'; disk: string }

interface Loop {
  t: Test
  seed: number
  dir: string
  r: () => number
  model: Map<string, DiskModel>
  pending: Pending
  counter: number
  /** a full file system is allowed to refuse (507, NBD ENOSPC) */
  full: boolean
  tally: Map<string, number>
}

async function api(p: ServeProcess, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  try {
    const res = await fetch(`http://127.0.0.1:${p.httpPort}/api/v1${path}`, {
      method,
      headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...bearer(p.token) },
      body: body ? JSON.stringify(body) : undefined,
    })
    const text = await res.text()
    return { status: res.status, body: text ? JSON.parse(text) : null }
  } catch {
    return { status: 0, body: null } // the server died
  }
}

/** Reads a whole export; null when the server died meanwhile. */
async function readExport(p: ServeProcess, name: string): Promise<Buffer | null> {
  const c = await TestNbdClient.open(p.nbdPort, name).catch(() => null)
  if (!c) return null
  const parts: Buffer[] = []
  for (let o = 0; o < SIZE; o += 1 << 20) {
    const rep = await Promise.race([c.pread(o, 1 << 20), c.closed.then(() => null)])
    if (!rep || rep.errno !== 0) return null
    parts.push(rep.data)
  }
  c.disconnect()
  return Buffer.concat(parts)
}

/** Sector by sector: each holds the old bytes or those of the write covering it. */
function settleWrites(old: Buffer, got: Buffer, writes: [number, Buffer][]): string | null {
  for (let s = 0; s < SIZE; s += 512) {
    const g = got.subarray(s, s + 512)
    if (g.equals(old.subarray(s, s + 512))) continue
    const w = writes.find(([o, b]) => s >= o && s < o + b.length)
    if (!w || !g.equals(w[1].subarray(s - w[0], s - w[0] + 512))) return `sector ${s / 512} holds neither the flushed bytes nor an unflushed write's`
  }
  return null
}

function count(l: Loop, what: string): void {
  l.tally.set(what, (l.tally.get(what) ?? 0) + 1)
}

/** An answer the operation may give: never 500; 507 only on a full file system. */
function answered(l: Loop, what: string, status: number, ok: number[]): boolean {
  count(l, `${what} ${status}`)
  if (status === 0) return false // cut by the kill: left pending
  l.pending = { kind: 'none' }
  if (ok.includes(status)) return true
  if (status === 507 && l.full) return false
  l.t.fail(`${what}: unexpected status ${status} (seed ${l.seed})`)
  return false
}

/** After a restart: every layer checks clean, and nothing is left that no record names. */
async function checkLayers(l: Loop, round: number): Promise<void> {
  for (const disk of readdirSync(l.dir).filter((f) => !f.startsWith('.'))) {
    const files = readdirSync(join(l.dir, disk))
    const rec = JSON.parse(readFileSync(join(l.dir, disk, 'disk.json'), 'utf8')) as { top: string; snapshots: { layer: string }[] }
    const named = new Set([rec.top, ...rec.snapshots.map((s) => s.layer)])
    const extra = files.filter((f) => f !== 'disk.json' && !named.has(f))
    if (extra.length) l.t.fail(`round ${round}: '${disk}' holds files no record names: ${extra.join(', ')} (seed ${l.seed})`)
    for (const f of files.filter((x) => LAYER.test(x))) {
      const path = join(l.dir, disk, f)
      const q = await run('qemu-img', ['check', '-f', 'vmdk', path])
      if (q.status !== 0) l.t.fail(`round ${round}: qemu-img check ${disk}/${f}: exit ${q.status}: ${q.stdout}${q.stderr} (seed ${l.seed})`)
      const c = await checkImage(path)
      if (c.corruptions || c.leaks || c['check-errors']) l.t.fail(`round ${round}: check ${disk}/${f}: ${c.messages.join('; ')} (seed ${l.seed})`)
    }
  }
}

/** After a restart: reads back what the model says, settles what was in flight, uses its name. */
async function verify(l: Loop, p: ServeProcess, round: number): Promise<void> {
  const { t, model } = l
  const pend = l.pending
  l.pending = { kind: 'none' }
  const fail = (m: string) => t.fail(`round ${round}: ${m} (seed ${l.seed})`)
  const list = (await api(p, 'GET', '/disks')).body as { disks: { name: string }[] }
  const disks = new Set(list.disks.map((d) => d.name))
  if ((pend.kind === 'mkdisk' || pend.kind === 'rmdisk') && !disks.has(pend.disk)) model.delete(pend.disk)
  if (pend.kind === 'mkdisk' && disks.has(pend.disk) && !model.has(pend.disk)) model.set(pend.disk, { current: Buffer.alloc(SIZE), snaps: new Map() })
  if ([...disks].sort().join() !== [...model.keys()].sort().join()) fail(`disks ${[...disks]} but expected ${[...model.keys()]}`)
  for (const [disk, m] of model) {
    const before = m.current
    const s = (await api(p, 'GET', `/disks/${disk}/snapshots`)).body as { snapshots: { name: string }[] }
    const names = new Set(s.snapshots.map((x) => x.name))
    if (pend.kind === 'snap' && pend.disk === disk && names.has(pend.name)) m.snaps.set(pend.name, Buffer.from(before))
    if (pend.kind === 'delsnap' && pend.disk === disk && !names.has(pend.name)) m.snaps.delete(pend.name)
    if ([...names].sort().join() !== [...m.snaps.keys()].sort().join()) fail(`'${disk}' has snapshots ${[...names]}, expected ${[...m.snaps.keys()]}`)
    for (const [n, want] of m.snaps) {
      const got = await readExport(p, `${disk}@${n}`)
      if (!got || !got.equals(want)) fail(`snapshot ${disk}@${n} reads other bytes`)
    }
    const got = await readExport(p, disk)
    if (!got) {
      fail(`'${disk}' does not open`)
      continue
    }
    if (pend.kind === 'write' && pend.disk === disk) {
      const bad = settleWrites(before, got, pend.writes)
      if (bad) fail(`'${disk}': ${bad}`)
      m.current = got
    } else if (pend.kind === 'revert' && pend.disk === disk) {
      if (!got.equals(before) && !got.equals(m.snaps.get(pend.name)!)) fail(`'${disk}' reads neither its content nor that of '${pend.name}' after a revert was cut short`)
      m.current = got
    } else if (!got.equals(before)) fail(`'${disk}' reads other bytes than were flushed`)
  }
  // the name of what was in flight is usable
  if (pend.kind === 'snap' && model.get(pend.disk) && !model.get(pend.disk)!.snaps.has(pend.name)) {
    const res = await api(p, 'POST', `/disks/${pend.disk}/snapshots`, { name: pend.name })
    if (res.status !== 201) fail(`creating '${pend.name}' again answered ${res.status}`)
    else model.get(pend.disk)!.snaps.set(pend.name, Buffer.from(model.get(pend.disk)!.current))
  }
  if (pend.kind === 'delsnap' && model.get(pend.disk)?.snaps.has(pend.name)) {
    const res = await api(p, 'DELETE', `/disks/${pend.disk}/snapshots/${pend.name}`)
    if (res.status !== 204) fail(`deleting '${pend.name}' again answered ${res.status}`)
    else model.get(pend.disk)!.snaps.delete(pend.name)
  }
  if (pend.kind === 'mkdisk' && !model.has(pend.disk)) {
    const res = await api(p, 'POST', '/disks', { name: pend.disk, size: SIZE })
    if (res.status !== 201) fail(`creating disk '${pend.disk}' again answered ${res.status}`)
    else model.set(pend.disk, { current: Buffer.alloc(SIZE), snaps: new Map() })
  }
}

/** One client step: a few non-overlapping writes, then a flush. */
async function writeStep(l: Loop, p: ServeProcess, disk: string, c: TestNbdClient): Promise<void> {
  const m = l.model.get(disk)!
  const writes: [number, Buffer][] = []
  for (let i = 0, n = 1 + (l.r() % 6); i < n; i++) {
    const len = (1 + (l.r() % 128)) * 512 * (l.r() % 3 === 0 ? 8 : 1)
    const off = (l.r() % ((SIZE - len) / 512)) * 512
    if (writes.some(([o, b]) => off < o + b.length && o < off + len)) continue
    writes.push([off, pattern(len, l.r())])
  }
  l.pending = { kind: 'write', disk, writes }
  const died = c.closed.then(() => null)
  const reps = await Promise.race([Promise.all(writes.map(([o, b]) => c.pwrite(o, b))), died])
  const f = reps && (await Promise.race([c.flush(), died]))
  if (!reps || !f || reps.some((x) => x.errno === -1) || f.errno === -1) return count(l, 'write cut') // left pending
  const errnos = [...reps.map((x) => x.errno), f.errno].filter((e) => e !== 0)
  for (const e of errnos) if (!(e === NBD_ENOSPC && l.full)) l.t.fail(`write: NBD error ${e} (seed ${l.seed})`)
  if (errnos.length === 0) {
    for (const [o, b] of writes) b.copy(m.current, o)
    l.pending = { kind: 'none' }
    return count(l, 'write ok')
  }
  // refused for want of space: each sector holds the old bytes or the new, and the disk reads on
  count(l, 'write ENOSPC')
  const got = await readExport(p, disk)
  if (!got) return // died meanwhile: still pending
  const bad = settleWrites(m.current, got, writes)
  if (bad) l.t.fail(`after ENOSPC: ${bad} (seed ${l.seed})`)
  m.current = got
  l.pending = { kind: 'none' }
}

/** One administrator step, chosen at random among those that make sense now. */
async function adminStep(l: Loop, p: ServeProcess, clients: Map<string, TestNbdClient>): Promise<void> {
  const disks = [...l.model.keys()]
  const k = l.r() % 10
  if (k === 0) {
    const disk = 'd1'
    if (l.model.has(disk)) {
      clients.get(disk)?.disconnect()
      clients.delete(disk)
      await new Promise((r) => setTimeout(r, 20)) // the server sees the client go
      l.pending = { kind: 'rmdisk', disk }
      const res = await api(p, 'DELETE', `/disks/${disk}`)
      if (answered(l, 'delete disk', res.status, [204, 409]) && res.status === 204) l.model.delete(disk)
    } else {
      l.pending = { kind: 'mkdisk', disk }
      const res = await api(p, 'POST', '/disks', { name: disk, size: SIZE })
      if (answered(l, 'create disk', res.status, [201]) && res.status === 201) l.model.set(disk, { current: Buffer.alloc(SIZE), snaps: new Map() })
    }
    return
  }
  const disk = disks[l.r() % disks.length]
  const m = l.model.get(disk)!
  const snaps = [...m.snaps.keys()]
  // at most MAX_SNAPS snapshots a disk, so that a round's checks stay the same size
  if (snaps.length === 0 || (k <= 4 && snaps.length < MAX_SNAPS)) {
    const name = `s${l.counter++}`
    l.pending = { kind: 'snap', disk, name }
    const res = await api(p, 'POST', `/disks/${disk}/snapshots`, { name })
    if (answered(l, 'create snapshot', res.status, [201])) m.snaps.set(name, Buffer.from(m.current))
  } else if (k % 2 === 0) {
    const name = snaps[l.r() % snaps.length]
    l.pending = { kind: 'revert', disk, name }
    const res = await api(p, 'POST', `/disks/${disk}/snapshots/${name}/revert`, { force: true })
    if (answered(l, 'revert', res.status, [200])) m.current = Buffer.from(m.snaps.get(name)!)
  } else {
    const name = snaps[l.r() % snaps.length]
    l.pending = { kind: 'delsnap', disk, name }
    const res = await api(p, 'DELETE', `/disks/${disk}/snapshots/${name}`)
    if (answered(l, 'delete snapshot', res.status, [204])) m.snaps.delete(name)
  }
}

async function loop(t: Test, dir: string, rounds: number, seed: number, opts: { fill?: (leave: number) => void; unfill?: () => void } = {}): Promise<void> {
  const l: Loop = { t, seed, dir, r: rng(seed), model: new Map(), pending: { kind: 'none' }, counter: 0, full: false, tally: new Map() }
  t.comment(`seed ${seed} (TANDEM_CRASH_LOOP_SEED=${seed} reproduces it)`)
  let p = await startServe(t, dir)
  for (const d of ['d0', 'd1']) {
    if ((await api(p, 'POST', '/disks', { name: d, size: SIZE })).status !== 201) throw new Error('could not create the disks')
    l.model.set(d, { current: Buffer.alloc(SIZE), snaps: new Map() })
  }
  let repairs = 0
  for (let round = 0; round < rounds; round++) {
    const clients = new Map<string, TestNbdClient>()
    for (const d of l.model.keys()) {
      const c = await TestNbdClient.open(p.nbdPort, d)
      clients.set(d, c)
    }
    l.full = opts.fill !== undefined && round % 2 === 0
    if (l.full) opts.fill!((l.r() % 6) * 256 * 1024)
    const killStep = l.r() % 8
    const delay = l.r() % 40
    const exited = () => Promise.race([p.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 0))])
    for (let step = 0; ; step++) {
      if (step === killStep) setTimeout(() => p.child.kill('SIGKILL'), delay)
      const disks = [...l.model.keys()]
      if (disks.length > 0 && l.r() % 2 === 0) {
        const disk = disks[l.r() % disks.length]
        const c = clients.get(disk) ?? (await TestNbdClient.open(p.nbdPort, disk).catch(() => null))
        if (c) {
          clients.set(disk, c)
          await writeStep(l, p, disk, c)
        }
      } else {
        await adminStep(l, p, clients)
      }
      if (l.pending.kind !== 'none') break // the kill cut this step: nothing more until the restart
      if (step >= killStep && (await exited())) break
      if (step > killStep + 20) break // the kill has come by now
    }
    const ex = await p.exited
    if (ex.signal !== 'SIGKILL') t.fail(`round ${round}: the server exited ${JSON.stringify(ex)} (seed ${l.seed})`)
    for (const c of clients.values()) c.destroy()
    opts.unfill?.()
    l.full = false
    p = await startServe(t, dir)
    repairs += p.logs.filter((j) => j.msg === 'datastore: repaired what a stopped operation left').length
    await checkLayers(l, round)
    await verify(l, p, round)
  }
  p.child.kill('SIGTERM')
  t.same(await p.exited, { code: 0, signal: null }, 'SIGTERM at the end: clean exit')
  // the last restart's layers also pass `tandem disk check` (the CLI), once the server has let go
  // of them (it holds qemu-style image locks on the files it has open)
  for (const disk of l.model.keys()) {
    for (const f of readdirSync(join(dir, disk)).filter((x) => LAYER.test(x))) {
      const c = tandem(['disk', 'check', join(dir, disk, f)])
      if (c.status !== 0) t.fail(`tandem disk check ${disk}/${f}: exit ${c.status}: ${c.stdout}${c.stderr}`)
    }
  }
  t.comment(`${rounds} rounds; ${repairs} restarts repaired something; ${[...l.tally].sort().map(([k, n]) => `${k}: ${n}`).join(', ')}`)
  t.ok((l.tally.get('write cut') ?? 0) + [...l.tally].filter(([k]) => k.endsWith(' 0')).reduce((n, [, v]) => n + v, 0) > 0, 'some kills landed inside a step')
}

/** A 24 MiB tmpfs, or why there is none (mounting needs root). */
async function smallTmpfs(): Promise<{ mnt?: string; skip?: string }> {
  if (process.getuid?.() !== 0) return { skip: 'not root: mounting a small tmpfs (mount -t tmpfs -o size=…) needs root' }
  const mnt = mkdtempSync(join(tmpdir(), 'tandem-full-'))
  const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mnt])
  if (m.status === 0) return { mnt }
  rmSync(mnt, { recursive: true, force: true })
  return { skip: `mount -t tmpfs failed: ${m.stderr.trim()}` }
}
const small = FULL_ROUNDS > 0 ? await smallTmpfs() : { skip: 'TANDEM_CRASH_LOOP_FULL_ROUNDS=0' }

/** The loop on a small tmpfs kept nearly full, so that operations also fail with ENOSPC. */
async function fullLoop(t: Test, mnt: string): Promise<void> {
  t.teardown(async () => {
    await run('umount', [mnt])
    rmSync(mnt, { recursive: true, force: true })
  })
  const dir = join(mnt, 'ds')
  mkdirSync(dir)
  const filler = join(mnt, 'filler')
  await loop(t, dir, FULL_ROUNDS, SEED + 2, {
    fill: (leave) => {
      const st = statfsSync(mnt)
      const free = st.bavail * st.bsize
      writeFileSync(filler, Buffer.alloc(Math.max(0, free - leave)))
    },
    unfill: () => {
      try {
        unlinkSync(filler)
      } catch {
        /* none */
      }
    },
  })
}

t.test(`serve SIGKILLed in ${ROUNDS} rounds of writes and snapshot operations, and ${small.skip ? 0 : FULL_ROUNDS} more on a nearly full tmpfs: every restart opens everything with its content; ENOSPC answers 507 or NBD ENOSPC, never 500 or EIO`, async (t) => {
  // independent datastores and servers, each with its own seed, run at once: a round spends much
  // of its time waiting on its server, so the lanes keep both cores busy
  const half = Math.ceil(ROUNDS / 2)
  await Promise.all([
    loop(t, shmTmp(t, 'tandem-crash-loop-'), half, SEED),
    loop(t, shmTmp(t, 'tandem-crash-loop-'), ROUNDS - half, SEED + 1),
    small.mnt ? fullLoop(t, small.mnt) : Promise.resolve(),
  ])
})

// say why the nearly-full lane did not run
if (small.skip) t.test('the crash loop on a nearly full tmpfs', { skip: small.skip }, async () => {})

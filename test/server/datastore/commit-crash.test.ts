import t from 'tap'
import { spawn } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { needs, pattern, ROOT, run, shmTmp } from '../../helpers/peers.js'
import { Datastore } from '../../../src/server/datastore/index.js'

/**
 * A prepared snapshot's commit switches the export onto the delta first and puts the record in
 * place after: a process SIGKILLed before the rename has acknowledged no write made to the
 * delta; one killed after it (at the folder sync) acknowledged writes to the delta, which the
 * record names. Either way, after the restart every acknowledged write reads back, and every
 * layer checks clean (qemu-img check, --backing-chain).
 */
/** the child's source, run with tsx (this file may run compiled, from dist/test) */
const CHILD = join(ROOT, 'test', 'helpers', 'commit-crash-child.ts')
const K = 1024

for (const mode of ['before', 'after'] as const) {
  t.test(`SIGKILL while the commit's record is ${mode === 'before' ? 'not yet renamed into place' : 'renamed, its folder not yet synced'}: nothing acknowledged is lost`, needs('qemu-img'), async (t) => {
    const dir = shmTmp(t, 'tandem-commit-crash-')
    const child = spawn(process.execPath, ['--import=tsx', CHILD, dir, mode], { stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => child.kill('SIGKILL'))
    let stderr = ''
    child.stderr.on('data', (b) => (stderr += b))
    const lines: string[] = []
    const exited = new Promise((r) => child.on('exit', r))
    let window: () => void = () => undefined
    const inWindow = new Promise<void>((r) => (window = r))
    createInterface({ input: child.stdout }).on('line', (l) => {
      lines.push(l)
      if (l === 'window') window()
    })
    await Promise.race([inWindow, exited])
    t.ok(lines.includes('window'), `the commit reached its record (stderr: ${stderr})`)
    const acksAtWindow = lines.filter((l) => l.startsWith('ack')).length
    const ackCount = () => lines.filter((l) => l.startsWith('ack ')).length
    if (mode === 'before') await new Promise((r) => setTimeout(r, 300)) // an unheld writer acknowledges hundreds of writes meanwhile
    else for (const end = Date.now() + 10_000; ackCount() - acksAtWindow <= 10 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 10)) // a starved machine's writer is slower
    child.kill('SIGKILL')
    await exited
    const acks = lines.filter((l) => l.startsWith('ack ')).map((l) => Number(l.slice(4)))
    const issued = lines.filter((l) => l.startsWith('issue ')).map((l) => Number(l.slice(6)))
    t.ok(acks.length > 40, `the writer ran (${acks.length} acknowledged)`)
    if (mode === 'before') t.ok(acks.length - acksAtWindow <= 1, `no write is acknowledged before the record is in place (${acks.length - acksAtWindow} after the window opened)`)
    else t.ok(acks.length - acksAtWindow > 10, `writes go on once it is in place (${acks.length - acksAtWindow} acknowledged meanwhile, to the delta)`)

    const ds = await Datastore.open(dir)
    t.teardown(() => ds.close())
    const r = await ds.readRecord('d')
    if (mode === 'before') {
      t.same(r.snapshots, [], 'the old record: no snapshot')
      t.equal(r.top, 'l-0000.vmdk')
      t.ok(ds.repairs.some((x) => x.done.some((l) => /removed 'l-0001\.vmdk'/.test(l))), `the delta no record names is removed: ${JSON.stringify(ds.repairs)}`)
    } else {
      t.same(r.snapshots.map((s) => s.name), ['cp'], 'the new record: the snapshot')
      t.equal(r.top, 'l-0001.vmdk')
    }
    const h = await ds.openExport('d')
    const last = new Map<number, number>()
    for (const a of acks) last.set(a % 16, a)
    const inflight = Math.max(...issued) > Math.max(...acks) ? Math.max(...issued) : undefined
    for (let slot = 0; slot < 16; slot++) {
      const got = await h.device.read(slot * 4 * K, 4 * K)
      const ok = [last.get(slot), inflight !== undefined && inflight % 16 === slot ? inflight : undefined].filter((x) => x !== undefined)
      t.ok(ok.some((s) => got.equals(pattern(4 * K, s!))), `slot ${slot} holds its last acknowledged write (${ok.join(' or ')})`)
    }
    await h.release()
    await ds.close()
    for (const f of readdirSync(join(dir, 'd')).filter((f) => f.endsWith('.vmdk'))) {
      const c = await run('qemu-img', ['check', '-f', 'vmdk', join(dir, 'd', f)])
      t.equal(c.status, 0, `qemu-img check ${f}: ${c.stdout}${c.stderr}`)
    }
    const info = await run('qemu-img', ['info', '--backing-chain', '-f', 'vmdk', join(dir, 'd', r.top)])
    t.equal(info.status, 0, info.stderr)
    t.equal((info.stdout.match(/^image: /gm) ?? []).length, mode === 'before' ? 1 : 2, 'the chain the record names')
  })
}

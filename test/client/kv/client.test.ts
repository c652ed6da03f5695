import t from 'tap'
import { readFileSync, writeFileSync, appendFileSync } from 'node:fs'
import { join } from 'node:path'
import { FakeTimers } from '../../helpers/timers.js'
import { settle } from '../../helpers/locks.js'
import { tmp } from '../../helpers/peers.js'
import { VirtualSwitch } from '../../../src/client/vm/net.js'
import { AckLog, KvClient, KvNoReply, readAckLog, runCheck, runLoad, valueSeq } from '../../../src/client/kv/index.js'

const VM = Buffer.from([2, 0, 0, 0, 0, 1])

/**
 * A stand-in for the kvstore guest on a switch port: SET/GET/DEL as the guest answers them, to the
 * request's source MAC. `drop(n)`: the nth try of each request (by source MAC) goes unanswered;
 * `duplicate`: every reply is sent twice. It notes every SET outstanding per key, to see a load
 * never has two SETs of one key in flight.
 */
function fakeVm(sw: VirtualSwitch, o: { drop?: (tryNo: number) => boolean; duplicate?: boolean; delayMs?: number; timers?: FakeTimers } = {}) {
  const port = sw.port()
  const table = new Map<string, string>()
  const tries = new Map<string, number>()
  const sets: string[] = []
  port.onReceive = (f) => {
    if (f.readUInt16BE(12) !== 0x88b5 || !f.subarray(0, 6).equals(VM)) return
    const src = f.subarray(6, 12)
    const n = (tries.get(src.toString('hex')) ?? 0) + 1
    tries.set(src.toString('hex'), n)
    if (o.drop?.(n)) return
    const [cmd, key, ...rest] = f.subarray(14).toString().split(' ')
    let reply: string
    if (cmd === 'SET') {
      sets.push(key)
      table.set(key, rest.join(' '))
      reply = 'OK'
    } else if (cmd === 'GET') reply = table.has(key) ? `VALUE ${table.get(key)}` : 'NOTFOUND'
    else if (cmd === 'DEL') reply = table.delete(key) ? 'OK' : 'NOTFOUND'
    else reply = 'ERR unknown command'
    const out = Buffer.concat([src, VM, Buffer.from([0x88, 0xb5]), Buffer.from(reply)])
    const send = () => {
      port.send(Buffer.from(out))
      if (o.duplicate) port.send(Buffer.from(out))
    }
    if (o.delayMs && o.timers) void o.timers.sleep(o.delayMs).then(send)
    else send()
  }
  return { port, table, tries, sets }
}

t.test('a request is retried every 50 ms with the same tag; a reply to any try answers it', async (t) => {
  const ft = new FakeTimers()
  const sw = new VirtualSwitch()
  const vm = fakeVm(sw, { drop: (n) => n <= 2 })
  const c = new KvClient({ port: sw.port(), vmMac: VM, timers: ft, macPrefix: Buffer.from([2, 0xaa, 0xbb]) })
  const r = c.request('SET a 1')
  await settle()
  await ft.advance(50)
  await ft.advance(50)
  const got = await r
  t.same(got, { text: 'OK', rttMs: 100, sends: 3 })
  t.equal(c.retries, 2)
  t.equal(vm.tries.size, 1, 'all three tries came from one MAC (one tag)')
  const [tagMac] = [...vm.tries.keys()]
  t.match(tagMac, /^02aabb/, 'the MAC is the prefix, then the tag')
})

t.test('duplicate and late replies never answer another request', async (t) => {
  const ft = new FakeTimers()
  const sw = new VirtualSwitch()
  // every reply twice, and 80 ms late: each first try is answered after its retry went out
  const vm = fakeVm(sw, { duplicate: true, delayMs: 80, timers: ft })
  const c = new KvClient({ port: sw.port(), vmMac: VM, timers: ft })
  const first = c.request('SET k 1')
  await settle()
  await ft.advance(80)
  t.equal((await first).text, 'OK')
  const second = c.request('GET k')
  await settle()
  await ft.advance(30) // the first request's retry is answered now (twice): stale, not this GET's reply
  let settled = false
  void second.then(() => (settled = true))
  await settle()
  t.notOk(settled, 'the GET is not answered by an OK meant for the SET')
  await ft.advance(50)
  t.equal((await second).text, 'VALUE 1')
  t.ok(c.stale >= 3, `${c.stale} stale replies ignored`)
  t.same(vm.sets, ['k', 'k'], 'the SET arrived twice (a retry): idempotent')
})

t.test('no reply within the timeout: KvNoReply naming the VM, after timeout/retry sends', async (t) => {
  const ft = new FakeTimers()
  const sw = new VirtualSwitch()
  const c = new KvClient({ port: sw.port(), vmMac: VM, timers: ft, timeoutMs: 1000 })
  const r = c.request('COUNT')
  let err: unknown
  r.catch((e) => (err = e))
  await settle()
  await ft.advance(999)
  t.equal(err, undefined)
  await ft.advance(1)
  t.ok(err instanceof KvNoReply)
  t.match((err as Error).message, /no reply from the VM 02:00:00:00:00:01 in 1\.0 s \(20 sends of 'COUNT'\)/)
})

t.test('load: the rate on a fake clock, one SET per key in flight, every OK logged; check passes; a lost key fails it', async (t) => {
  const ft = new FakeTimers()
  const sw = new VirtualSwitch()
  let firstTries = 0
  const vm = fakeVm(sw, { delayMs: 30, timers: ft, drop: (n) => n === 1 && firstTries++ % 4 === 0 })
  const c = new KvClient({ port: sw.port(), vmMac: VM, timers: ft })
  const file = join(tmp(t), 'acked.jsonl')
  const log = AckLog.open(file)
  const inFlight = new Map<string, number>()
  let overlap = 0
  const orig = c.request.bind(c)
  c.request = async (text) => {
    const key = text.split(' ')[1]
    if (inFlight.get(key)) overlap++
    inFlight.set(key, (inFlight.get(key) ?? 0) + 1)
    try {
      return await orig(text)
    } finally {
      inFlight.set(key, inFlight.get(key)! - 1)
    }
  }
  const done = runLoad({ client: c, log, keys: 20, rate: 200, durationMs: 1000, window: 16, timers: ft, seed: 3 })
  for (let i = 0; i < 150; i++) await ft.advance(10)
  const s = await done
  log.close()
  t.equal(s.requests, 200, '200/s for 1 s')
  t.equal(s.acked, 200)
  t.equal(overlap, 0, 'never two SETs of one key outstanding')
  t.equal(s.retries, 50, 'every fourth first try was lost: 50 retries')
  t.ok(s.rttMs.p50 >= 30, `p50 ${s.rttMs.p50} ms`)
  const c1 = readAckLog(file)
  t.equal(c1.records.length, 200)
  t.same(c1.records.map((r) => r.seq).sort((a, b) => a - b), Array.from({ length: 200 }, (_, i) => i + 1))
  for (const [k, r] of c1.last) t.equal(vm.table.get(k), r.value, `${k} holds its last acknowledged value`)
  const check = runCheck(new KvClient({ port: sw.port(), vmMac: VM, timers: ft }), c1.last)
  for (let i = 0; i < 10; i++) await ft.advance(30)
  t.same(await check, { keys: 20, exact: 20, newer: 0, problems: [] })
  // a later value sent but not logged is fine; an older one, or none, is not
  const [k0, k1, k2] = [...c1.last.keys()].sort()
  vm.table.set(k0, `${k0}@${c1.maxSeq + 7}`)
  vm.table.set(k1, `${k1}@1`)
  vm.table.delete(k2)
  const bad = runCheck(new KvClient({ port: sw.port(), vmMac: VM, timers: ft }), c1.last)
  for (let i = 0; i < 10; i++) await ft.advance(30)
  const b = await bad
  t.equal(b.newer, 1)
  t.same(b.problems.map((p) => [p.key, p.kind]).sort(), [[k1, 'stale'], [k2, 'missing']].sort())
})

t.test('the log: a torn last line is ignored and cut off; a bad line inside is Corrupt; seqs continue', async (t) => {
  const file = join(tmp(t), 'acked.jsonl')
  writeFileSync(file, '{"key":"k1","value":"k1@1","seq":1,"t":5}\n{"key":"k2","value":"k2@2","seq":2,"t":6}\n{"key":"k1","val')
  t.equal(readAckLog(file).records.length, 2)
  const log = AckLog.open(file)
  t.equal(log.nextSeq, 3)
  log.append({ key: 'k1', value: 'k1@3', seq: 3, t: 7 })
  log.close()
  const c = readAckLog(file)
  t.same(c.last.get('k1'), { key: 'k1', value: 'k1@3', seq: 3, t: 7 })
  t.equal(readFileSync(file, 'utf8').split('\n').length, 4, 'three whole lines')
  appendFileSync(file, 'garbage\n{"key":"k3","value":"k3@4","seq":4,"t":8}\n')
  t.throws(() => readAckLog(file), { code: 'Corrupt', message: /line 4 is not an acknowledged SET/ })
  t.equal(valueSeq('k1', 'k1@12'), 12)
  t.equal(valueSeq('k1', 'k10@12'), undefined)
  t.equal(valueSeq('k1', 'k1@x'), undefined)
})

import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parse, stringify } from 'yaml'
import { checkScenario, drawTimeline, loadScenario, SCENARIO_SCHEMA, twoHolders, validate, type Scenario } from '../../src/client/cluster/index.js'
import { libraryFiles, SCENARIOS } from '../helpers/cluster-library.js'
import { tmp } from '../helpers/peers.js'

const base = (): Record<string, unknown> => JSON.parse(readFileSync(join(SCENARIOS, 'ft-failover.json'), 'utf8'))
const problems = (v: unknown): string => {
  try {
    checkScenario(v, 'x.json')
    return ''
  } catch (e) {
    t.equal((e as { code?: string }).code, 'InvalidArgument')
    return (e as Error).message
  }
}

t.test('scenarios/scenario.schema.json is the schema the harness checks with, and every scenario of the library conforms', async (t) => {
  t.same(JSON.parse(readFileSync(join(SCENARIOS, 'scenario.schema.json'), 'utf8')), SCENARIO_SCHEMA, 'the committed schema file is SCENARIO_SCHEMA (regenerate: tandem cluster schema > scenarios/scenario.schema.json)')
  const files = libraryFiles()
  t.ok(files.length >= 4, `the library: ${files.join(', ')}`)
  t.ok(files.some((f) => f.endsWith('.yaml')), 'one of them YAML')
  for (const f of files) t.doesNotThrow(() => loadScenario(join(SCENARIOS, f)), f)
})

t.test('a YAML scenario: the same value as its JSON; bad YAML named by line and column; then the same checks as JSON', async (t) => {
  const dir = tmp(t, 'tandem-yaml-')
  const file = (name: string, text: string) => {
    writeFileSync(join(dir, name), text)
    return join(dir, name)
  }
  t.same(loadScenario(file('a.yaml', stringify(base()))), base(), '.yaml: ft-failover as YAML reads as the JSON file')
  t.same(loadScenario(file('a.yml', `# a comment\n${stringify(base(), { collectionStyle: 'flow' })}`)), base(), '.yml, flow style, comments')
  t.throws(() => loadScenario(file('a.json', stringify(base()))), /a\.json: not JSON/, 'a .json file is read as JSON only')
  const bad = (text: string) => {
    try {
      loadScenario(file('b.yaml', text))
      return ''
    } catch (e) {
      t.equal((e as { code?: string }).code, 'InvalidArgument')
      t.notMatch((e as Error).message, /\n\s+at /, 'no stack trace')
      return (e as Error).message
    }
  }
  t.match(bad('name: x\nhosts:\n  - name: h1\n   oops: 1\n'), /b\.yaml: not YAML: line 4, column 1: /, 'bad indentation')
  t.match(bad('name: x\nhosts: [{ name: h1 }\nworkloads: []\n'), /not YAML: line 3, column 1: Flow sequence/, 'an unclosed flow sequence')
  t.match(bad('name: x\nhosts: []\nname: y\n'), /not YAML: line 3, column 1: Map keys must be unique/, 'a key given twice')
  t.match(bad('name: x\n---\nname: y\n'), /not YAML: line 2, column 1: a scenario is one document/, 'two documents')
  t.match(bad('a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n'), /not YAML: Excessive alias count/, 'an alias bomb is refused, not expanded')
  t.match(bad('name: x\nhosts: [{ name: h1 }]\nworkloads:\n  - { kind: lock, lock: l1, durationMs: "900" }\ntimeline:\n  - { fault: kill, atMs: 1, target: moon }\n'), /b\.yaml: 2 problems:\n {2}\$\.workloads\[0\]\.durationMs: must be an integer, not string\n {2}\$\.timeline\[0\]\.target: "moon" does not match/, 'schema problems by path')
  t.match(bad('name: x\nhosts: [{ name: h1 }]\nworkloads: [{ kind: kv, vm: vm9, durationMs: 900 }]\n'), /\$\.workloads\[0\]\.vm: no VM 'vm9' in \$\.vms/, 'the cross checks')
  t.match(bad(''), /b\.yaml: 1 problem:\n {2}\$: must be an object, not null/, 'an empty file')
})

t.test('a bad scenario: every problem named with its path, no stack trace', async (t) => {
  const cases: [string, (s: Record<string, unknown>) => void, RegExp][] = [
    ['unknown top-level key', (s) => (s.hostz = []), /\$\.hostz: is not a known property/],
    ['missing hosts', (s) => delete s.hosts, /\$\.hosts: is required/],
    ['wrong type', (s) => ((s.hosts as object[])[0] = { name: 7 }), /\$\.hosts\[0\]\.name: must be a string, not integer/],
    ['bad name', (s) => ((s.hosts as { name: string }[])[1].name = 'H 2'), /\$\.hosts\[1\]\.name: "H 2" does not match/],
    ['unknown fault', (s) => ((s.timeline as object[])[0] = { fault: 'meteor', atMs: 1 }), /\$\.timeline\[0\]\.fault: must be one of "kill", "stop", "partition", "link", "disk", "flood", "clock", not "meteor"/],
    ['fault field out of range', (s) => ((s.timeline as object[])[0] = { fault: 'stop', atMs: -5, target: 'vm:vm1', forMs: 10 }), /\$\.timeline\[0\]\.atMs: must match exactly one of 2 forms/],
    ['unknown checker field', (s) => ((s.checkers as object[])[0] = { kind: 'failover', vm: 'vm1', withinMs: 10, extra: 1 }), /\$\.checkers\[0\]\.extra: is not a known property/],
    ['VM on a host not declared', (s) => ((s.vms as { host: string }[])[0].host = 'h9'), /\$\.vms\[0\]\.host: no host 'h9' in \$\.hosts/],
    ['kill target not a VM', (s) => ((s.timeline as { target: string }[])[0].target = 'vm:nope:primary'), /\$\.timeline\[0\]\.target: no VM 'nope'/],
    ['range upside down', (s) => ((s.timeline as { atMs: unknown }[])[0].atMs = [5, 1]), /\$\.timeline\[0\]\.atMs: \[min, max\] with min 5 above max 1/],
    ['disk fault without fault injection', (s) => ((s.timeline as object[])[0] = { fault: 'disk', atMs: 1, disk: 'd1', mode: 'error', forMs: 5 }), /no disk 'd1'[\s\S]*disk faults need \$\.server\.faultInjection: true/],
    ['clock jump on a host not declared', (s) => ((s.timeline as object[])[0] = { fault: 'clock', atMs: 1, target: 'host:h9', jumpMs: 5000 }), /\$\.timeline\[0\]\.target: no host 'h9' in \$\.hosts/],
    ['clock jump on a VM', (s) => ((s.timeline as object[])[0] = { fault: 'clock', atMs: 1, target: 'vm:vm1', jumpMs: 5000 }), /\$\.timeline\[0\]\.target: "vm:vm1" does not match/],
    ['clock jump of a day', (s) => ((s.timeline as object[])[0] = { fault: 'clock', atMs: 1, target: 'host:h1', jumpMs: 86_400_000 }), /\$\.timeline\[0\]\.jumpMs: must be at most 3600000/],
    ['flood at a pair', (s) => ((s.timeline as object[])[0] = { fault: 'flood', atMs: 1, target: 'vm:vm1', forMs: 500 }), /\$\.timeline\[0\]\.target: VM 'vm1' is a pair: the DoS guard meters VMs alone/],
    ['dos-suspended without a flood, on a host without a guard', (s) => ((s.checkers as object[])[0] = { kind: 'dos-suspended', vm: 'vm1' }), /\$\.checkers\[0\]\.vm: no flood at 'vm1' in \$\.timeline\n {2}\$\.checkers\[0\]\.vm: VM 'vm1' runs on 'h1', whose dosGuard is off, not on/],
    ['bad DoS bounds', (s) => ((s.hosts as object[])[0] = { name: 'h1', dosGuard: 'on', dosBounds: 'holdMz=5' }), /\$\.hosts\[0\]\.dosBounds: invalid dosBounds 'holdMz=5': KEY=VALUE, KEY one of smallPpsHigh/],
    ['a workload of an unknown kind', (s) => ((s.workloads as object[])[0] = { kind: 'flood' }), /\$\.workloads\[0\]\.kind: must be one of "kv", "lock", "fio", not "flood"/],
    ['a real machine', (s) => ((s.hosts as object[])[0] = { name: 'h1', address: 'http://10.0.0.5:7800' }), /\$\.hosts\[0\]\.address: real machines .* not supported yet/],
    ['loss on a TCP path', (s) => ((s.timeline as object[])[0] = { fault: 'link', atMs: 1, path: 'storage:h1', loss: 0.1, forMs: 5 }), /\$\.timeline\[0\]\.loss: no loss on a TCP path/],
    ['failover on a VM alone', (s) => ((s.vms as { ft?: string }[])[0].ft = undefined), /\$\.checkers\[0\]\.vm: VM 'vm1' is not a pair/],
  ]
  for (const [what, edit, re] of cases) {
    const s = base()
    edit(s)
    const m = problems(JSON.parse(JSON.stringify(s)))
    t.match(m, re, what)
    t.match(m, /^x\.json: \d+ problems?:\n/, `${what}: names the file and counts`)
    t.notMatch(m, /\n\s+at /, `${what}: no stack trace`)
  }
  t.match(problems([]), /\$: must be an object, not array/)
  t.equal(problems(base()), '', 'the base scenario is fine')
})

t.test('the validator follows $ref and checks enum, bounds and required in nested items', async (t) => {
  const schema = { $defs: { n: { type: 'integer' as const, minimum: 1, maximum: 3 } }, type: 'object' as const, properties: { a: { type: 'array' as const, items: { $ref: '#/$defs/n' } } }, required: ['a'] }
  t.same(validate(schema, { a: [1, 3] }), [])
  t.same(validate(schema, { a: [0, 4, 'x'] }), [
    { path: '$.a[0]', message: 'must be at least 1' },
    { path: '$.a[1]', message: 'must be at most 3' },
    { path: '$.a[2]', message: 'must be an integer, not string' },
  ])
})

t.test('a seed draws the timeline: the same seed the same times, within [min, max]', async (t) => {
  const s = base() as unknown as Scenario
  const a = drawTimeline(s, 42).map((x) => x.atMs)
  t.same(drawTimeline(s, 42).map((x) => x.atMs), a, 'replayable')
  const all = Array.from({ length: 50 }, (_, i) => drawTimeline(s, i)[0].atMs)
  t.ok(all.every((ms) => ms >= 1500 && ms <= 3500), 'within the range')
  t.ok(new Set(all).size > 10, 'seeds spread the instants')
})

t.test('single holder: a generation that writes after a later one took the lock is two holders', async (t) => {
  const h = (host: string, generation: number, t = 0) => ({ host, generation, t, mono: t })
  t.equal(twoHolders([h('c1', 1), h('c1', 1), h('c2', 2), h('c3', 3), h('c3', 3)]), null, 'hand-overs in order')
  t.match(twoHolders([h('c1', 1), h('c2', 2), h('c1', 1)]), /line 3: c1 \(generation 1\) wrote after c2 took the lock at generation 2: two holders/)
  t.match(twoHolders([h('c1', 1), h('c2', 2), h('c2', 2), h('c3', 3), h('c2', 2)]), /line 5: c2 \(generation 2\) wrote after c3/)
  t.match(twoHolders([h('c1', 1), h('c2', 1)]), /generation 1 written by c2 and by c1/)
  t.match(twoHolders([h('c2', 5), h('c1', 4)]), /line 2: c1 \(generation 4\) wrote after c2/, 'a generation going back')
})

t.test('the examples of scenarios/SCENARIOS.md are valid scenarios', async (t) => {
  const md = readFileSync(join(SCENARIOS, 'SCENARIOS.md'), 'utf8')
  const blocks = [...md.matchAll(/```(json|yaml)\n([\s\S]*?)```/g)].map((m) => [m[1], m[2]])
  t.ok(blocks.length >= 2 && blocks.some(([k]) => k === 'yaml'), `${blocks.length} examples, YAML among them`)
  for (const [k, b] of blocks) t.doesNotThrow(() => checkScenario(k === 'yaml' ? parse(b) : JSON.parse(b), 'example'), b.slice(0, 40))
})

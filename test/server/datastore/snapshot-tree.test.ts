import t from 'tap'
import type { DiskRecord } from '../../../src/server/datastore/disk-record.js'
import { chainOf, layerName, planCreate, planDelete, planRevert, snapshotViews } from '../../../src/server/datastore/snapshot-tree.js'
import { isValidName, parseExportName, validName } from '../../../src/server/datastore/names.js'
import { LAYER_FILE, layersOf } from '../../../src/server/datastore/disk-record.js'

const AT = '2026-01-01T00:00:00.000Z'

function fresh(): DiskRecord {
  return { version: 1, name: 'd', size: 1 << 20, createdAt: AT, top: 'l-0000.vmdk', current: null, nextLayer: 1, snapshots: [], access: { initiators: [] } }
}

/** Runs create/revert plans as the datastore would (the record only). */
function create(r: DiskRecord, name: string): DiskRecord {
  return planCreate(r, name, AT).record
}

/**
 *   a ── b ─┬─ c
 *           └─ d ── (current)
 */
function tree(): DiskRecord {
  let r = create(fresh(), 'a')
  r = create(r, 'b')
  r = create(r, 'c')
  r = planRevert(r, 'b').record
  return create(r, 'd')
}

t.test('layer names count up and match what repair recognises', async (t) => {
  t.equal(layerName(0), 'l-0000.vmdk')
  t.equal(layerName(12345), 'l-12345.vmdk')
  t.ok(LAYER_FILE.test(layerName(7)))
})

t.test('create freezes the top as the snapshot and names a new top; the input is not changed', async (t) => {
  const r0 = fresh()
  const before = JSON.stringify(r0)
  const p = planCreate(r0, 'a', AT)
  t.equal(JSON.stringify(r0), before, 'input untouched')
  t.same(p.made, { name: 'a', layer: 'l-0000.vmdk', parent: null, createdAt: AT })
  t.equal(p.top, 'l-0001.vmdk')
  t.equal(p.record.top, 'l-0001.vmdk')
  t.equal(p.record.current, 'a')
  t.equal(p.record.nextLayer, 2)
  const p2 = planCreate(p.record, 'b', AT)
  t.same(p2.made, { name: 'b', layer: 'l-0001.vmdk', parent: 'a', createdAt: AT })
  t.same(chainOf(p2.record), ['l-0002.vmdk', 'l-0001.vmdk', 'l-0000.vmdk'])
})

t.test('create refuses a taken name (Exists) and a bad one (InvalidArgument)', async (t) => {
  const r = create(fresh(), 'a')
  t.throws(() => planCreate(r, 'a', AT), { code: 'Exists', message: "disk 'd' already has a snapshot 'a'" })
  for (const bad of ['', '.a', '..', 'a/b', 'x'.repeat(65), 'a b', 'é']) t.throws(() => planCreate(r, bad, AT), { code: 'InvalidArgument' }, JSON.stringify(bad))
})

t.test('revert puts a new top on the snapshot and discards the old top; a later create branches', async (t) => {
  let r = create(create(fresh(), 'a'), 'b') // a: l-0000, b: l-0001, top l-0002
  const p = planRevert(r, 'a')
  t.equal(p.parentLayer, 'l-0000.vmdk')
  t.equal(p.discard, 'l-0002.vmdk')
  t.equal(p.top, 'l-0003.vmdk')
  t.equal(p.record.current, 'a')
  t.same(chainOf(p.record), ['l-0003.vmdk', 'l-0000.vmdk'])
  t.same(layersOf(p.record), new Set(['l-0003.vmdk', 'l-0000.vmdk', 'l-0001.vmdk']), 'the discarded top is no layer of the record')
  r = create(p.record, 'c')
  t.same(
    snapshotViews(r).map((s) => [s.name, s.parent, s.isCurrent]),
    [
      ['a', null, false],
      ['b', 'a', false],
      ['c', 'a', true],
    ],
    'b and c are both children of a',
  )
  t.throws(() => planRevert(r, 'zz'), { code: 'NotFound', message: "disk 'd' has no snapshot 'zz'" })
})

t.test('the tree the REST API shows: each snapshot with its parent, the current one marked, no layer names', async (t) => {
  const r = tree()
  t.same(snapshotViews(r), [
    { name: 'a', parent: null, createdAt: AT, description: '', isCurrent: false },
    { name: 'b', parent: 'a', createdAt: AT, description: '', isCurrent: false },
    { name: 'c', parent: 'b', createdAt: AT, description: '', isCurrent: false },
    { name: 'd', parent: 'b', createdAt: AT, description: '', isCurrent: true },
  ])
  t.same(chainOf(r), [r.top, 'l-0004.vmdk', 'l-0001.vmdk', 'l-0000.vmdk'])
})

t.test('delete of a snapshot with two child snapshots re-links both onto its parent', async (t) => {
  const r = tree()
  const p = planDelete(r, 'b')
  t.equal(p.layer, 'l-0001.vmdk')
  t.equal(p.parentLayer, 'l-0000.vmdk')
  t.same(p.children, ['l-0002.vmdk', 'l-0004.vmdk'])
  t.same(
    p.record.snapshots.map((s) => [s.name, s.parent]),
    [
      ['a', null],
      ['c', 'a'],
      ['d', 'a'],
    ],
  )
  t.equal(p.record.current, 'd')
  t.equal(r.snapshots.length, 4, 'input untouched')
})

t.test('delete of a first snapshot makes its children bases; of the current one, the top is its child', async (t) => {
  const r = tree()
  const a = planDelete(r, 'a')
  t.equal(a.parentLayer, null)
  t.same(a.children, ['l-0001.vmdk'])
  t.equal(a.record.snapshots.find((s) => s.name === 'b')!.parent, null)
  const d = planDelete(r, 'd')
  t.same(d.children, [r.top], 'the top descends from d')
  t.equal(d.parentLayer, 'l-0001.vmdk')
  t.equal(d.record.current, 'b')
  t.same(chainOf(d.record), [r.top, 'l-0001.vmdk', 'l-0000.vmdk'])
  const c = planDelete(r, 'c')
  t.same(c.children, [], 'a leaf: nothing to re-link')
  t.equal(c.record.current, 'd')
  t.throws(() => planDelete(r, 'nope'), { code: 'NotFound' })
})

t.test('chainOf stops at a record whose tree loops or names a missing snapshot', async (t) => {
  const r = tree()
  const looped: DiskRecord = { ...r, snapshots: r.snapshots.map((s) => (s.name === 'a' ? { ...s, parent: 'd' } : s)) }
  t.same(chainOf(looped), [r.top, 'l-0004.vmdk', 'l-0001.vmdk', 'l-0000.vmdk'])
  t.same(chainOf({ ...r, current: 'gone' }), [r.top])
})

t.test('names: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot; export names split at @', async (t) => {
  for (const ok of ['a', 'A-9_x.y', 'x'.repeat(64), '-a', '_']) t.ok(isValidName(ok), ok)
  for (const bad of ['', '.', '..', '.tandem', 'a/b', 'a\\b', 'x'.repeat(65), 'a@b', 'a b', 7, null]) t.notOk(isValidName(bad), JSON.stringify(bad))
  t.throws(() => validName('disk', '../x'), { code: 'InvalidArgument', message: /invalid disk name "\.\.\/x"/ })
  t.same(parseExportName('d'), { disk: 'd' })
  t.same(parseExportName('d@s1'), { disk: 'd', snapshot: 's1' })
  t.throws(() => parseExportName('d@'), { code: 'InvalidArgument' })
  t.throws(() => parseExportName('d@a@b'), { code: 'InvalidArgument' })
})

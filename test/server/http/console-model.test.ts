import t from 'tap'
// the console's browser modules that need no DOM: the snapshot tree's layout and the /metrics figures
// @ts-expect-error plain browser JavaScript, no types
import { HERE, layout } from '../../../src/server/http/console/tree.js'
// @ts-expect-error plain browser JavaScript, no types
import { parse, rates, reading } from '../../../src/server/http/console/prom.js'

type Row = { name: string | symbol; depth: number; row: number; parentRow: number | null }

t.test('tree layout: children under parents oldest first, "You are here" under the current snapshot', async (t) => {
  const snaps = [
    { name: 'b2', parent: 'a', createdAt: '2026-12-02T03:00:00Z' },
    { name: 'a', parent: null, createdAt: '2026-12-02T01:00:00Z' },
    { name: 'b1', parent: 'a', createdAt: '2026-12-02T02:00:00Z' },
    { name: 'c', parent: 'b1', createdAt: '2026-12-02T04:00:00Z' },
    { name: 'orphan', parent: 'gone', createdAt: '2026-12-02T05:00:00Z' },
  ]
  const rows = (layout(snaps, 'b2') as Row[]).map((r) => [r.name === HERE ? 'HERE' : r.name, r.depth, r.parentRow])
  t.same(rows, [
    ['a', 0, null],
    ['b1', 1, 0],
    ['c', 2, 1],
    ['b2', 1, 0],
    ['HERE', 2, 3],
    ['orphan', 0, null],
  ])
  t.same((layout([], null) as Row[]).map((r) => [r.name === HERE, r.depth]), [[true, 0]], 'no snapshots: only the running state')
})

const text = (read: number, write: number, count: number, sum: number, buckets: [string, number][]) => `# HELP tandem_export_bytes_total Bytes
# TYPE tandem_export_bytes_total counter
tandem_export_bytes_total{export="vm1",protocol="nbd",direction="read"} ${read}
tandem_export_bytes_total{export="a \\"quoted\\" name",protocol="iscsi",direction="write"} ${write}
tandem_export_operations_total{export="vm1",protocol="nbd",op="read"} ${count}
${buckets.map(([le, n]) => `tandem_export_request_seconds_bucket{le="${le}",protocol="nbd",op="read"} ${n}`).join('\n')}
tandem_export_request_seconds_sum{protocol="nbd",op="read"} ${sum}
tandem_export_request_seconds_count{protocol="nbd",op="read"} ${count}
tandem_connections{protocol="nbd"} 2
tandem_connections{protocol="iscsi"} 0
not a sample line
`

t.test('/metrics figures: labels as written, rates between two readings, p99 as a bucket bound', async (t) => {
  const s = parse(text(0, 0, 0, 0, [['0.001', 0], ['0.01', 0], ['+Inf', 0]]))
  t.same(s.find((x: { name: string; labels: Record<string, string> }) => x.name === 'tandem_export_bytes_total' && x.labels.protocol === 'iscsi').labels.export, 'a "quoted" name')
  const a = reading(s, 0)
  t.same(a.connections, { nbd: 2, iscsi: 0 })
  const b = reading(parse(text(4096, 1024, 100, 0.2, [['0.001', 50], ['0.01', 99], ['+Inf', 100]])), 2000)
  const r = rates(a, b)
  t.same([r.read, r.written, r.ops], [2048, 512, 50], 'per second over 2 s')
  t.equal(r.meanLatency, 0.002)
  t.equal(r.p99, 0.01, '99 of 100 within 10 ms')
  const c = reading(parse(text(4096, 1024, 200, 0.3, [['0.001', 50], ['0.01', 100], ['+Inf', 200]])), 4000)
  t.equal(rates(b, c).p99, Infinity, 'most over the last bound: +Inf')
  const restarted = rates(c, reading(parse(text(10, 10, 1, 0.001, [['0.001', 1], ['0.01', 1], ['+Inf', 1]])), 6000))
  t.ok(Number.isNaN(restarted.read) && Number.isNaN(restarted.meanLatency), 'counters that went down (a restart) give no rate')
})

// The Prometheus text format as /metrics writes it, and the figures the console charts from it.

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

/** Samples `{ name, labels, value }`; comments and lines it cannot read are skipped. */
export function parse(text) {
  const out = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const m = LINE.exec(line)
    if (!m) continue
    const labels = {}
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c))
    out.push({ name: m[1], labels, value: Number(m[3]) })
  }
  return out
}

/** The sum of a series' samples whose labels include `match`. */
export function sum(samples, name, match = {}) {
  let t = 0
  for (const x of samples) if (x.name === name && Object.entries(match).every(([k, v]) => x.labels[k] === v)) t += x.value
  return t
}

/** Values of one label over a series' samples, summed per value: { nbd: 2, iscsi: 0 }. */
export function byLabel(samples, name, label) {
  const out = {}
  for (const x of samples) if (x.name === name && label in x.labels) out[x.labels[label]] = (out[x.labels[label]] ?? 0) + x.value
  return out
}

/** Cumulative histogram buckets of a series summed over its labels: [[le, count], …] by le. */
export function buckets(samples, name) {
  const m = new Map()
  for (const x of samples) if (x.name === `${name}_bucket`) m.set(x.labels.le, (m.get(x.labels.le) ?? 0) + x.value)
  return [...m].map(([le, n]) => [le === '+Inf' ? Infinity : Number(le), n]).sort((a, b) => a[0] - b[0])
}

/**
 * The figures of one /metrics reading the charts need: totals of bytes read and written, requests,
 * and the latency histogram (all counters; rates come from two readings).
 */
export function reading(samples, at) {
  return {
    at,
    read: sum(samples, 'tandem_export_bytes_total', { direction: 'read' }),
    written: sum(samples, 'tandem_export_bytes_total', { direction: 'write' }),
    ops: sum(samples, 'tandem_export_operations_total'),
    latencySum: sum(samples, 'tandem_export_request_seconds_sum'),
    latencyCount: sum(samples, 'tandem_export_request_seconds_count'),
    buckets: buckets(samples, 'tandem_export_request_seconds'),
    connections: byLabel(samples, 'tandem_connections', 'protocol'),
  }
}

/**
 * Rates between two readings: bytes/s read and written, requests/s, mean latency and p99 (the
 * upper bound of the bucket holding the 99th percentile) of the requests in between; NaN when
 * there were none. A counter that went down (the server restarted) gives no rate.
 */
export function rates(a, b) {
  const dt = (b.at - a.at) / 1000
  const d = (k) => (b[k] >= a[k] && dt > 0 ? (b[k] - a[k]) / dt : NaN)
  const n = b.latencyCount - a.latencyCount
  let p99 = NaN
  if (n > 0) {
    const before = new Map(a.buckets.map(([le, c]) => [le, c]))
    for (const [le, c] of b.buckets) {
      if (c - (before.get(le) ?? 0) >= 0.99 * n) {
        p99 = le
        break
      }
    }
  }
  return { read: d('read'), written: d('written'), ops: d('ops'), meanLatency: n > 0 ? (b.latencySum - a.latencySum) / n : NaN, p99 }
}

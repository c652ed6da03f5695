import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** Prometheus series of one server (DESIGN §7: `/metrics`), all `tandem_`-prefixed. */
export class Metrics {
  readonly registry = new Registry()
  readonly bytes = new Counter({
    name: 'tandem_export_bytes_total',
    help: 'Bytes transferred per export, protocol and direction',
    labelNames: ['export', 'protocol', 'direction'] as const,
    registers: [this.registry],
    collect: () => this.flushTallies(),
  })
  readonly ops = new Counter({
    name: 'tandem_export_operations_total',
    help: 'Requests per export, protocol and operation',
    labelNames: ['export', 'protocol', 'op'] as const,
    registers: [this.registry],
    collect: () => this.flushTallies(),
  })
  readonly errors = new Counter({
    name: 'tandem_export_errors_total',
    help: 'Requests that ended in an error, per export, protocol and operation',
    labelNames: ['export', 'protocol', 'op'] as const,
    registers: [this.registry],
    collect: () => this.flushTallies(),
  })
  readonly latency = new Histogram({
    name: 'tandem_export_request_seconds',
    help: 'Request latency per protocol and operation',
    labelNames: ['protocol', 'op'] as const,
    buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  })
  readonly connections = new Gauge({
    name: 'tandem_connections',
    help: 'Open client connections per protocol',
    labelNames: ['protocol'] as const,
    registers: [this.registry],
  })
  readonly connectionsTotal = new Counter({
    name: 'tandem_connections_total',
    help: 'Client connections accepted per protocol',
    labelNames: ['protocol'] as const,
    registers: [this.registry],
  })
  readonly protocolErrors = new Counter({
    name: 'tandem_protocol_errors_total',
    help: 'Connections closed for a protocol violation, per protocol',
    labelNames: ['protocol'] as const,
    registers: [this.registry],
  })

  /** The connections' tallies, added to the counters above whenever they are read. */
  private readonly tallies = new Set<ExportTally>()

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'tandem_' })
  }

  /** A tally of one connection's requests to one export (closed with the connection). */
  tally(exportName: string, protocol: string): ExportTally {
    const t = new ExportTally(this, exportName, protocol, () => this.tallies.delete(t))
    this.tallies.add(t)
    return t
  }

  private flushTallies(): void {
    for (const t of this.tallies) t.flush()
  }
}

interface OpCounts {
  requests: number
  errors: number
  latency: { observe(seconds: number): void }
}

/**
 * One connection's requests to one export, counted in plain numbers and added to the shared
 * counters when /metrics is read or the connection closes. A labelled prom-client update hashes
 * its labels every time (~0.4 µs); three or four of them per request were several per cent of a
 * 4 KiB write at queue depth 32. Latency still goes to its histogram per request.
 */
export class ExportTally {
  private readonly ops = new Map<string, OpCounts>()
  private read = 0
  private written = 0

  constructor(
    private readonly metrics: Metrics,
    readonly exportName: string,
    readonly protocol: string,
    private readonly forget: () => void,
  ) {}

  /** One request: its op, when it started (process.hrtime.bigint()), whether it failed, bytes moved. */
  request(op: string, t0: bigint, failed: boolean, read = 0, written = 0): void {
    let c = this.ops.get(op)
    if (!c) this.ops.set(op, (c = { requests: 0, errors: 0, latency: this.metrics.latency.labels({ protocol: this.protocol, op }) }))
    c.latency.observe(Number(process.hrtime.bigint() - t0) / 1e9)
    c.requests++
    if (failed) c.errors++
    this.read += read
    this.written += written
  }

  /** Adds what was counted since the last flush to the shared counters. */
  flush(): void {
    const at = { export: this.exportName, protocol: this.protocol }
    for (const [op, c] of this.ops) {
      if (c.requests) this.metrics.ops.inc({ ...at, op }, c.requests)
      if (c.errors) this.metrics.errors.inc({ ...at, op }, c.errors)
      c.requests = c.errors = 0
    }
    if (this.read) this.metrics.bytes.inc({ ...at, direction: 'read' }, this.read)
    if (this.written) this.metrics.bytes.inc({ ...at, direction: 'write' }, this.written)
    this.read = this.written = 0
  }

  /** The connection is done with the export: flush, and stop being flushed. */
  close(): void {
    this.flush()
    this.forget()
  }
}

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** Prometheus series of one server (DESIGN §7: `/metrics`), all `tandem_`-prefixed. */
export class Metrics {
  readonly registry = new Registry()
  readonly bytes = new Counter({
    name: 'tandem_export_bytes_total',
    help: 'Bytes transferred per export, protocol and direction',
    labelNames: ['export', 'protocol', 'direction'] as const,
    registers: [this.registry],
  })
  readonly ops = new Counter({
    name: 'tandem_export_operations_total',
    help: 'Requests per export, protocol and operation',
    labelNames: ['export', 'protocol', 'op'] as const,
    registers: [this.registry],
  })
  readonly errors = new Counter({
    name: 'tandem_export_errors_total',
    help: 'Requests that ended in an error, per export, protocol and operation',
    labelNames: ['export', 'protocol', 'op'] as const,
    registers: [this.registry],
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

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'tandem_' })
  }
}

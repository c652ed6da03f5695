import express from 'express'
import { createServer, type Server } from 'node:http'

/**
 * A stand-in for a host's REST API (`tandem host`) on a free port: GET /api/v1/vms answers
 * `body` (JSON; a string is sent as plain text). Closed at teardown. Returns its base URL.
 */
export async function stubHostApi(t: { teardown(fn: () => unknown): void }, body: unknown): Promise<string> {
  const app = express()
  app.get('/api/v1/vms', (_req, res) => (typeof body === 'string' ? res.type('text/plain').send(body) : res.json(body)))
  const s: Server = createServer(app)
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise((r) => s.close(r)))
  return `http://127.0.0.1:${(s.address() as { port: number }).port}`
}

/** A primary of a fault-tolerant pair as a host lists it (the fields of VmInfo the server shows, and others). */
export const PRIMARY_VM = {
  name: 'db',
  state: 'running',
  pid: 4242,
  generation: 3,
  startedAt: '2026-12-02T05:00:00.000Z',
  ft: { side: 'primary', mode: 'checkpoint', peer: 'http://127.0.0.1:7801', role: 'primary', lagMs: 12.5, logBytesPerSecond: 1024, address: '127.0.0.1:9000', lockHost: 'x' },
  disk: 'not shown',
}

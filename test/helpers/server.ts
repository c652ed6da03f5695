import { pino } from 'pino'
import { serve, type RunningServer, type ServeOptions } from '../../src/server/serve.js'
import { tmp } from './peers.js'

/**
 * A `tandem serve` in this process on free ports and a fresh datastore, stopped at teardown.
 * `opts` adds serve options (e.g. `tls`).
 */
export async function startServer(
  t: { teardown(fn: () => unknown): void },
  opts: Partial<Pick<ServeOptions, 'tls'>> = {},
): Promise<RunningServer & { dir: string; uri: (e: string) => string }> {
  const dir = tmp(t, 'tandem-ds-')
  const s = await serve({ datastore: dir, listen: '127.0.0.1', httpPort: 0, nbdPort: 0, iscsiPort: 0, ...opts }, pino({ level: 'silent' }))
  t.teardown(() => s.close())
  return Object.assign(s, { dir, uri: (e: string) => `nbd://127.0.0.1:${s.nbdPort}/${e}` })
}

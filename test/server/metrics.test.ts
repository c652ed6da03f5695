import t from 'tap'
import { startServer } from '../helpers/server.js'
import { TestNbdClient } from '../helpers/nbd-client.js'
import { pattern } from '../helpers/peers.js'

/** One series' value in the Prometheus text, 0 when absent. */
function value(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `))
  return line ? Number(line.slice(series.length + 1)) : 0
}

t.test('/metrics counts NBD requests per export, while the connection is open and after it closes', async (t) => {
  const s = await startServer(t)
  await s.ds.createDisk('m', 1 << 20)
  const scrape = async () => (await fetch(`http://127.0.0.1:${s.httpPort}/metrics`)).text()
  const c = await TestNbdClient.open(s.nbdPort, 'm')
  for (let i = 0; i < 3; i++) t.equal((await c.pwrite(i * 4096, pattern(4096, i + 1))).errno, 0)
  t.equal((await c.pread(0, 8192)).errno, 0)
  t.not((await c.pread(2 << 20, 4096)).errno, 0, 'a read past the end fails')
  let m = await scrape()
  t.equal(value(m, 'tandem_export_bytes_total{export="m",protocol="nbd",direction="write"}'), 3 * 4096, 'bytes written')
  t.equal(value(m, 'tandem_export_bytes_total{export="m",protocol="nbd",direction="read"}'), 8192, 'bytes read (not the failed read)')
  t.equal(value(m, 'tandem_export_operations_total{export="m",protocol="nbd",op="write"}'), 3, 'writes')
  t.equal(value(m, 'tandem_export_operations_total{export="m",protocol="nbd",op="read"}'), 2, 'reads')
  t.equal(value(m, 'tandem_export_errors_total{export="m",protocol="nbd",op="read"}'), 1, 'the failed read')
  t.equal(value(m, 'tandem_export_request_seconds_count{protocol="nbd",op="write"}'), 3, 'write latencies')
  // a second scrape does not count anything twice; what comes after the first is added
  t.equal((await c.pwrite(0, pattern(4096, 9))).errno, 0)
  c.disconnect()
  // the server has closed the connection (and its tally) when its gauge drops to 0
  for (let i = 0; i < 200 && value((m = await scrape()), 'tandem_connections{protocol="nbd"}') !== 0; i++) await new Promise((r) => setImmediate(r))
  t.equal(value(m, 'tandem_connections{protocol="nbd"}'), 0, 'the connection is closed')
  t.equal(value(m, 'tandem_export_operations_total{export="m",protocol="nbd",op="write"}'), 4, 'writes after the connection closed')
  t.equal(value(m, 'tandem_export_bytes_total{export="m",protocol="nbd",direction="write"}'), 4 * 4096)
  t.equal(value(await scrape(), 'tandem_export_operations_total{export="m",protocol="nbd",op="write"}'), 4, 'and again')
})

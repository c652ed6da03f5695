import t from 'tap'
import { copyFileSync, readFileSync, writeFileSync, rmSync, existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import Module from 'node:module'
import vm from 'node:vm'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { createVmdk, openVmdk } from '../../../src/disk-formats/index.js'
import { CLI, shStatus, tmp } from '../../helpers/peers.js'

// The `tandem` executable (tandem.cts) runs the CLI's bundle, cli.cjs, from V8's code cache made
// by the build (scripts/build-cli.ts).
const BUNDLE = join(dirname(CLI), 'cli.cjs')

t.test('the build leaves a code cache that V8 accepts for the bundle', async (t) => {
  t.ok(existsSync(`${BUNDLE}.cache`), 'cli.cjs.cache exists')
  const script = new vm.Script(Module.wrap(readFileSync(BUNDLE, 'utf8')), { filename: BUNDLE, cachedData: readFileSync(`${BUNDLE}.cache`) })
  t.equal(script.cachedDataRejected, false, 'not rejected: the CLI starts without compiling its bundle')
})

t.test('a damaged or missing code cache only costs time', async (t) => {
  const d = tmp(t)
  copyFileSync(CLI, join(d, 'tandem.cjs'))
  copyFileSync(BUNDLE, join(d, 'cli.cjs'))
  for (const [what, cache] of [['garbage', Buffer.from('not a code cache')], ['truncated', readFileSync(`${BUNDLE}.cache`).subarray(0, 4096)], ['missing', null]] as const) {
    if (cache) writeFileSync(join(d, 'cli.cjs.cache'), cache)
    else rmSync(join(d, 'cli.cjs.cache'), { force: true })
    const r = shStatus(process.execPath, [join(d, 'tandem.cjs'), '--version'])
    t.equal(r.status, 0, `${what}: exit 0 (${r.stderr.trim()})`)
    t.equal(r.stdout, '0.1.0\n', `${what}: the version`)
  }
})

t.test('the commands loaded on first use load from the bundle', async (t) => {
  // `lock ls` loads the lock manager through the executable's import function (lazy.ts)
  const d = tmp(t)
  const ls = join(d, 'ls')
  t.equal(shStatus(process.execPath, [CLI, 'lock', 'init', '--lockspace', ls, '--hosts', '4', '--locks', '4']).status, 0)
  const r = shStatus(process.execPath, [CLI, 'lock', 'ls', '--lockspace', ls, '--json'])
  t.equal(r.status, 0, r.stderr)
  t.doesNotThrow(() => JSON.parse(r.stdout), 'JSON from the lock manager')
})

t.test('a reader that goes away (| head -1) ends the output, not the command: exit 0, no stack trace', async (t) => {
  const d = tmp(t)
  const path = join(d, 'frag.vmdk')
  await createVmdk(path, { size: 2 * 2 ** 30 })
  const img = await openVmdk(path)
  // every other grain allocated: `disk map` prints one line per run, ~1 MB, past what the
  // socket between the processes holds (~200 KiB)
  const sector = Buffer.alloc(512, 1)
  for (let g = 0; g < 32768; g += 2) await img.write(g * 65536, sector)
  await img.close()
  const child = spawn(process.execPath, [CLI, 'disk', 'map', path], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stderr = ''
  child.stderr.on('data', (b) => (stderr += b))
  await new Promise((r) => child.stdout.once('data', r))
  child.stdout.destroy()
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null]
  t.same({ code, signal }, { code: 0, signal: null }, 'exit 0')
  t.equal(stderr, '', 'nothing on stderr (no EPIPE stack trace)')
})

t.test('disk convert of two files loads no network, TLS, crypto, zlib or server module', async (t) => {
  const d = tmp(t)
  writeFileSync(join(d, 'src.raw'), Buffer.alloc(1 << 20, 1))
  // a preload that lists, at exit, the built-in modules loaded and the files required
  writeFileSync(
    join(d, 'loaded.cjs'),
    "process.on('exit', () => require('fs').writeFileSync(process.env.LOADED, JSON.stringify({ builtins: process.moduleLoadList, files: Object.keys(require.cache) })))",
  )
  const loaded = join(d, 'loaded.json')
  // through env -i: tap's coverage hooks follow node children (through NODE_OPTIONS) and load modules
  const r = shStatus('env', ['-i', `PATH=${process.env.PATH}`, `LOADED=${loaded}`, process.execPath, '-r', join(d, 'loaded.cjs'), CLI, 'disk', 'convert', '-f', 'raw', '-O', 'vmdk', join(d, 'src.raw'), join(d, 'out.vmdk')])
  t.equal(r.status, 0, r.stderr)
  const { builtins, files } = JSON.parse(readFileSync(loaded, 'utf8')) as { builtins: string[]; files: string[] }
  for (const m of ['tls', 'http', 'https', 'crypto', 'zlib', 'os', 'child_process']) t.notOk(builtins.includes(`NativeModule ${m}`), `${m} not loaded`)
  for (const p of ['express', 'pino', 'prom-client']) t.notOk(files.some((f) => f.includes(`/node_modules/${p}/`)), `${p} not loaded`)
})

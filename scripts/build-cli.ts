/**
 * Bundles the CLI (dist/src/client/cli/bin.js, compiled by tsc) into dist/src/client/cli/cli.cjs
 * and makes V8's code cache for it, which the `tandem` executable (tandem.cjs) uses: see
 * src/client/cli/tandem.cts for why. Run by `npm run build`.
 *
 * The bundle sits in the folder of the modules it replaces, so the paths they compute from
 * `import.meta.url` (the lock watchdog, the lazily loaded modules of lazy.ts) mean the same files.
 */
import { build } from 'esbuild'
import { execFileSync } from 'node:child_process'
import { chmodSync, cpSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const DIST = join(dirname(fileURLToPath(import.meta.url)), '..')
const CLI = join(DIST, 'src', 'client', 'cli')

// The web console is plain browser JavaScript (no compile step): copied beside the compiled
// server module that serves it (src/server/http/console.ts resolves it from its own URL).
const CONSOLE = join('src', 'server', 'http', 'console')
rmSync(join(DIST, CONSOLE), { recursive: true, force: true })
cpSync(join(DIST, '..', CONSOLE), join(DIST, CONSOLE), { recursive: true })

/** Packages left to Node: native (fs-ext) or used by the server only, or on a terminal only. */
const EXTERNAL = ['fs-ext', 'express', 'pino', 'prom-client', 'cli-progress']

/** Built-in modules the bundle loads when first used (none is used while the bundle loads). */
const LAZY_BUILTINS = /^(node:)?(child_process|crypto|http|https|net|os|tls|zlib)$/

const OUT = join(CLI, 'cli.cjs')
const BIN = join(CLI, 'tandem.cjs')

await build({
  entryPoints: [join(CLI, 'bin.js')],
  outfile: OUT,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: EXTERNAL,
  define: { 'import.meta.url': '__tandemFileUrl' },
  banner: { js: "'use strict';\nconst __tandemFileUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
  // whitespace and syntax only (names kept): 552 -> 363 KB to read and check against the code
  // cache at every start, ~5-7 ms less CPU per command (`perf stat`, alternating, 6 each)
  minifyWhitespace: true,
  minifySyntax: true,
  plugins: [
    {
      // commander requires node:child_process when it loads (for subcommands that are separate
      // executables, which Tandem has none of), and with it net, stream and dgram: ~4 ms of
      // every command's start. The bundle gets it on first use instead (`lock run` spawns).
      // Likewise the modules of the network clients (REST over http, NBD over net and tls,
      // crypto for CHAP and TLS-PSK), os and zlib (stream files): `disk convert` of two files
      // loaded some eighty built-in modules it never used, half of them for TLS and HTTP.
      name: 'builtins-on-first-use',
      setup(b) {
        b.onResolve({ filter: LAZY_BUILTINS }, (a) => (a.namespace === 'lazy' ? undefined : { path: a.path.replace(/^node:/, ''), namespace: 'lazy' }))
        b.onLoad({ filter: /.*/, namespace: 'lazy' }, (a) => ({
          loader: 'js',
          // The bundle's ESM interop (__toESM) lists the module's keys and their descriptors when
          // the importing module loads: both are answered without loading it (the names are this
          // Node's, the one the code cache is made for).
          contents: `let real
const load = () => (real ??= require(${JSON.stringify(`node:${a.path}`)}))
const names = ${JSON.stringify(Object.getOwnPropertyNames(createRequire(import.meta.url)(`node:${a.path}`)))}
module.exports = new Proxy({}, {
  get: (_, key) => load()[key],
  has: (_, key) => key in load(),
  ownKeys: () => (real ? Reflect.ownKeys(real) : names),
  getOwnPropertyDescriptor: (_, key) => (real ? { ...Reflect.getOwnPropertyDescriptor(real, key), configurable: true } : names.includes(key) ? { get: () => load()[key], enumerable: true, configurable: true } : undefined),
})`,
        }))
      },
    },
  ],
})
chmodSync(BIN, 0o755)
// The code cache: from a run that builds every command (the help lists them all).
rmSync(`${OUT}.cache`, { force: true })
execFileSync(process.execPath, [BIN, '--help'], { env: { ...process.env, TANDEM_WRITE_CODE_CACHE: '1' }, stdio: 'ignore' })

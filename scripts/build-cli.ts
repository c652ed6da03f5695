/**
 * Bundles the CLI (dist/src/client/cli/bin.js, compiled by tsc) into the `tandem` executable,
 * dist/src/client/cli/tandem.cjs: see src/client/cli/bin.ts for why. Run by `npm run build`.
 *
 * The bundle sits in the folder of the modules it replaces, so the relative paths they compute
 * (`import.meta.url`, the lazily imported modules below) mean the same files.
 */
import { build } from 'esbuild'
import { chmodSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'client', 'cli')

/**
 * Imported by the long-running commands only, when they run: kept out of the bundle, loaded
 * from dist/ as ES modules. (A StorageError thrown by them is still one to the CLI:
 * errors.ts's class recognizes instances of its other copies.)
 */
const LAZY = ['../../server/serve.js', '../vm/run.js', '../vm/net.js', '../locks/index.js']

/** Packages left to Node: native (fs-ext) or used by the server only, or on a terminal only. */
const EXTERNAL = ['fs-ext', 'express', 'pino', 'prom-client', 'cli-progress']

const OUT = join(CLI, 'tandem.cjs')

await build({
  entryPoints: [join(CLI, 'bin.js')],
  outfile: OUT,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: EXTERNAL,
  define: { 'import.meta.url': '__tandemFileUrl' },
  banner: { js: "#!/usr/bin/env node\n'use strict';\nconst __tandemFileUrl = require('node:url').pathToFileURL(__filename).href;" },
  logLevel: 'warning',
  plugins: [
    {
      name: 'lazy-modules',
      setup(b) {
        b.onResolve({ filter: /^\.\.\// }, (a) => (LAZY.includes(a.path) && a.importer.startsWith(CLI) ? { path: a.path, external: true } : undefined))
      },
    },
  ],
})
chmodSync(OUT, 0o755)

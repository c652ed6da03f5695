#!/usr/bin/env node
/**
 * The `tandem` executable. It runs the CLI's bundle, cli.cjs (built from bin.ts by
 * scripts/build-cli.ts), with V8's code cache, cli.cjs.cache, made at build time: Node then
 * neither resolves and loads some forty modules one by one nor compiles the bundle, which
 * together took longer than qemu-img takes for a whole `commit`. When the cache does not fit
 * (another Node, a rebuilt bundle) V8 ignores it and compiles as usual.
 *
 * `tandem serve` gets 16 libuv threads for file I/O (as tgtd runs 16 I/O threads per LU) unless
 * UV_THREADPOOL_SIZE is set: libuv starts its pool at the first asynchronous file operation, and
 * this file and the bundle run synchronously before any. With the default 4 threads, one writer
 * stalled by the kernel's dirty-page throttling holds a quarter of the pool.
 *
 * TANDEM_WRITE_CODE_CACHE=1 (the build's): write the cache from what this run compiled.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { createRequire, wrap } from 'node:module'
import { join } from 'node:path'
import vm from 'node:vm'

if (process.argv[2] === 'serve' && !process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16'

const BUNDLE = join(__dirname, 'cli.cjs')
const CACHE = `${BUNDLE}.cache`

// The bundle's lazy modules are imported through this module's import(): see lazy.ts.
;(globalThis as Record<symbol, unknown>)[Symbol.for('tandem.import')] = (url: string) => import(url)
let cachedData: Buffer | undefined
try {
  cachedData = readFileSync(CACHE)
} catch {
  /* no cache: V8 compiles */
}
const script = new vm.Script(wrap(readFileSync(BUNDLE, 'utf8')), { filename: BUNDLE, cachedData })
if (process.env.TANDEM_WRITE_CODE_CACHE === '1') process.once('exit', () => writeFileSync(CACHE, script.createCachedData()))
const mod = { exports: {} }
script.runInThisContext()(mod.exports, createRequire(BUNDLE), mod, BUNDLE, __dirname)

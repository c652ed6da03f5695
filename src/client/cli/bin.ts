/**
 * The `tandem` executable. The build bundles this file, with program.ts and everything the
 * short-lived commands (`disk`, `lock`, `vm`) load, into one CommonJS file,
 * dist/src/client/cli/tandem.cjs (scripts/build-cli.ts): Node then reads and compiles one file
 * instead of resolving and loading some forty ES modules one by one, which took longer than
 * qemu-img takes for a whole `commit`. The long-running parts (`serve`, `vm run`, the lock
 * manager) stay separate modules, imported when their command runs.
 *
 * `tandem serve` gets 16 libuv threads for file I/O (as tgtd runs 16 I/O threads per LU) unless
 * UV_THREADPOOL_SIZE is set: libuv starts its pool at the first asynchronous file operation, and
 * the bundle runs this synchronously before any. With the default 4 threads, one writer stalled
 * by the kernel's dirty-page throttling holds a quarter of the pool.
 */
import { main } from './program.js'

if (process.argv[2] === 'serve' && !process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16'
void main(process.argv)

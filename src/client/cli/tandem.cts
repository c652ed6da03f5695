#!/usr/bin/env node
/**
 * The `tandem` executable. A CommonJS file on purpose: `tandem serve` gets 16 libuv threads for
 * file I/O (as tgtd runs 16 I/O threads per LU) unless UV_THREADPOOL_SIZE is set, and libuv
 * starts its pool at the first asynchronous file operation — which loading an ES module entry
 * point already is. CommonJS loads this file synchronously, so the variable is set in time.
 * With the default 4 threads, one writer stalled by the kernel's dirty-page throttling holds a
 * quarter of the pool.
 */
if (process.argv[2] === 'serve' && !process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16'
void import('./main.js')
